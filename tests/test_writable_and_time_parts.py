"""In-process checks of two refusals the CLI makes before any work (tests/test_bad_inputs.py runs them
through the CLI): a folder that is only probed, not made, and sbatch's time formats."""

import pytest

from blueberry.errors import UserError
from blueberry.rundir import ensure_writable_dir
from blueberry.slurm import check_time_limit


def test_a_probe_without_create_makes_nothing_and_judges_by_the_nearest_parent(tmp_path):
    target = tmp_path / "a" / "b"
    assert ensure_writable_dir(target, "out_dir", create=False) == target
    assert list(tmp_path.iterdir()) == []                       # nothing made, no probe file left
    assert ensure_writable_dir(target, "out_dir").is_dir()       # the default makes it
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"^out_dir=.*file/runs: cannot write there \(a file is in the way"):
        ensure_writable_dir(tmp_path / "file" / "runs", "out_dir", create=False)
    with pytest.raises(UserError, match=r"^out_dir=.*file: cannot write there \(a file is in the way"):
        ensure_writable_dir(tmp_path / "file", "out_dir")       # made: the file is where the folder goes
    assert ensure_writable_dir(target, "out_dir") == target      # there already: fine
    for create in (False, True):
        with pytest.raises(UserError, match=r"^--out=/proc/bb/x: cannot write there \(No such file or directory\); "
                                            r"give a writable folder$"):
            ensure_writable_dir("/proc/bb/x", "--out", create=create)


@pytest.mark.parametrize("value", ["10", "10:30", "04:00:00", "1-12", "1-12:30", "1-12:30:00", "UNLIMITED", "infinite"])
def test_sbatch_times_are_taken(value):
    assert check_time_limit(value) == value


@pytest.mark.parametrize("value", ["abc", "1:2:3:4", "1-", "-1", "1.5", "", "1-2-3"])
def test_other_times_are_refused_in_one_line(value):
    with pytest.raises(UserError, match=rf"^--time={value}: not a SLURM time; use MINUTES, HH:MM:SS"):
        check_time_limit(value)

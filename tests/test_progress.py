"""The progress display writes to the stderr of the moment (a harness or a redirect may swap it after
import), as plain lines when that is not a terminal."""

import io
import sys

from blueberry.train.progress import PlainProgress, progress


def test_progress_writes_plain_lines_to_the_current_stderr(monkeypatch):
    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)
    bar = progress(10, 0, "run", enabled=True)
    assert isinstance(bar, PlainProgress) and bar.file is swapped      # a StringIO is no terminal
    bar.update(4)
    bar.close()
    assert swapped.getvalue().startswith("run: step 4/10 (40%)")
    direct = PlainProgress(5, 0, "other", every_s=0.0)
    direct.update(5)
    assert "other: step 5/5 (100%)" in swapped.getvalue()

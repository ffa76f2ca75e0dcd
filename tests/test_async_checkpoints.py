"""Asynchronous checkpoints on 2 gloo ranks, killed for real: SIGKILL of the whole process group at
random moments of a run that saves every step; `--resume auto` then finds the newest complete
checkpoint and the run goes on bit for bit as if it had never stopped. benchmarks/checkpoint_kills.py
does the same 50 times with >100 MB of state (its counts are in docs/benchmarks.md); this test uses
its functions on a tiny model."""

import os
import random
import sys
from pathlib import Path

from blueberry import rundir
from blueberry.train.checkpoint import layout
from conftest import TINY

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.checkpoint_kills import finish, kill_cycle, launch, losses, the_run  # noqa: E402

STEPS = 24
ARGS = [*TINY, f"--max_steps={STEPS}", "--save_every=1", "--eval_every=8", "--async_save=true", "--keep_last=2",
        "--wandb_mode=disabled"]


def test_random_sigkills_resume_bit_for_bit(tmp_path):
    reference = tmp_path / "reference" / "runs"
    finish(launch(reference, [*ARGS, "--name=ref"]), timeout=300)
    expected = losses(the_run(reference))
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert (rundir.latest_checkpoint(the_run(reference)) / layout.DCP_DIR).is_dir()   # the asynchronous layout

    rng = random.Random(int(os.environ.get("BLUEBERRY_KILL_SEED", "7")))
    out = tmp_path / "killed" / "runs"
    cycles = [kill_cycle(out, [*ARGS, "--name=k"], rng, after=rng.randint(2, 8), step_s=0.3) for _ in range(2)]
    # Killed both times, mid-run; whatever the moment: only intact checkpoints, at most one .incomplete folder.
    assert [c["killed"] for c in cycles] == [True, True] and [c["problems"] for c in cycles] == [[], []], cycles
    assert cycles[1]["resumed_at"] > 0   # the second run resumed from a checkpoint the first one completed
    finish(launch(out, [*ARGS, "--name=k", "--resume=auto"]), timeout=300)
    run = the_run(out)
    assert losses(run) == expected, cycles                   # every step, bit for bit
    assert rundir.read_summary(run)["status"] == "finished"
    assert not list((run / rundir.CHECKPOINTS).glob("*" + layout.INCOMPLETE))
    assert [s for s, _ in rundir.checkpoints(run)][-2:] == [STEPS - 1, STEPS]


def test_the_ranks_of_a_killed_launcher_checkpoint_and_stop(tmp_path):
    """SIGKILL to the launcher's process group only (what `wandb agent` and `sweep local` send after
    their kill delay): torchrun started each rank in its own session, so the signal does not reach
    them; they notice the launcher is gone, checkpoint, and stop as preempted; no process is left."""
    import signal
    import time

    from benchmarks.checkpoint_kills import _orphans_of, wait_until_logged

    out = tmp_path / "runs"
    process = launch(out, [*TINY, "--max_steps=5000", "--eval_every=1000", "--wandb_mode=disabled", "--name=o"])
    assert wait_until_logged(process, out, 3, None)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    deadline = time.time() + 120
    while _orphans_of(process) and time.time() < deadline:
        time.sleep(0.2)
    assert not _orphans_of(process)                           # no rank trains on without its launcher
    run = the_run(out)
    summary = rundir.read_summary(run)
    assert summary["status"] == "preempted", summary
    assert rundir.latest_checkpoint(run).name == f"step-{summary['step']:07d}"
    assert "the launcher (pid " in process.log.read_text()

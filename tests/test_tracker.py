"""The tracker's W&B thread, with a stand-in W&B run: a W&B call that fails costs W&B rows, never
training, and is reported once; metrics.jsonl keeps every row; calls run in order."""

import json

from blueberry import rundir
from blueberry.train import tracking


class FailingRun:
    """Accepts rows until `fail_from`, then raises on every log."""

    def __init__(self, fail_from: int):
        self.fail_from, self.logged, self.finished = fail_from, [], None
        self.id, self.dir, self.group, self.config = "fake1234", "/tmp/wandb/run", "", {}

    def log(self, row, step):
        if step >= self.fail_from:
            raise RuntimeError(f"W&B is down at step {step}")
        self.logged.append(step)

    def finish(self, exit_code=0):
        self.finished = exit_code


def start(tmp_path, monkeypatch, run):
    monkeypatch.setattr(tracking, "init_wandb", lambda run_dir, **options: (run, "offline"))
    tracker = tracking.Tracker(tmp_path, enabled=True)
    tracker.start({}, mode="offline", project="p", entity="", group="", tags=[], run_id=None)
    return tracker


def test_a_failing_wandb_call_costs_wandb_rows_not_training_and_is_said_once(tmp_path, monkeypatch, capsys):
    run = FailingRun(fail_from=3)
    tracker = start(tmp_path, monkeypatch, run)
    for step in range(1, 6):
        tracker.log(step, {"train/loss": 1.0 / step})          # never raises on the training thread
    tracker.finish(exit_code=0)
    assert run.logged == [1, 2] and run.finished == 0            # in order; the thread lived to finish
    rows = [json.loads(line) for line in (tmp_path / rundir.METRICS).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    notices = [line for line in capsys.readouterr().err.splitlines() if "a W&B call failed" in line]
    assert notices == ["blueberry: a W&B call failed (RuntimeError: W&B is down at step 3); "
                       "the run dir's metrics.jsonl has every row"]


def test_a_wandb_start_that_fails_disables_wandb_and_training_goes_on(tmp_path, monkeypatch, capsys):
    def broken(run_dir, **options):
        raise OSError("no service")

    monkeypatch.setattr(tracking, "init_wandb", broken)
    ready: list = []
    tracker = tracking.Tracker(tmp_path, enabled=True)
    tracker.start({}, mode="offline", project="p", entity="", group="", tags=[], run_id=None,
                  on_ready=lambda t: ready.append(t.mode))
    tracker.wait_ready(timeout=10)
    assert ready == ["disabled"]                                   # on_ready runs before wait_ready returns
    tracker.log(1, {"train/loss": 1.0})
    tracker.finish()
    assert tracker.mode == "disabled" and tracker.wandb_id is None
    assert "W&B could not start (OSError: no service); W&B disabled for this run" in capsys.readouterr().err
    assert (tmp_path / rundir.METRICS).read_text().count("\n") == 1

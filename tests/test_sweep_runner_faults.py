"""Issue 20 item 17: a runner on a bad node must not burn the sweep. `sweep local` gives up as W&B's
agent does (`--max-consecutive-failed-runs`, WANDB_AGENT_MAX_INITIAL_FAILURES, flapping): it stops
claiming, stops its running trials (they resume), exits 1 naming the failed trials' logs, and the
same command later goes on with the trials never started. Real subprocess trials."""

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from blueberry.sweep.failures import FailureGuard
from conftest import run_cli

# A trial on a node that may be bad: while ./bad-node exists, trial 0 trains on (until it is stopped)
# and every other trial crashes at once, as on a GPU that faults.
PROBE = textwrap.dedent('''
    import json, os, sys, time
    from pathlib import Path
    i = int(next(a for a in sys.argv if a.startswith("--id=")).split("=")[1])
    run = Path(os.environ["BLUEBERRY_TRIAL_DIR"]) / "runs" / "probe"
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 0, "val/loss": float(i)}) + "\\n")
    if Path("bad-node").exists() and i > 0:
        sys.exit(f"trial {i}: CUDA error: an illegal memory access was encountered")
    while Path("bad-node").exists():
        time.sleep(0.05)
''')


def _sweep(folder: Path, n: int) -> str:
    (folder / "probe.py").write_text(PROBE)
    config = {"name": "node", "method": "grid", "metric": {"name": "val/loss", "goal": "minimize"},
              "command": ["${env}", "${interpreter}", "probe.py", "${args}"], "parameters": {"id": {"values": list(range(n))}}}
    (folder / "node.yaml").write_text(yaml.safe_dump(config))
    return "node.yaml"


def _trials(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("trials/*/trial.json"))}


def test_consecutive_failures_stop_the_runner_and_the_same_command_goes_on(tmp_path):
    args = ("sweep", "local", _sweep(tmp_path, 5), "--dir", "sw", "--workers", "2", "--max-consecutive-failures", "2",
            "--no-report")
    (tmp_path / "bad-node").touch()
    res = run_cli(*args, cwd=tmp_path, env={"WANDB_AGENT_DISABLE_FLAPPING": "true"}, timeout=120)
    assert res.returncode == 1, res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]   # one line says it all
    assert "2 trials in a row failed (--max-consecutive-failures 2)" in line
    assert "sw/trials/t0001/output.log" in line and "sw/trials/t0002/output.log" in line
    trials = _trials(tmp_path / "sw")
    assert sorted(trials) == ["t0000", "t0001", "t0002"]               # t0003, t0004 never claimed: pending
    assert [trials[t]["status"] for t in ("t0001", "t0002")] == ["failed", "failed"]
    assert trials["t0000"]["status"] == "interrupted" and trials["t0000"]["exit_code"] == -15   # stopped, not waited for
    assert "illegal memory access" in (tmp_path / "sw" / "trials" / "t0001" / "output.log").read_text()

    (tmp_path / "bad-node").unlink()   # the node is mended: the same command goes on
    res = run_cli(*args, cwd=tmp_path, timeout=120)
    trials = _trials(tmp_path / "sw")
    assert sorted(trials) == [f"t000{i}" for i in range(5)]           # every grid point once, none repeated
    assert {t: trials[t]["status"] for t in trials} == {"t0000": "finished", "t0001": "failed", "t0002": "failed",
                                                        "t0003": "finished", "t0004": "finished"}
    assert trials["t0000"]["attempts"] == 2
    assert res.returncode == 1 and "error: 2 of 5 trials failed" in res.stderr   # failed trials stay failed


def test_wandb_agents_initial_failure_limit_applies_by_default(tmp_path):
    args = ("sweep", "local", _sweep(tmp_path, 8), "--dir", "sw", "--workers", "2", "--no-report")
    (tmp_path / "bad-node").touch()
    env = {"WANDB_AGENT_DISABLE_FLAPPING": "true", "WANDB_AGENT_MAX_INITIAL_FAILURES": "3"}
    res = run_cli(*args, cwd=tmp_path, env=env, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "WANDB_AGENT_MAX_INITIAL_FAILURES=3" in res.stderr
    trials = _trials(tmp_path / "sw")   # t0000 trains in one slot while t0001-t0003 fail in the other
    assert {t: trials[t]["status"] for t in trials} == {"t0000": "interrupted", "t0001": "failed", "t0002": "failed",
                                                        "t0003": "failed"}

    res = run_cli(*args, "--dir", "sw2", cwd=tmp_path, env={"WANDB_AGENT_MAX_INITIAL_FAILURES": "many"})
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "WANDB_AGENT_MAX_INITIAL_FAILURES='many'" in res.stderr and not (tmp_path / "sw2").exists()


def test_the_limit_is_checked_and_forwarded_by_slurm_submit(cli):
    _sweep(cli.cwd, 2)
    res = cli("slurm", "submit", "sweep", "--dry-run", "--", "node.yaml", "--max-consecutive-failures", "3")
    assert res.returncode == 0, res.stderr
    assert "set -- node.yaml --max-consecutive-failures 3" in res.stdout
    res = cli("slurm", "submit", "sweep", "--dry-run", "--", "node.yaml", "--max-consecutive-failures", "0")
    assert res.returncode == 2 and "--max-consecutive-failures" in res.stderr and "#SBATCH" not in res.stdout
    res = cli("slurm", "submit", "sweep", "--dry-run", "--", "node.yaml", env={"WANDB_AGENT_MAX_INITIAL_FAILURES": "x"})
    assert res.returncode == 2 and "WANDB_AGENT_MAX_INITIAL_FAILURES='x'" in res.stderr


# --- the rules themselves, with the agent's own constants ---------------------------------------------

def test_the_rules_and_constants_are_wandb_agents():
    import wandb.env
    from wandb.wandb_agent import Agent

    from blueberry.sweep import agent_env as ours

    assert (ours.MAX_INITIAL_FAILURES, ours.FLAPPING_MAX_FAILURES, ours.FLAPPING_MAX_SECONDS, ours.KILL_DELAY_S) == \
        (Agent.MAX_INITIAL_FAILURES, Agent.FLAPPING_MAX_FAILURES, Agent.FLAPPING_MAX_SECONDS, Agent.KILL_DELAY)
    assert (ours.MAX_INITIAL_ENV, ours.FLAPPING_ENV, ours.KILL_DELAY_ENV) == \
        (wandb.env.AGENT_MAX_INITIAL_FAILURES, wandb.env.AGENT_DISABLE_FLAPPING, wandb.env.AGENT_KILL_DELAY)


def test_sweep_agent_passes_the_limit_as_wandb_agent_reads_it():
    from wandb.cli.cli import agent as wandb_agent_command

    from blueberry.sweep.cloud import agent_argv

    argv = agent_argv("me/proj/abc123", 2, 4)
    ctx = wandb_agent_command.make_context("agent", argv[2:])   # W&B's own option parsing
    assert (ctx.params["sweep_id"], ctx.params["count"], ctx.params["max_consecutive_failed_runs"]) == \
        ("me/proj/abc123", 2, 4)
    assert ctx.params["forward_signals"]   # the trial is in a group of its own: only the agent reaches it


def _feed(guard: FailureGuard, ends: list[tuple[str, float]]) -> list[str | None]:
    return [guard.ended(f"t{i}", status, now) for i, (status, now) in enumerate(ends)]


def test_consecutive_failures_count_only_failed_trials_in_a_row():
    guard = FailureGuard(3, started=0.0, max_initial=100, flapping=False)
    ends = [("failed", 1), ("failed", 2), ("finished", 3), ("failed", 4), ("diverged", 5), ("failed", 6),
            ("interrupted", 7), ("failed", 8), ("stopped", 9), ("failed", 10), ("failed", 11), ("failed", 12)]
    reasons = _feed(guard, ends)
    assert reasons[:-1] == [None] * 11   # a finished, diverged or stopped trial breaks the streak; interrupted not
    assert reasons[-1] == "3 trials in a row failed (--max-consecutive-failures 3)"
    assert guard.blamed == ["t9", "t10", "t11"]


def test_flapping_is_three_failures_in_the_first_minute():
    assert _feed(FailureGuard(None, started=100.0, max_initial=100), [("failed", 101), ("failed", 102),
                                                                     ("failed", 159)])[-1].startswith("3 trials failed")
    assert _feed(FailureGuard(None, started=100.0, max_initial=100), [("failed", 101), ("failed", 102),
                                                                     ("failed", 160)])[-1] is None
    assert _feed(FailureGuard(None, started=0.0, max_initial=100, flapping=False), [("failed", 1)] * 3)[-1] is None


@pytest.mark.parametrize("ends, stops_at", [
    (["failed"] * 5, 4),                                      # 5 failures, nothing else: the 5th stops
    (["finished"] + ["failed"] * 5, 5),                       # one success: still 5 failures >= 5 ended before
    (["finished", "finished"] + ["failed"] * 5, None),        # two: never (failures stay fewer than ended before)
])
def test_initial_failures_as_the_agent_counts_them(ends, stops_at):
    guard = FailureGuard(None, started=0.0, max_initial=5, flapping=False)
    reasons = _feed(guard, [(s, 1000.0) for s in ends + ["failed"] * 3])
    first = next((i for i, r in enumerate(reasons) if r), None)
    assert first == stops_at, reasons

"""The serverless sweep runner with real subprocess trials: completeness, no repeats across
concurrent runners, failures recorded, hyperband stops, and an interrupted sweep resumes."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from blueberry import rundir
from blueberry.errors import UserError
from blueberry.sweep.local import LocalRunner
from blueberry.sweep.state import SweepDir
from conftest import TINY, run_cli

FAKE = str(Path(__file__).with_name("fake_trial.py"))


def fake_sweep(parameters, **extra):
    return {"method": "grid", "metric": {"name": "val/loss", "goal": "minimize"}, "parameters": parameters,
            "command": ["${env}", "${interpreter}", FAKE, "${args}"], **extra}


def run_sweep(path, config, *, workers=1, count=None, overrides=(), poll_s=0.1):
    sweep = SweepDir.open(path, config, name="t", overrides=list(overrides), seed=0)
    code = LocalRunner(sweep, workers=workers, count=count, poll_s=poll_s, cwd=path.parent).run()
    return code, sweep.trials()


def test_grid_runs_every_point_once_and_records_a_failed_trial(tmp_path):
    config = fake_sweep({"values": {"values": ["1,0.9", "1,0.5", "1,0.7"]}, "fail": {"values": ["false", "true"]}})
    code, trials = run_sweep(tmp_path / "s", config, workers=2)
    assert code == 1   # a failed trial fails the sweep, after every other trial ran
    assert sorted((t.params["values"], t.params["fail"]) for t in trials) == \
        sorted((v, f) for v in ["1,0.9", "1,0.5", "1,0.7"] for f in ["false", "true"])
    assert {t.status for t in trials if t.params["fail"] == "true"} == {"failed"}
    assert {t.exit_code for t in trials if t.params["fail"] == "true"} == {1}
    ok = {t.params["values"]: t for t in trials if t.status == "finished"}
    assert ok["1,0.5"].value == 0.5 and ok["1,0.5"].history == [1.0, 0.5]   # the metric the trial logged
    argv = ok["1,0.5"].argv   # built as wandb agent builds it: env, interpreter, program, ${args}
    assert argv[0] == "/usr/bin/env" and argv[1:3] == [sys.executable, FAKE]
    assert sorted(argv[3:]) == ["--fail=false", "--values=1,0.5"]


def test_two_concurrent_runners_never_repeat_a_config(tmp_path):
    config = fake_sweep({"a": {"values": [1, 2, 3]}, "b": {"values": [1, 2]}, "sleep": {"value": 0.3}})
    path = tmp_path / "shared"
    SweepDir.open(path, config, name="shared", overrides=[], seed=0)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    runners = [subprocess.Popen([sys.executable, "-m", "blueberry.cli", "sweep", "local", str(tmp_path / "sweep.yaml"),
                                 "--dir", str(path)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for _ in range(2)]
    for r in runners:
        assert r.wait(timeout=120) == 0, r.stderr.read().decode()[-2000:]
    trials = SweepDir.open(path, config, name="shared", overrides=[], seed=0).trials()
    pairs = [(t.params["a"], t.params["b"]) for t in trials]
    assert len(pairs) == 6 and len(set(pairs)) == 6
    assert {t.owner["pid"] for t in trials} == {r.pid for r in runners}   # both did work


def test_count_then_rerun_resumes_without_repeating(tmp_path):
    config = fake_sweep({"a": {"values": [1, 2, 3, 4]}})
    _, first = run_sweep(tmp_path / "s", config, count=1)
    assert len(first) == 1
    _, after = run_sweep(tmp_path / "s", config)
    assert sorted(t.params["a"] for t in after) == [1, 2, 3, 4]
    assert all(t.status == "finished" and t.attempts == 1 for t in after)


def test_overrides_reach_every_trial_and_later_ones_win(tmp_path):
    config = fake_sweep({"values": {"values": ["2,1"]}})
    _, (trial,) = run_sweep(tmp_path / "s", config, overrides=["values=3,2", "values=5,4"])
    assert trial.argv[-2:] == ["--values=3,2", "--values=5,4"] and trial.history == [5.0, 4.0]


def test_hyperband_stops_the_weak_trials(tmp_path):
    # Four trials at once; at the band (2 evaluations) only the best 1/eta may go on.
    config = fake_sweep({"values": {"values": ["1,0.1,0.1,0.1,0.1,0.1,0.1,0.1", "1,0.9,0.9,0.9,0.9,0.9,0.9,0.9",
                                               "1,0.8,0.8,0.8,0.8,0.8,0.8,0.8", "1,0.7,0.7,0.7,0.7,0.7,0.7,0.7"]},
                         "sleep": {"value": 0.4}},
                        early_terminate={"type": "hyperband", "min_iter": 2, "eta": 2})
    _, trials = run_sweep(tmp_path / "s", config, workers=4)
    status = {t.params["values"][:5]: t.status for t in trials}
    assert status["1,0.1"] == "finished"
    assert "stopped" in {status["1,0.9"], status["1,0.8"]}
    stopped = [t for t in trials if t.status == "stopped"]
    assert all(len(t.history) < 8 for t in stopped)


def test_a_different_sweep_in_the_same_dir_is_refused(tmp_path):
    run_sweep(tmp_path / "s", fake_sweep({"a": {"values": [1]}}))
    with pytest.raises(UserError, match="holds another sweep"):
        SweepDir.open(tmp_path / "s", {"method": "grid"}, name="t", overrides=[], seed=0)
    with pytest.raises(UserError, match="holds another sweep"):   # same YAML, other overrides
        SweepDir.open(tmp_path / "s", fake_sweep({"a": {"values": [1]}}), name="t", overrides=["x=1"], seed=0)


def test_quickstart_sweep_end_to_end_and_resume_after_interruption(tmp_path):
    """A real 8-trial grid (2 lr x 2 optimizers x 2 seeds) on the tiny preset: interrupted mid-trial, then
    resumed to the end."""
    overrides = [f"--override={arg[2:]}" for arg in TINY] + ["--override=max_steps=12", "--override=eval_every=6",
                                                            "--override=save_best=false"]
    repo = Path(__file__).resolve().parents[1]
    args = ["sweep", "local", str(repo / "sweeps" / "quickstart.yaml"), "--dir", "sw", "--workers=2", *overrides]
    runner = subprocess.Popen([sys.executable, "-m", "blueberry.cli", *args], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_metrics = tmp_path / "sw" / "trials" / "t0000" / "runs"
    deadline = time.time() + 120
    while time.time() < deadline:          # interrupt once the first trial has trained a few steps
        rows = [r for m in first_metrics.glob("*/metrics.jsonl") for r in rundir.read_metrics(m.parent)]
        if any(r.get("step", 0) >= 3 and "train/loss" in r for r in rows):
            break
        time.sleep(0.2)
    runner.send_signal(signal.SIGINT)
    out, err = runner.communicate(timeout=180)
    assert runner.returncode == 130, err[-2000:]
    interrupted = json.loads((tmp_path / "sw" / "trials" / "t0000" / "trial.json").read_text())
    assert interrupted["status"] == "interrupted"

    res = run_cli(*args, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = [json.loads(p.read_text()) for p in sorted((tmp_path / "sw" / "trials").glob("*/trial.json"))]
    assert sorted((t["params"]["lr"], t["params"]["optimizer"], t["params"]["seed"]) for t in trials) == \
        [(lr, opt, seed) for lr in (0.001, 0.003) for opt in ("adamw", "muon") for seed in (0, 1)]
    assert all(t["status"] == "finished" for t in trials)
    resumed = trials[0]
    assert resumed["attempts"] == 2
    (run,) = (tmp_path / "sw" / "trials" / "t0000" / "runs").iterdir()   # resumed in place, one run dir
    steps = [r["step"] for r in rundir.read_metrics(run) if "train/loss" in r]
    assert steps == list(range(1, 13))
    assert "ranking" in res.stdout and "val/loss" in res.stdout
    assert "noise: trials that differ only in seed are repeats" in res.stdout    # two seeds per config

"""A study behaves the same under `wandb agent` and `sweep local` (issue 12, sweep side): trials start
in the invoking directory, failures fail the sweep, validate accepts what the agent runs and refuses
values that change meaning, the kill delay is the agent's, the project and the optimised value are
the ones W&B uses, and the W&B report names the sweep's parameters and project. Real subprocess
trials, W&B's own Agent code for argv, offline W&B runs read back."""

import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml

from blueberry import rundir
from blueberry.sweep.command import as_delivered
from blueberry.sweep.objective import DEFAULT_BEST, LOGGED
from conftest import TINY, run_cli, wandb_offline_run
from test_sweep_command import wandb_agent_argv  # noqa: F401  (W&B's own Agent._command_run, a fixture)

REPO = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).with_name("fake_trial.py")
TINY_OVERRIDES = [f"--override={arg[2:]}" for arg in TINY]


def _trials(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((sweep_dir / "trials").glob("*/trial.json"))]


def _fake_sweep(tmp_path: Path, parameters: dict) -> Path:
    """A sweep of the stand-in trial, named by a path RELATIVE to tmp_path (as a user's program: is)."""
    (tmp_path / "prog").mkdir(exist_ok=True)
    shutil.copy(FAKE, tmp_path / "prog" / "trial.py")
    config = {"name": "fake", "method": "grid", "metric": {"name": "val/loss", "goal": "minimize"},
              "program": "prog/trial.py", "parameters": parameters}
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# --- 1, 2 and issue 11's status lines: where trials start, what a failure does ----------------------

def test_trials_start_in_the_invoking_directory_and_a_failure_fails_the_sweep(tmp_path):
    _fake_sweep(tmp_path, {"values": {"value": "1,0.4,0.7"}, "fail": {"values": ["false", "true", "diverge"]},
                           "sleep": {"value": 5}})
    res = run_cli("sweep", "local", "fake.yaml", "--dir", "sw", "--override", "sleep=0", "--no-report", cwd=tmp_path,
                  timeout=120)
    trials = _trials(tmp_path / "sw")
    assert len(trials) == 3 and [t["status"] for t in trials] == ["finished", "failed", "diverged"]   # kept going
    assert res.returncode == 1
    assert "error: 1 of 3 trials failed: t0001 (exit 1)" in res.stderr
    # a diverged trial (exit 3) is a finding of the study, not a failure of the sweep: named, not counted
    assert "note: 1 of 3 trials diverged (non-finite loss): t0002" in res.stderr
    # `program: prog/trial.py` is relative to where `sweep local` was started, as under wandb agent
    for t in trials:
        run = tmp_path / "sw" / "trials" / t["id"] / "runs" / "fake"   # ...while run dirs stay in the sweep dir
        assert Path((run / "cwd.txt").read_text()) == tmp_path
    # 6: a trial's value is its best logged value, W&B's SweepRun.metric_extremum, not the last one
    assert [t["value"] for t in trials] == [0.4, 0.4, 0.4]
    # status lines show the value the trial trains (the override), not the swept one
    assert "sleep=0 " in res.stderr and "sleep=5" not in res.stderr
    # whole, named lines; the value is the best logged (0.4), not the last (0.7), and says so
    assert "\n[fake] t0001 failed best val/loss=0.4  fail=true sleep=0 values=1,0.4,0.7\n" in res.stderr


def test_trial_past_the_kill_delay_is_killed_and_a_bad_delay_refused(tmp_path):
    _fake_sweep(tmp_path, {"values": {"value": "1,1,1"}, "sleep": {"value": 60}, "ignore_term": {"value": "true"}})
    env = {**os.environ, "WANDB_AGENT_KILL_DELAY": "1"}
    runner = subprocess.Popen([sys.executable, "-m", "blueberry.cli", "sweep", "local", "fake.yaml", "--dir", "sw"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "sw" / "trials" / "t0000" / "runs" / "fake" / "metrics.jsonl"
    deadline = time.time() + 60
    while not metrics.exists() and time.time() < deadline:
        time.sleep(0.2)
    runner.send_signal(signal.SIGINT)
    runner.communicate(timeout=30)   # the trial ignores SIGTERM and sleeps 60 s: only the SIGKILL ends it
    assert runner.returncode == 130
    (trial,) = _trials(tmp_path / "sw")
    assert trial["status"] == "interrupted" and trial["exit_code"] == -signal.SIGKILL

    res = run_cli("sweep", "local", "fake.yaml", "--dir", "sw2", cwd=tmp_path, env={"WANDB_AGENT_KILL_DELAY": "soon"})
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "WANDB_AGENT_KILL_DELAY='soon'" in res.stderr and not (tmp_path / "sw2").exists()


# --- issue 11 §5: overrides and the metric are checked before anything runs ------------------------

def test_bad_overrides_are_refused_before_any_trial(cli):
    sweep = str(REPO / "sweeps" / "quickstart.yaml")
    for override, expected in (("lrr=1", "not an option of 'blueberry train lm' (did you mean lr?)"),
                               ("max_steps=-5", "max_steps=-5: must be >= 1"),
                               ("justakey", "write key=value"),
                               ("out_dir=elsewhere", "run dirs in SWEEP_DIR/trials")):
        res = cli("sweep", "local", sweep, "--dir", "sw", "--override", override)
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and expected in res.stderr
        assert not (cli.cwd / "sw").exists()   # no sweep dir, so no trial left "running"


# --- 3: validate accepts what the agent runs and refuses what changes meaning on the way ----------

def _yaml(tmp_path, name, text):
    (tmp_path / name).write_text(textwrap.dedent(text))
    return name


def test_validate_accepts_what_the_agent_runs(cli, wandb_agent_argv):  # noqa: F811
    _yaml(cli.cwd, "json.yaml", """
        method: grid
        project: blueberry
        metric: {name: val/loss_best, goal: minimize}
        command: [blueberry, train, lm, --config, "${args_json_file}"]
        parameters:
          lr: {values: [0.001, 0.003]}
          save_best: {values: [false]}
    """)
    _yaml(cli.cwd, "nested.yaml", """
        method: grid
        project: blueberry
        command: [blueberry, train, lm, "${envvar:lower}", "${args}"]
        parameters:
          recipe:
            parameters:
              optimizer: {values: [muon]}
              muon_lr: {values: [0.01]}
              name: {value: nested}
    """)
    res = cli("sweep", "validate", "json.yaml", "nested.yaml")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count(": ok") == 2
    assert "json.yaml: ok; optimises each run's lowest val/loss_best" in res.stdout   # says what is optimised
    assert "nested.yaml: command[3]: '${envvar:lower}'" in res.stderr and "drops this item" in res.stderr

    # the agent's argv for each, run by the real trainer: the values arrive as swept
    argv, json_file = wandb_agent_argv(["blueberry", "train", "lm", "--config", "${args_json_file}"],
                                       as_delivered({"lr": 0.003, "save_best": False}))
    config = yaml.safe_load(cli(*argv[1:], "--print-config").stdout)
    assert (config["lr"], config["save_best"]) == (0.003, False) and argv[-1] == str(json_file)
    argv, _ = wandb_agent_argv(["blueberry", "train", "lm", "${args}"],
                               as_delivered({"recipe": {"optimizer": "muon", "muon_lr": 0.01, "name": "nested"}}))
    res = cli(*argv[1:], "--print-config")
    config = yaml.safe_load(res.stdout)
    assert (config["optimizer"], config["muon_lr"], config["name"]) == ("muon", 0.01, "nested"), res.stderr


def test_validate_refuses_values_that_change_meaning(cli, wandb_agent_argv):  # noqa: F811
    _yaml(cli.cwd, "bad.yaml", """
        method: grid
        metric: {name: val/los, goal: minimize}
        command: [blueberry, train, lm, "${args}"]
        parameters:
          lr: {values: [1e-3, 0.003]}
          recipe: {values: [{name: a, muon_lr: 2e-2}, {name: b, data: null}]}
          wandb_tags:
            parameters:
              x: {value: null}
    """)
    res = cli("sweep", "validate", "bad.yaml")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    expected = {
        "parameters.lr.values[0]": "'1e-3' is text to YAML", "parameters.recipe.values[0].muon_lr": "write 2.0e-2",
        "parameters.recipe.values[1].data": "null reaches the trainer as the text 'None'",
        "parameters.wandb_tags.parameters.x.value": "null reaches the trainer",
        "metric.name": "'val/los' is not a metric 'blueberry train lm' logs (did you mean val/loss?)"}
    for path, message in expected.items():
        assert any(f"bad.yaml: {path}: " in line and message in line for line in lines), (path, lines)
    assert any("write 1.0e-3" in line for line in lines)
    assert "project: not set" in res.stderr   # a warning: W&B would file the sweep elsewhere

    # the trainer itself refuses a null in a recipe before it creates a run dir or a W&B run
    argv, _ = wandb_agent_argv(["blueberry", "train", "lm", "${args}"],
                               as_delivered({"recipe": {"name": "b", "data": None}}))
    res = cli(*argv[1:], "--out_dir", "out", "--max_steps", "2")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "recipe: data=null" in res.stderr and not (cli.cwd / "out").exists()


def test_validate_checks_best_metrics_against_best_metric(cli):
    base = ("method: grid\nmetric: {name: val/accuracy_best, goal: maximize}\n"
            "command: [blueberry, train, lm, '${args}']\nparameters:\n  lr: {values: [0.001]}\n")
    _yaml(cli.cwd, "default.yaml", base)
    _yaml(cli.cwd, "chosen.yaml", base + "  best_metric: {value: val/accuracy}\n")
    res = cli("sweep", "validate", "default.yaml", "chosen.yaml")
    assert "default.yaml: metric.name: 'val/accuracy_best' is logged only when best_metric=val/accuracy" in res.stderr
    assert "chosen.yaml: ok" in res.stdout and res.returncode == 2


# --- 5, 6, 12 and the metric table, on a real trial with an offline W&B run ------------------------

def _logged_keys(run_dir: Path) -> set[str]:
    return {k for row in rundir.read_metrics(run_dir) for k in row if k != "step"}


def _assert_table_matches(task: str, keys: set[str]) -> None:
    patterns = LOGGED[task]
    unknown = {k for k in keys if not any(fnmatch.fnmatchcase(k, p) for p in patterns)
               and k != DEFAULT_BEST[task] + "_best"}
    assert not unknown, f"{task} logs metrics objective.LOGGED does not list: {sorted(unknown)}"
    stale = {p for p in patterns if "*" not in p and p not in keys and p != "muon_lr"}   # muon_lr: muon runs only
    assert not stale, f"objective.LOGGED lists metrics {task} does not log: {sorted(stale)}"


def test_metric_table_knows_each_tasks_best_metric():
    from blueberry.tasks import TASKS, load_task

    assert set(LOGGED) == set(DEFAULT_BEST) == set(TASKS)
    assert DEFAULT_BEST == {task: load_task(task).best_metric for task in TASKS}   # the torch-free copy is right


def test_sweep_project_value_and_report_agree_with_wandb(tmp_path):
    sweep = yaml.safe_load((REPO / "sweeps" / "quickstart.yaml").read_text())
    sweep["project"] = "bb-proj"
    sweep["parameters"]["seed"] = {"values": [0]}   # lr and optimizer vary, nothing else
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(sweep))
    res = run_cli("sweep", "local", "q.yaml", "--dir", "sw", "--count", "1", *TINY_OVERRIDES, "--override=max_steps=4",
                  "--override=eval_every=2", "--override=lr=0.002", "--no-report", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (trial,) = _trials(tmp_path / "sw")
    (run_dir,) = (tmp_path / "sw" / "trials" / "t0000" / "runs").iterdir()
    summary, history = wandb_offline_run(run_dir)
    assert summary["project"] == "bb-proj" and summary["run_group"] == "quickstart"   # 5: the sweep's project
    assert summary["config"]["lr"] == 0.002 and "lr=0.002" in res.stderr            # the override trained, and shows

    # 6: W&B's controller takes SweepRun.metric_extremum over history and summary; sweep local agrees
    metric = sweep["metric"]["name"]
    values = [row[metric] for row in history if metric in row] + [summary["summary"][metric]]
    assert metric == "val/loss" and len(values) >= 3 and trial["history"] == values[:-1]
    assert trial["value"] == min(values)
    assert summary["summary"][metric] == values[-2]   # the summary (parallel coordinates) shows the last value
    _assert_table_matches("lm", _logged_keys(run_dir))

    # 12: the offline W&B report uses the sweep's parameters and project
    res = run_cli("report", "wandb-report", "--offline", "--sweep-file", "sw", "--out", "spec.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert (spec["project"], spec["params"], spec["metric"]) == ("bb-proj", ["lr", "optimizer"], metric)
    assert '"project": {"name": "bb-proj"' in json.dumps(spec["report"])   # named in the run sets


def test_gpu_sweep_runs_here_with_a_cpu_launch_config(tmp_path):
    """sweeps/moe-muon-vs-adam-8gpu.yaml from the repo root, as a user would smoke-test it on CPU."""
    res = run_cli("sweep", "local", "sweeps/moe-muon-vs-adam-8gpu.yaml", "--count", "1", "--dir", str(tmp_path / "sw"),
                  "--launch-config", "launch/cpu-2proc.yaml", *TINY_OVERRIDES, "--override=max_steps=2",
                  "--override=mixed_precision=no", "--override=data=synthetic", "--no-report", cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    (trial,) = _trials(tmp_path / "sw")
    assert trial["status"] == "finished" and trial["value"] is not None
    assert trial["argv"][2:6] == ["-m", "blueberry.launch", "--config_file", "launch/cpu-2proc.yaml"]
    (run_dir,) = (tmp_path / "sw" / "trials" / "t0000" / "runs").iterdir()   # not in the repo's runs/
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_scanline_sweep_runs_and_logs_the_listed_metrics(tmp_path):
    res = run_cli("sweep", "local", str(REPO / "sweeps" / "scanline-models.yaml"), "--count", "1", "--dir", "sw",
                  "--override=preset=scanline-tiny", "--override=max_steps=2", "--override=epochs=0", "--no-report",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = (tmp_path / "sw" / "trials" / "t0000" / "runs").iterdir()
    _assert_table_matches("scanline", _logged_keys(run_dir))

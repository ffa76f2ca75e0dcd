"""What a training run shows in W&B, read back from real offline runs (`wandb leet inspect`): run
metadata (job_type, sweep group, git commit and diff), system metrics and console, native media
(tables, the interactive confusion matrix), checkpoints as model Artifacts that resume and evaluate,
`blueberry evaluate` as a linked W&B run, preemption vs a sweep's stop, and a W&B start that never
holds up training."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from blueberry import rundir
from conftest import TINY, run_dirs
from probes import probes

SCANLINE_TINY = ["--n_images=40", "--image_size=32", "--lines_per_sample=2", "--model=sequential", "--d_model=16",
                 "--n_layers=1", "--n_heads=2", "--d_ff=32", "--cnn_channels=8", "--batch_size=8",
                 "--eval_batches=2", "--warmup_steps=1", "--epochs=0"]


def records(run_dir: Path, under: str = "wandb") -> list[dict]:
    """Every record of the one offline W&B run in RUN_DIR/<under>/, as `wandb leet inspect --json` prints them."""
    (offline,) = sorted((Path(run_dir) / under).glob("offline-run-*"))
    wandb = str(Path(sys.executable).with_name("wandb"))
    out = subprocess.run([wandb, "leet", "inspect", "--json", str(offline)], capture_output=True, text=True,
                         check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def of_type(recs: list[dict], kind: str) -> list[dict]:
    return [r[kind] for r in recs if r["type"] == kind]


def model_artifacts(recs: list[dict]) -> list[dict]:
    return [a for a in of_type(recs, "artifact") if a.get("type") == "model"]


def logged_file(run_dir: Path, path: str) -> Path:
    """A file the offline W&B run holds (media, diff.patch), by its path in the run."""
    (offline,) = sorted((Path(run_dir) / "wandb").glob("offline-run-*"))
    return offline / "files" / path


def rebuild_artifact(artifact: dict, into: Path) -> Path:
    """The artifact version as `wandb artifact get` would lay it out, from its manifest's staged copies."""
    for entry in artifact["manifest"]["contents"]:
        target = into / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(entry["local_path"], target)
    return into


def cli_run(*args, cwd, env=None, timeout=300):
    merged = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "blueberry.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={k: v for k, v in merged.items() if v is not None})


@probes("wandb_log_model", "wandb_console", "wandb_system_metrics")
def test_lm_run_metadata_media_and_every_checkpoint_as_a_model_artifact(tmp_path):
    # A git repo as the working dir, with an uncommitted change: W&B records the commit and the diff.
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "study.txt").write_text("v1\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "one"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / "study.txt").write_text("v2 uncommitted\n")

    env = {"WANDB_SWEEP_ID": "sw1", "WANDB_RUN_ID": "trial1abc"}   # as `wandb agent` starts a trial
    res = cli_run("train", "lm", *TINY, "--max_steps=4", "--eval_every=2", "--save_every=2", "--keep_last=1",
                  "--wandb_log_model=all", cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(tmp_path / "runs")
    recs = records(run)
    (run_record,) = of_type(recs, "run")
    assert run_record["job_type"] == "train" and run_record["run_group"] == "sweep-sw1"
    assert run_record["tags"] == ["lm", "lm-tiny"]                      # no --wandb_tags: task and preset
    assert run_record["git"]["commit"] == head
    assert {"path": "diff.patch", "type": "WANDB"} in [f for r in of_type(recs, "files") for f in r["files"]]
    assert "v2 uncommitted" in logged_file(run, "diff.patch").read_text()
    assert of_type(recs, "stats") and of_type(recs, "output_raw")       # system metrics and console on
    assert rundir.read_summary(run)["wandb"]["group"] == "sweep-sw1"

    # The x-axis of every chart is declared as the optimizer step, and the sweep's key stays a scalar.
    declared = of_type(recs, "metric")
    assert {"glob_name": "*", "step_metric": "trainer/step"}.items() <= next(
        m for m in declared if m.get("glob_name") == "*").items()
    history = of_type(recs, "history")
    assert all(h["item"]["trainer/step"] == h["step"]["num"] for h in history)
    assert sorted({h["step"]["num"] for h in history if "train/loss" in h["item"]}) == [1, 2, 3, 4]
    assert isinstance(_summary(run)["summary"]["val/loss_best"], float)

    # Every checkpoint a version of model-<run id>, laid out as a run dir, aliased latest and step-N.
    versions = {a["aliases"][0] if a["aliases"][0].startswith("step-") else
                next(x for x in a["aliases"] if x.startswith("step-")): a for a in model_artifacts(recs)}
    assert {"step-2", "step-4"} <= set(versions)
    for step_alias, artifact in versions.items():
        step = int(step_alias.split("-")[1])
        assert artifact["name"] == "model-trial1abc" and "latest" in artifact["aliases"]
        paths = {c["path"] for c in artifact["manifest"]["contents"]}
        assert {"config.yaml", f"checkpoints/step-{step:07d}/model.safetensors"} <= paths
    best_step = rundir.read_summary(run)["best"]["step"]
    if best_step:
        assert "best" in versions[f"step-{best_step}"]["aliases"]

    # The expert-load matrix as a W&B Table beside the PNG, equal to the logged shares.
    tables = {h["step"]["num"]: h["item"]["moe/expert_load_table.path"] for h in of_type(recs, "history")
              if "moe/expert_load_table.path" in h["item"]}
    assert sorted(tables) == [0, 2, 4]
    table = json.loads(logged_file(run, tables[4]).read_text())
    metrics = {r["step"]: r for r in rundir.read_metrics(run) if "moe/min_share" in r}
    assert table["columns"][0] == "layer"
    assert table["data"][0][1:] == pytest.approx([metrics[4][f"moe/layer0/expert{e}"] for e in range(4)])

    # The step-2 version resumes like the run dir it was cut from: steps 3-4 repeat the original exactly.
    copy = rebuild_artifact(versions["step-2"], tmp_path / "from-artifact")
    resumed = cli_run("train", "lm", "--resume", str(copy), "--wandb_mode=disabled", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    original = {r["step"]: r["train/loss"] for r in rundir.read_metrics(run) if "train/loss" in r}
    again = {r["step"]: r["train/loss"] for r in rundir.read_metrics(copy) if "train/loss" in r}
    assert sorted(again) == [3, 4] and again == pytest.approx({s: original[s] for s in (3, 4)}, abs=1e-5)

    # `blueberry evaluate` logs to a linked W&B run: job_type evaluate, the sweep's group, the run id.
    evaluated = cli_run("evaluate", str(run), "--split=val", "--checkpoint=latest", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    saved = json.loads((run / "eval-val.json").read_text())
    eval_recs = records(run / "eval")
    (eval_run,) = of_type(eval_recs, "run")
    assert eval_run["job_type"] == "evaluate" and eval_run["run_group"] == "sweep-sw1"
    summary = _summary(run / "eval")
    assert summary["config"]["evaluated_run_id"] == "trial1abc" and summary["config"]["evaluated_step"] == 4
    assert summary["summary"]["val/loss"] == pytest.approx(saved["metrics"]["val/loss"])
    assert not model_artifacts(eval_recs) and len(list((run / "wandb").glob("offline-run-*"))) == 1


def _summary(wandb_parent: Path) -> dict:
    (offline,) = sorted((Path(wandb_parent) / "wandb").glob("offline-run-*"))
    wandb = str(Path(sys.executable).with_name("wandb"))
    return json.loads(subprocess.run([wandb, "leet", "inspect", "--summary", "--json", str(offline)],
                                     capture_output=True, text=True, check=True).stdout)


@probes("wandb_log_model", "wandb_console", "wandb_system_metrics", task="scanline")
def test_scanline_confusion_chart_per_class_table_best_model_and_quiet_switches(cli):
    res = cli("train", "scanline", *SCANLINE_TINY, "--max_steps=4", "--eval_every=2", "--wandb_log_model=best",
              "--wandb_console=false", "--wandb_system_metrics=false")
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    recs = records(run)
    assert not of_type(recs, "stats") and not of_type(recs, "output_raw")   # both switched off

    # best: one version, the best checkpoint, once the run ends.
    (artifact,) = model_artifacts(recs)
    best_step = rundir.read_summary(run)["best"]["step"]
    assert {"best", f"step-{best_step}"} <= set(artifact["aliases"])
    assert f"checkpoints/step-{best_step:07d}/model.safetensors" in {c["path"] for c in artifact["manifest"]["contents"]}

    # The confusion matrix as W&B's interactive chart, and per-class numbers as a Table that agrees
    # with the logged recalls.
    visualize = [c for c in of_type(recs, "config") if "_wandb.visualize.val/confusion_matrix_chart" in
                 json.dumps(c)]
    assert visualize and "wandb/confusion_matrix/v1" in json.dumps(visualize[-1])
    (path,) = [h["item"]["val/per_class.path"] for h in of_type(recs, "history") if h["step"]["num"] == 4]
    table = json.loads(logged_file(run, path).read_text())
    assert table["columns"] == ["class", "support", "precision", "recall", "f1"]
    last = [r for r in rundir.read_metrics(run) if r["step"] == 4 and "val/loss" in r][0]
    for name, support, _, recall, _ in table["data"]:
        assert recall == pytest.approx(last[f"val/recall/{name}"])
    assert sum(row[1] for row in table["data"]) > 0
    assert (run / "plots" / "val__confusion_matrix.png").exists()


def _start(cwd: Path, name: str, env: dict) -> subprocess.Popen:
    merged = {**os.environ, **env}
    return subprocess.Popen([sys.executable, "-m", "blueberry.cli", "train", "lm", *TINY, "--max_steps=500",
                             "--eval_every=500", f"--name={name}"], cwd=cwd, env=merged,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_training(cwd: Path, name: str, timeout: float = 240) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [p for p in (cwd / "runs").glob(f"{name}-*")] if (cwd / "runs").exists() else []
        if found and any("train/loss" in r for r in rundir.read_metrics(found[0])):
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"{name} never trained")


def signal_trainers(cwd: Path, trainers: dict[str, tuple[dict, int, Callable | None]]) -> dict[str, tuple]:
    """Start one trainer per name (its environment), wait until each trains, then call its `before` (if any)
    and send it its signal. Returns name -> (run dir, exit code, stderr)."""
    started = {name: _start(cwd, name, env) for name, (env, _, _) in trainers.items()}
    run_dirs_ = {name: _wait_for_training(cwd, name) for name in trainers}
    for name, (_, sig, before) in trainers.items():
        if before is not None:
            before()
        started[name].send_signal(sig)
    errors = {name: p.communicate(timeout=240)[1] for name, p in started.items()}
    return {name: (run_dirs_[name], p.returncode, errors[name]) for name, p in started.items()}


def assert_preempted(run: Path, code: int, err: str) -> None:
    """Exit 75, status preempted, and W&B told (a preempting record), so W&B's sweep re-queues it."""
    assert code == 75, err
    assert rundir.read_summary(run)["status"] == "preempted"
    recs = records(run)
    assert of_type(recs, "preempting") and of_type(recs, "exit")[0]["exit_code"] == 75


def assert_stopped(run: Path, code: int, err: str) -> None:
    """Exit 0, status stopped, a checkpoint, and no preempting record: nothing re-queues it."""
    assert code == 0, err
    assert rundir.read_summary(run)["status"] == "stopped"
    recs = records(run)
    assert not of_type(recs, "preempting") and of_type(recs, "exit")[0].get("exit_code", 0) == 0
    assert rundir.latest_checkpoint(run) is not None


def test_preemption_tells_wandb_and_a_sweep_stop_finishes_stopped(tmp_path):
    """A trial of `wandb agent` inside a SLURM job that SLURM preempts (SIGTERM; W&B's server cannot be asked
    offline whether it was a stop, so the SLURM job decides), and a `sweep local` trial its hyperband stops."""
    stop_file = tmp_path / "stop-requested"
    agent = {"WANDB_SWEEP_ID": "sw2", "WANDB_RUN_ID": "pre123abc", "SLURM_JOB_ID": "4242"}
    ended = signal_trainers(tmp_path, {
        "pre": (agent, signal.SIGTERM, None),
        # what `sweep local` does before its hyperband SIGTERM
        "stp": ({"BLUEBERRY_STOP_FILE": str(stop_file)}, signal.SIGTERM, stop_file.touch)})
    pre_dir = ended["pre"][0]
    assert_preempted(*ended["pre"])
    assert not model_artifacts(records(pre_dir))       # wandb_log_model=none (the default) logs no checkpoint
    assert_stopped(*ended["stp"])

    # W&B's sweep re-queues it: the agent starts the same command with the same WANDB_RUN_ID, and the
    # run dir of that W&B run resumes (here up to two steps further).
    step = rundir.read_summary(pre_dir)["step"]
    again = cli_run("train", "lm", *TINY, "--max_steps=500", "--eval_every=500", "--name=pre",
                    f"--stop_at_step={step + 2}", cwd=tmp_path, env=agent)
    assert again.returncode == 0, again.stderr
    assert f"W&B run pre123abc was preempted: resuming runs/{pre_dir.name}" in again.stderr
    assert [p.name for p in run_dirs(tmp_path / "runs") if p.name.startswith("pre-")] == [pre_dir.name]
    losses = [r["step"] for r in rundir.read_metrics(pre_dir) if "train/loss" in r]
    assert losses == list(range(1, step + 3))


def test_artifact_reference_offline_fails_fast_in_one_line(cli):
    ref = "team/proj/model-abc123:best"
    for args, field in ((["train", "lm", *TINY, f"--resume={ref}"], "resume"), (["evaluate", ref], "run_dir")):
        res = cli(*args)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {field}={ref}: a W&B artifact needs W&B online "
                                                       "(WANDB_MODE=offline)"), res.stderr
    res = cli("evaluate", ref, env={"WANDB_MODE": None})
    assert res.returncode == 2 and "(no W&B API key)" in res.stderr
    assert not (cli.cwd / "runs").exists()


def test_a_slow_wandb_start_does_not_hold_up_training(cli):
    """W&B waits 8 s for an unreachable server; the run trains and evaluates meanwhile, and every row
    reaches the offline run W&B falls back to, at its step."""
    env = {"WANDB_MODE": None, "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9",
           "WANDB_INIT_TIMEOUT": "8"}
    res = cli("train", "lm", *TINY, "--max_steps=3", "--eval_every=3", env=env, timeout=240)
    assert res.returncode == 0, res.stderr
    assert res.stderr.index("step 0: val/loss") < res.stderr.index("W&B init failed in online mode")
    (run,) = run_dirs(cli.cwd / "runs")
    recs = records(run)
    logged = {h["step"]["num"]: h for h in of_type(recs, "history")}
    rows = rundir.read_metrics(run)
    assert sorted(logged) == sorted({r["step"] for r in rows}) == [0, 1, 2, 3]
    summary = rundir.read_summary(run)
    assert summary["wandb"]["mode"] == "offline" and summary["wandb"]["id"] == of_type(recs, "run")[0]["run_id"]


def test_blueberry_launch_turns_a_sigterm_into_a_clean_exit_75(tmp_path):
    """As `wandb agent` stops a trial: SIGTERM to the one process it started, here the launcher of two
    CPU ranks. Plain `accelerate launch` exits 1 with torchrun's SignalException traceback."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([sys.executable, "-m", "blueberry.launch", "--config_file",
                                 str(repo / "launch" / "cpu-2proc.yaml"), "--main_process_port", "0",
                                 "-m", "blueberry.cli", "train", "lm", *TINY, "--max_steps=500", "--eval_every=500",
                                 "--name=ddp"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    run = _wait_for_training(tmp_path, "ddp")
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=240)
    assert launcher.returncode == 75, err[-3000:]
    assert "Traceback" not in err and "every rank that ended early preempted (exit 75)" in err
    assert rundir.read_summary(run)["status"] == "preempted" and rundir.latest_checkpoint(run) is not None


STOP_PROBE = '''
import json, os, signal, sys, time
from pathlib import Path
trial = Path(os.environ["BLUEBERRY_TRIAL_DIR"])
def on_term(*_):
    (trial / "signal.txt").write_text("stop" if Path(os.environ["BLUEBERRY_STOP_FILE"]).exists() else "preempt")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
run = trial / "runs" / "probe"
run.mkdir(parents=True, exist_ok=True)
values = [float(v) for v in sys.argv[1].split("=")[1].split(",")]
with open(run / "metrics.jsonl", "a", buffering=1) as f:
    for i, v in enumerate(values):
        f.write(json.dumps({"step": i, "val/loss": v}) + "\\n")
        time.sleep(0.4)
'''


def test_sweep_local_marks_its_hyperband_signal_as_a_stop(tmp_path):
    """The runner's side of the stop protocol the trainer reads (errors.STOP_FILE_ENV)."""
    from blueberry.sweep.local import LocalRunner
    from blueberry.sweep.state import SweepDir

    probe = tmp_path / "probe.py"
    probe.write_text(STOP_PROBE)
    config = {"method": "grid", "metric": {"name": "val/loss", "goal": "minimize"},
              "parameters": {"values": {"values": [f"1,{v},{v},{v},{v},{v},{v},{v}" for v in (0.1, 0.9, 0.8, 0.7)]}},
              "command": ["${interpreter}", str(probe), "${args}"],
              "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2}}
    sweep = SweepDir.open(tmp_path / "s", config, name="t", overrides=[], seed=0)
    LocalRunner(sweep, workers=4, poll_s=0.1, cwd=tmp_path).run()
    trials = sweep.trials()
    stopped = [t for t in trials if t.status == "stopped"]
    assert stopped and any(t.status == "finished" for t in trials)
    assert all((sweep.trial_dir(t.id) / "signal.txt").read_text() == "stop" for t in stopped)

"""`blueberry evaluate` leaves a true record: its W&B run lands in the training run's W&B project and
entity (under `wandb agent` those are the sweep's, not config.yaml's), an evaluated model Artifact is
the run's recorded input, and an output location that cannot be written stops it at once (`--out`)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from blueberry import rundir
from blueberry.train import tracking
from blueberry.train.artifacts import FetchedArtifact
from conftest import TINY, run_cli, run_dirs
from test_wandb_agent_faults import offline_records, offline_summary
from test_wandb_run import of_type

# As `wandb agent` starts a trial: the sweep's project and entity reach W&B through the environment, and
# W&B ignores the project the trainer asks for (config.yaml says blueberry).
AGENT = {"WANDB_SWEEP_ID": "sw9", "WANDB_RUN_ID": "evalsrc1", "WANDB_PROJECT": "sweepproj", "WANDB_ENTITY": "team1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("evaluate")
    res = run_cli("train", "lm", *TINY, "--max_steps=2", "--eval_every=2", cwd=cwd, env=AGENT)
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cwd / "runs")
    return run


def copy_run(run: Path, into: Path) -> Path:
    target = into / run.name
    shutil.copytree(run, target, symlinks=True)
    shutil.rmtree(target / "wandb")
    return target


def one_line_error(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_the_evaluation_run_goes_to_the_training_runs_project_and_entity(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    summary = rundir.read_summary(run)["wandb"]
    assert summary["project"] == "sweepproj" and summary["entity"] == "team1"     # where W&B filed it
    res = run_cli("evaluate", str(run), "--split=val", cwd=tmp_path)              # no agent variables now
    assert res.returncode == 0, res.stderr
    (offline,) = (run / "eval" / "wandb").glob("offline-run-*")
    (record,) = of_type(offline_records(offline), "run")
    assert (record["project"], record["entity"], record["job_type"]) == ("sweepproj", "team1", "evaluate")
    assert offline_summary(offline)["config"]["evaluated_run_id"] == "evalsrc1"


def test_out_takes_the_json_figures_and_wandb_files_and_the_run_dir_is_untouched(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    res = run_cli("evaluate", str(run), "--split=val", "--out", str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "elsewhere"
    saved = json.loads((out / "eval-val.json").read_text())
    assert saved["split"] == "val" and "val/loss" in saved["metrics"]
    assert list((out / "plots").glob("val__*.png"))                              # the lm task's figures
    (offline,) = (out / "eval" / "wandb").glob("offline-run-*")
    assert offline_summary(offline)["summary"]["val/loss"] == pytest.approx(saved["metrics"]["val/loss"])
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    assert f"wrote {out / 'eval-val.json'}" in res.stdout


def test_a_read_only_run_dir_stops_before_any_work_and_names_out(trained, tmp_path):
    """A read-only bind mount in a private mount namespace (chmod does not stop root, and CI runs as root;
    as in test_reliability's full disk): one line, exit 2, no output."""
    run = copy_run(trained, tmp_path)
    script = (f'mount --bind "{run}" "{run}" && mount -o remount,ro,bind "{run}" && '
              f'exec "{sys.executable}" -m blueberry.cli evaluate "{run}" --split=val')
    res = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=os.environ)
    line = one_line_error(res)
    assert line == (f"error: run_dir={run}: cannot write there (Read-only file system); pass --out DIR for "
                    "eval-SPLIT.json, its figures and W&B files"), line
    assert not list(run.glob("eval-*.json")) and not (run / "eval").exists()


def test_an_out_that_cannot_be_a_folder_is_one_line(trained, tmp_path):
    (tmp_path / "a-file").write_text("x")
    res = run_cli("evaluate", str(trained), "--out", str(tmp_path / "a-file" / "sub"), cwd=tmp_path)
    line = one_line_error(res)
    assert line.startswith(f"error: --out={tmp_path / 'a-file' / 'sub'}: cannot write there"), line


@pytest.fixture
def wandb_in_this_process():
    """W&B started in the test process leaves its service's address in WANDB_SERVICE, which every later
    subprocess (a trainer in another test) would join, with this process's working directory: let it go."""
    yield
    import wandb

    wandb.teardown()
    os.environ.pop("WANDB_SERVICE", None)


def test_an_evaluated_artifact_is_recorded_with_the_run_and_lands_in_its_project(trained, tmp_path, monkeypatch,
                                                                                  wandb_in_this_process):
    """Offline (a downloaded Artifact needs the server, so evaluate_run cannot get here offline): the
    evaluation run of an Artifact version goes to the Artifact's entity/project and names it in its config.
    W&B refuses use_artifact offline, so the lineage link itself is made only online (next test)."""
    from blueberry.config import LMConfig, read_config_file, resolve

    monkeypatch.chdir(tmp_path)
    run = copy_run(trained, tmp_path)
    (run / rundir.SUMMARY).unlink()                       # a downloaded Artifact is config.yaml + checkpoints
    saved = read_config_file(run / rundir.CONFIG)
    saved.pop("task")
    cfg = resolve(LMConfig, base=saved, source="config.yaml")
    ckpt = rundir.latest_checkpoint(run)
    ref = "team2/proj2/model-evalsrc1:v3"
    run_id = tracking.log_evaluation(run, cfg, split="val", ckpt=ckpt, metrics={"val/loss": 1.5}, media={},
                                     out_dir=run, artifact=FetchedArtifact(ref, run, None))
    (offline,) = (run / "eval" / "wandb").glob("offline-run-*")
    (record,) = of_type(offline_records(offline), "run")
    assert (record["project"], record["entity"], record["run_id"]) == ("proj2", "team2", run_id)
    config = offline_summary(offline)["config"]
    assert config["evaluated_artifact"] == ref and config["evaluated_step"] == 2


class OnlineStandIn:
    """A W&B run as an online wandb.init returns it, as far as log_evaluation uses one."""

    def __init__(self):
        self.id, self.used, self.logged, self.summary, self.config = "standin1", [], [], {}, {}

    def use_artifact(self, artifact):
        self.used.append(artifact)

    def log(self, row):
        self.logged.append(row)

    def finish(self):
        pass


def test_online_the_evaluated_artifact_is_the_evaluation_runs_input(trained, tmp_path, monkeypatch):
    """use_artifact needs the server; a stand-in for the online run shows the Artifact reaches it."""
    from blueberry.config import LMConfig

    stand_in = OnlineStandIn()
    monkeypatch.setattr(tracking, "choose_mode", lambda requested: "online")
    monkeypatch.setattr(tracking, "init_wandb", lambda run_dir, **options: (stand_in, "online"))
    artifact = object()   # the public Artifact object the download returned
    fetched = FetchedArtifact("team2/proj2/model-evalsrc1:v3", trained, artifact)
    tracking.log_evaluation(trained, LMConfig(), split="val", ckpt=rundir.latest_checkpoint(trained),
                            metrics={"val/loss": 1.5}, media={}, out_dir=tmp_path, artifact=fetched)
    assert stand_in.used == [artifact] and stand_in.logged == [{"val/loss": 1.5}]

"""Where a record could be silently lost or wrong, or where the real `wandb agent` and the local runner
could part ways: a W&B start that training must not wait for, a SIGTERM that is a sweep's stop and not
a preemption, a config value W&B changed, a resume whose W&B run already went further. Each reads back
real offline W&B runs and real subprocess trainers."""

import http.server
import os
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from blueberry import rundir
from blueberry.train import stopping, tracking
from conftest import TINY, run_dirs
from test_wandb_run import (assert_preempted, assert_stopped, model_artifacts, of_type, rebuild_artifact, records,
                            signal_trainers)


def offline_records(offline: Path) -> list[dict]:
    """Every record of one offline W&B run folder (`wandb leet inspect --json`)."""
    wandb = str(Path(sys.executable).with_name("wandb"))
    out = subprocess.run([wandb, "leet", "inspect", "--json", str(offline)], capture_output=True, text=True,
                         check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def offline_summary(offline: Path) -> dict:
    wandb = str(Path(sys.executable).with_name("wandb"))
    return json.loads(subprocess.run([wandb, "leet", "inspect", "--summary", "--json", str(offline)],
                                     capture_output=True, text=True, check=True).stdout)


def checkpoint_wandb_id(ckpt: Path) -> str | None:
    """The W&B run id a checkpoint's trainer state carries (what a resume continues)."""
    import torch

    for path in sorted(ckpt.glob("custom_checkpoint_*.pkl")):
        state = torch.load(path, weights_only=False)
        if isinstance(state, dict) and "wandb_id" in state:
            return state["wandb_id"]
    raise AssertionError(f"{ckpt}: no trainer state")


UNREACHABLE = {"WANDB_MODE": None, "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9",
               "WANDB_INIT_TIMEOUT": "8"}


def test_the_first_steps_do_not_wait_for_an_unreachable_wandb(cli):
    """W&B's online init retries ~10 s before it gives up. Step 0's best checkpoint used to wait for it (to
    carry the W&B run id), and with wandb_log_model=all every checkpoint waited until W&B had copied it. The
    id is now chosen before W&B starts and checkpoints are hard-linked aside for W&B, so step 1 is trained
    and evaluated while W&B is still trying; every checkpoint, even those rotated away before W&B was up,
    reaches the offline run W&B falls back to as an Artifact version carrying that run's id."""
    res = cli("train", "lm", *TINY, "--max_steps=2", "--eval_every=1", "--save_every=1", "--keep_last=1",
              "--wandb_log_model=all", env=UNREACHABLE, timeout=240)
    assert res.returncode == 0, res.stderr
    # One stream, in the order things happened: step 1's row (and its evaluation) before W&B gave up.
    assert res.stderr.index("step 1: val/loss") < res.stderr.index("W&B init failed in online mode"), res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    assert any(r["step"] == 1 and "train/loss" in r for r in rundir.read_metrics(run))
    recs = records(run)
    (run_record,) = of_type(recs, "run")
    run_id = run_record["run_id"]
    summary = rundir.read_summary(run)
    assert summary["wandb"]["mode"] == "offline" and summary["wandb"]["id"] == run_id
    assert {checkpoint_wandb_id(p) for _, p in rundir.checkpoints(run)} == {run_id}

    versions = {next(a for a in v["aliases"] if a.startswith("step-")): v for v in model_artifacts(recs)}
    assert sorted(versions) == ["step-0", "step-1", "step-2"]   # keep_last=1 had deleted steps 0 and 1
    step0 = rebuild_artifact(versions["step-0"], cli.cwd / "step-0-artifact")
    assert (step0 / "checkpoints" / "step-0000000" / "model.safetensors").is_file()
    assert checkpoint_wandb_id(step0 / "checkpoints" / "step-0000000") == run_id   # saved while W&B started
    assert not (run / tracking.STAGING).exists()


def test_a_sigterm_from_wandb_agent_is_a_stop_and_sigusr1_a_preemption(tmp_path):
    """`wandb agent` stops a trial (hyperband, the UI's Stop) with SIGTERM to its child; offline (W&B's
    server cannot be asked) that SIGTERM is a stop: exit 0, status stopped, no preempting record, so W&B
    does not re-queue what it stopped. SIGUSR1 is always a preemption (SLURM's --signal)."""
    agent = {"WANDB_SWEEP_ID": "sw4"}
    ended = signal_trainers(tmp_path, {"stp": ({**agent, "WANDB_RUN_ID": "stop0001"}, signal.SIGTERM, None),
                                       "usr": ({**agent, "WANDB_RUN_ID": "usr10001"}, signal.SIGUSR1, None)})
    assert_stopped(*ended["stp"])
    assert_preempted(*ended["usr"])


class StandInServer(http.server.BaseHTTPRequestHandler):
    """W&B's GraphQL endpoint, as far as the stop question goes: answers `stopped`/`shouldStop` for run
    ids listed in `told_to_stop`, null for unknown runs, and records each request."""

    told_to_stop: dict[str, bool] = {}
    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, self.headers.get("Authorization"), body))
        run_id = body["variables"]["run"]
        run = ({"stopped": False, "shouldStop": self.told_to_stop[run_id]} if run_id in self.told_to_stop else None)
        answer = json.dumps({"data": {"project": {"run": run}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in_wandb(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandInServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    StandInServer.requests = []
    yield StandInServer
    server.shutdown()


def test_wandb_is_asked_whether_a_run_was_told_to_stop(stand_in_wandb, monkeypatch):
    """The question the trainer asks W&B's server on a SIGTERM under `wandb agent` (the agent only signals
    a run the server marked to stop; anything else is a preemption), against a stand-in for the server."""
    import base64

    stand_in_wandb.told_to_stop = {"hb000001": True, "live0001": False}
    assert stopping.server_says_stop("team", "proj", "hb000001") is True
    assert stopping.server_says_stop("team", "proj", "live0001") is False
    assert stopping.server_says_stop("team", "proj", "unknown1") is None       # no such run: no answer
    path, auth, body = stand_in_wandb.requests[0]
    assert path == "/graphql" and auth == "Basic " + base64.b64encode(b"api:" + b"k" * 40).decode()
    assert body["variables"] == {"entity": "team", "project": "proj", "run": "hb000001"}
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    assert stopping.server_says_stop("team", "proj", "hb000001") is None       # unreachable: no answer

    # The rule the trainer applies to a SIGTERM/SIGUSR1 once every rank agreed to stop (first match wins).
    decide = stopping.stop_or_preempt
    agent, slurm = {"WANDB_SWEEP_ID": "sw"}, {"SLURM_JOB_ID": "7"}
    cases = [  # (signal, stop already known, environment, the server's answer) -> outcome
        (signal.SIGTERM, True, slurm, None, "stopped"),       # W&B's stop check or sweep local's stop file
        (signal.SIGUSR1, False, agent, True, "preempted"),    # SLURM's --signal, never a sweep's stop
        (signal.SIGTERM, False, {**agent, **slurm}, True, "stopped"),
        (signal.SIGTERM, False, agent, False, "preempted"),   # e.g. the agent itself was shut down
        (signal.SIGTERM, False, {**agent, **slurm}, None, "preempted"),
        (signal.SIGTERM, False, agent, None, "stopped"),
        (signal.SIGTERM, False, {}, None, "preempted"),       # kill, torchrun, sweep local shutting down
    ]
    for sig, known, env, answer, outcome in cases:
        for var in ("WANDB_SWEEP_ID", "SLURM_JOB_ID"):
            monkeypatch.delenv(var, raising=False)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        asked = []
        got = decide(sig, known, lambda: asked.append(1) or answer)
        assert got == outcome, (sig, known, env, answer)
        assert bool(asked) == (not known and sig == signal.SIGTERM and "WANDB_SWEEP_ID" in env)


def test_a_config_value_wandb_changed_is_one_warning_and_the_trained_value_is_recorded(cli):
    """W&B Launch (WANDB_CONFIG) and a sweep's parameter file (WANDB_SWEEP_PARAM_PATH) set config keys
    that W&B locks over the config the trainer gives; training reads its own config, so a differing value
    never trained. One warning line names them all; W&B's summary gets the trained values as trained/<key>."""
    params = cli.cwd / "config-trial.yaml"
    params.write_text("seed:\n  value: 3\n")        # as `wandb agent` writes a trial's parameters
    env = {"WANDB_LAUNCH": "true", "WANDB_CONFIG": json.dumps({"lr": 0.5, "batch_size": 4}),
           "WANDB_SWEEP_PARAM_PATH": str(params)}
    res = cli("train", "lm", *TINY, "--max_steps=1", "--eval_every=1", "--lr=0.004", "--seed=1", env=env)
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    lines = [line for line in res.stderr.splitlines() if "differs from what trains" in line]
    assert lines == ["blueberry: W&B's config differs from what trains for seed (W&B 3, trained 1), lr (W&B 0.5, "
                     "trained 0.004); W&B keeps the value its sweep or Launch set, so the trained one is in "
                     "config.yaml and in W&B's summary as trained/seed, trained/lr"], res.stderr
    (offline,) = (run / "wandb").glob("offline-run-*")
    summary = offline_summary(offline)
    assert (summary["config"]["lr"], summary["config"]["seed"], summary["config"]["batch_size"]) == (0.5, 3, 4)
    assert (summary["summary"]["trained/lr"], summary["summary"]["trained/seed"]) == (0.004, 1)
    record = rundir.read_summary(run)["wandb"]
    assert record["config_differs"] == {"seed": {"wandb": 3, "trained": 1}, "lr": {"wandb": 0.5, "trained": 0.004}}
    # W&B ignores the id it is given in a Launch context: the one chosen up front reaches it through
    # WANDB_RUN_ID, so checkpoints and W&B agree.
    assert record["id"] == summary["run_id"]


def test_resuming_an_older_checkpoint_logs_to_a_new_wandb_run_that_continues_the_old(cli):
    """A resume continues its W&B run when that run ended exactly at the checkpoint; resuming an older
    checkpoint (W&B already has later rows, which it would keep, dropping the re-logged ones online) logs
    to a new W&B run, linked to the old one in W&B's summary and notes and in summary.json."""
    common = [*TINY, "--max_steps=6", "--eval_every=2", "--save_every=2", "--keep_last=5"]
    first = cli("train", "lm", *common, "--stop_at_step=4")
    assert first.returncode == 0, first.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    first_id = rundir.read_summary(run)["wandb"]["id"]

    clean = cli("train", "lm", "--resume", str(run))                    # ended at step 4, resumes at 4
    assert clean.returncode == 0, clean.stderr
    assert rundir.read_summary(run)["wandb"]["id"] == first_id and "continues" not in rundir.read_summary(run)["wandb"]

    older = cli("train", "lm", "--resume", str(run / "checkpoints" / "step-0000004"))   # W&B has rows to 6
    assert older.returncode == 0, older.stderr
    record = rundir.read_summary(run)["wandb"]
    new_id = record["id"]
    assert new_id != first_id and record["continues"] == {"id": first_id, "step": 4}
    assert f"W&B run {first_id} went on past step 4" in older.stderr
    parts = {p.name.rsplit("-", 1)[1]: p for p in (run / "wandb").glob("offline-run-*")}
    assert len(list((run / "wandb").glob("offline-run-*"))) == 3 and set(parts) == {first_id, new_id}
    (run_record,) = of_type(offline_records(parts[new_id]), "run")
    assert run_record["notes"] == f"continues W&B run {first_id} from step 4"
    summary = offline_summary(parts[new_id])["summary"]
    assert summary["continues_run"] == first_id and summary["continues_from_step"] == 4
    steps = sorted({r["step"] for r in rundir.read_metrics(run) if "train/loss" in r})
    assert steps == [1, 2, 3, 4, 5, 6]                                   # the run dir stays continuous


def test_the_run_id_is_chosen_before_wandb_starts_and_wandb_assigned_ids_are_kept(monkeypatch, capsys):
    """choose_run_id's branches (the end-to-end resume test above reads the offline runs back)."""
    for var in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_LAUNCH"):
        monkeypatch.delenv(var, raising=False)
    ended_at_4 = {"status": "preempted", "step": 4, "wandb": {"continues": {"id": "older", "step": 2}}}
    killed_after_4 = {"status": "running", "step": 6}

    fresh, resume, continues = tracking.choose_run_id(None, 0, {})
    assert len(fresh) == 8 and fresh.isalnum() and not resume and continues is None
    assert tracking.choose_run_id("abc", 4, ended_at_4) == ("abc", True, {"id": "older", "step": 2})
    new, resume, continues = tracking.choose_run_id("abc", 4, killed_after_4)
    assert new != "abc" and not resume and continues == {"id": "abc", "step": 4}
    assert f"W&B run abc went on past step 4 (this checkpoint): logging to a new W&B run {new}" in capsys.readouterr().err

    # Under `wandb agent` the id is the sweep's: kept, and an overlap is said.
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw")
    monkeypatch.setenv("WANDB_RUN_ID", "trial001")
    assert tracking.choose_run_id(None, 0, {}) == ("trial001", False, None)
    assert tracking.choose_run_id("trial001", 4, killed_after_4) == ("trial001", True, None)
    assert "W&B run trial001 went on past step 4 (this checkpoint) and is its sweep's" in capsys.readouterr().err

    # W&B Launch with no WANDB_RUN_ID: W&B would ignore the id it is given, so the chosen one goes to the env.
    monkeypatch.delenv("WANDB_SWEEP_ID")
    monkeypatch.delenv("WANDB_RUN_ID")
    monkeypatch.setenv("WANDB_LAUNCH", "true")
    launched, _, _ = tracking.choose_run_id(None, 0, {})
    assert os.environ["WANDB_RUN_ID"] == launched

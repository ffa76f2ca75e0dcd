"""The sbatch scripts on a real one-node SLURM cluster (tests/slurm/cluster.sh): a training job,
a sweep-agent array sharing a sweep dir, multi-node on one node, and preemption with requeue and
exact resume. Without a cluster these skip with the reason; CI sets BLUEBERRY_REQUIRE_SLURM=1
so there they fail instead."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from blueberry import rundir
from blueberry.sweep.local import default_sweep_dir
from conftest import TINY

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("BLUEBERRY_SLURM_DIR", "/tmp/blueberry-slurm"))


@pytest.fixture(scope="module")
def slurm_env():
    env = {**os.environ, "SLURM_CONF": str(STATE / "slurm.conf")}

    def up() -> bool:
        return (STATE / "slurm.conf").exists() and subprocess.run(
            ["scontrol", "ping"], env=env, capture_output=True, text=True).returncode == 0 \
            if _has("scontrol") else False

    started = False
    if not up():
        subprocess.run(["bash", str(REPO / "tests" / "slurm" / "cluster.sh"), "up"], env=env, capture_output=True)
        started = up()
        if not started:
            reason = (STATE / "unavailable").read_text().strip() if (STATE / "unavailable").exists() else "no slurmctld"
            if os.environ.get("BLUEBERRY_REQUIRE_SLURM") == "1":
                pytest.fail(f"SLURM cluster required but unavailable: {reason}")
            pytest.skip(f"SLURM cluster unavailable: {reason}")
    yield env
    if started:
        subprocess.run(["bash", str(REPO / "tests" / "slurm" / "cluster.sh"), "down"], env=env, capture_output=True)


def _has(command: str) -> bool:
    from shutil import which
    return which(command) is not None


def blueberry(*args, cwd, env, timeout=60):
    return subprocess.run([sys.executable, "-m", "blueberry.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def submit(kind, *args, cwd, env, options=()):
    res = blueberry("slurm", "submit", kind, *options, "--", *args, cwd=cwd, env=env)
    assert res.returncode == 0, res.stderr
    return re.search(r"submitted \w+ job (\d+)", res.stdout).group(1)


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}


def wait_for(job, env, timeout=300, log_has: tuple[Path, str] | None = None):
    """Poll (not sbatch --wait, which backs off) until the job has ended for good: every task's
    JobState final and nothing in squeue, twice in a row, since both can flicker while a requeued
    job turns from COMPLETING to PENDING. Releases a requeued job's BeginTime hold (~2 min).
    `log_has` (log file, text): a requeued job has not ended before its log shows the restart, however
    long slurmctld keeps it looking final in between (seen on a quiet machine)."""
    deadline, ended_before = time.time() + timeout, False
    while time.time() < deadline:
        if log_has is not None and not (log_has[0].exists() and log_has[1] in log_has[0].read_text()):
            ended_before = False
            _release_begin_time(job, env)
            time.sleep(1)
            continue
        shown = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
        states = re.findall(r"\bJobState=(\S+)", shown)
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i|%T|%r"], env=env, capture_output=True,
                             text=True).stdout
        ended = bool(states) and all(s in FINAL for s in states) and not out.strip()
        if ended and ended_before:
            return
        ended_before = ended
        _release_begin_time(job, env, out)
        time.sleep(1)
    raise AssertionError(f"job {job} still queued after {timeout}s")


_HELD_SINCE: dict[str, float] = {}
RELEASE_AFTER_S = 3.0


def _release_begin_time(job, env, squeue_out: str | None = None) -> None:
    """Start a requeued job soon instead of after slurmctld's ~2 min BeginTime hold, but not at once:
    slurmd refuses a credential issued in the second its previous run's credential was revoked
    ("Killing non-startable batch job: Job credential revoked"; the job then ends without a restart,
    seen once in CI), so the hold is released only after RELEASE_AFTER_S."""
    if squeue_out is None:
        squeue_out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i|%T|%r"], env=env, capture_output=True,
                                    text=True).stdout
    for line in squeue_out.splitlines():
        jid, state, reason = line.split("|")
        if state == "PENDING" and reason == "BeginTime":
            held = _HELD_SINCE.setdefault(jid, time.time())
            if time.time() - held >= RELEASE_AFTER_S:
                subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], env=env, capture_output=True)
                _HELD_SINCE.pop(jid, None)


def job_field(job, key, env):
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return re.search(rf"\b{key}=(\S+)", out).group(1)


def test_dry_run_fills_the_script_without_a_cluster(cli):
    res = cli("slurm", "submit", "train", "--gpus=4", "--time=02:00:00", "--partition=gpu", "--sbatch", "mem=64G",
              "--dry-run", "--", "--preset", "moe-exp8", "--recipe", "{optimizer: muon}")
    assert res.returncode == 0, res.stderr
    script = res.stdout
    assert "#SBATCH --time=02:00:00" in script and "#SBATCH --time=01:00:00" not in script   # replaced
    assert "#SBATCH --gres=gpu:4" in script and "#SBATCH --partition=gpu" in script and "#SBATCH --mem=64G" in script
    assert "export GPUS=4" in script and f"export BLUEBERRY_HOME={REPO}" in script
    assert "set -- --preset moe-exp8 --recipe '{optimizer: muon}'" in script
    assert script.index("#SBATCH --mem=64G") < script.index("set -euo pipefail")   # sbatch reads only the header


def test_train_sbatch_runs_two_ranks_and_tags_the_run_dir(slurm_env, tmp_path):
    job = submit("train", *TINY, "--max_steps=20", "--eval_every=10", cwd=tmp_path, env=slurm_env,
                 options=["--procs=2", "--time=00:10:00"])
    wait_for(job, slurm_env)
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.endswith(f"-j{job}")
    summary = rundir.read_summary(run)
    assert summary["status"] == "finished", (tmp_path / "logs" / f"bb-train-{job}.out").read_text()[-2000:]
    assert summary["tokens_seen"] == 20 * 4 * 32 * 2              # two processes trained
    assert (tmp_path / "logs" / f"bb-train-{job}.out").exists()
    assert job_field(job, "JobState", slurm_env) == "COMPLETED"


def test_preempted_job_checkpoints_requeues_and_resumes_in_the_same_run_dir(slurm_env, tmp_path):
    job = submit("train", *TINY, "--max_steps=300", "--eval_every=100", cwd=tmp_path, env=slurm_env,
                 options=["--procs=2", "--time=00:10:00"])
    deadline = time.time() + 120
    while time.time() < deadline:   # preempt once it has trained a while
        rows = [r for m in (tmp_path / "runs").glob("*/metrics.jsonl") for r in rundir.read_metrics(m.parent)]
        if sum("train/loss" in r for r in rows) >= 20:
            break
        time.sleep(0.5)
    status = blueberry("slurm", "status", cwd=tmp_path, env={**slurm_env, "COLUMNS": "400"})
    assert job in status.stdout and "bb-train" in status.stdout and "RUNNING" in status.stdout
    assert f"-j{job}" in status.stdout                             # the job's run dir
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm_env, check=True)
    wait_for(job, slurm_env, log_has=(tmp_path / "logs" / f"bb-train-{job}.out", "restart 1"))

    log = (tmp_path / "logs" / f"bb-train-{job}.out").read_text()
    assert "requeueing" in log and "restart 1" in log
    assert job_field(job, "Restarts", slurm_env) == "1"
    (run,) = (tmp_path / "runs").iterdir()                       # one run dir across both starts
    steps = [r["step"] for r in rundir.read_metrics(run) if "train/loss" in r]
    assert steps == list(range(1, 301))                          # continuous, nothing twice
    summary = rundir.read_summary(run)
    assert summary["status"] == "finished"
    # both starts logged to the same W&B run id (offline: one offline-run-* folder per start)
    offline = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and {name.rsplit("-", 1)[1] for name in offline} == {summary["wandb"]["id"]}
    assert 20 <= int(re.search(r"preempted at step (\d+)", log).group(1)) < 300


def test_sweep_agent_array_shares_one_sweep_dir(slurm_env, tmp_path):
    overrides = [f"--override={a[2:]}" for a in TINY] + ["--override=max_steps=10", "--override=eval_every=5"]
    job = submit("sweep", str(REPO / "sweeps" / "quickstart.yaml"), "--count=1", *overrides, cwd=tmp_path,
                 env=slurm_env, options=["--array=0-1", "--time=00:10:00"])
    wait_for(job, slurm_env)
    sweep = REPO / "sweeps" / "quickstart.yaml"
    shared = default_sweep_dir(yaml.safe_load(sweep.read_text()), sweep, [o.split("=", 1)[1] for o in overrides])
    trials = [json.loads(p.read_text()) for p in (tmp_path / shared).glob("trials/*/trial.json")]
    assert len(trials) == 2
    assert trials[0]["params"] != trials[1]["params"]
    assert {t["status"] for t in trials} == {"finished"}
    assert sorted(t["owner"]["job"] for t in trials) == [f"j{job}_0", f"j{job}_1"]


def test_multinode_sbatch_runs_on_one_node(slurm_env, tmp_path):
    job = submit("multinode", *TINY, "--max_steps=6", "--eval_every=3", cwd=tmp_path, env=slurm_env,
                 options=["--nodes=1", "--procs=2", "--time=00:10:00"])
    wait_for(job, slurm_env)
    log = (tmp_path / "logs" / f"bb-multinode-{job}.out").read_text()
    assert "1 nodes x 2 processes, rendezvous at" in log
    (run,) = (tmp_path / "runs").iterdir()
    summary = rundir.read_summary(run)
    assert summary["status"] == "finished", log[-2000:]
    assert summary["tokens_seen"] == 6 * 4 * 32 * 2


def test_sbatch_rejection_is_one_line_exit_2(slurm_env, tmp_path):
    res = blueberry("slurm", "submit", "train", "--sbatch", "mem=999999999", "--", "--max_steps=1", cwd=tmp_path,
                    env=slurm_env)
    assert res.returncode == 2 and res.stderr.startswith("error: sbatch ") and len(res.stderr.strip().splitlines()) == 1


def test_wandb_agent_array_fails_fast_offline_with_the_reason(slurm_env, tmp_path):
    env = {k: v for k, v in slurm_env.items() if k != "WANDB_API_KEY"}
    job = submit("sweep", "me/proj/abc123", "--count=1", cwd=tmp_path, env=env,
                 options=["--mode=wandb", "--array=0", "--time=00:05:00"])
    wait_for(job, env, timeout=120)
    log = (tmp_path / "logs" / f"bb-sweep-{job}_0.out").read_text()
    assert "error: sweep agent: " in log and "needs the W&B server" in log and "blueberry sweep local" in log
    assert job_field(f"{job}_0", "JobState", env) == "FAILED"

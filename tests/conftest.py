"""Every test runs isolated from the user's machine: W&B offline into a temp dir, a temp token
cache, no API key, no SLURM job variables. Subprocesses inherit this environment."""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from blueberry.rundir import record_digest as run_record  # noqa: F401  (tests import it from here)

_BASE = Path(tempfile.mkdtemp(prefix="blueberry-tests-"))
atexit.register(shutil.rmtree, _BASE, ignore_errors=True)
for _var in ("WANDB_API_KEY", "WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_BASE_URL", "WANDB_PROJECT",
             "WANDB_ENTITY", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
    os.environ.pop(_var, None)
os.environ.update(
    WANDB_MODE="offline", WANDB_SILENT="true",
    WANDB_DIR=str(_BASE / "wandb"), WANDB_DATA_DIR=str(_BASE / "wandb-data"),
    WANDB_CACHE_DIR=str(_BASE / "wandb-cache"), WANDB_CONFIG_DIR=str(_BASE / "wandb-config"),
    BLUEBERRY_CACHE=str(_BASE / "cache"), NETRC=str(_BASE / "no-netrc"),
    TOKENIZERS_PARALLELISM="false",
)

# A model and corpus small enough that a run of a few dozen steps takes seconds on 2 CPU cores.
TINY = ["--d_model=32", "--n_layers=1", "--n_heads=2", "--expert_d_ff=64", "--d_ff=64", "--seq_len=32",
        "--batch_size=4", "--synthetic_docs=300", "--tokenizer=bpe:300", "--eval_batches=2",
        "--warmup_steps=2"]


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`blueberry ARGS` in a fresh interpreter, as a user types it; env values of None unset a variable."""
    merged = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "blueberry.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={k: v for k, v in merged.items() if v is not None})


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in Path(out).iterdir() if p.is_dir())


@pytest.fixture
def one_thread():
    """Tiny tensors: on a busy shared CPU, OpenMP barriers cost more than the threads gain."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model_config(**changes):
    """A small LMConfig for model unit tests (MoE, and MLA dims that fit d_model 32)."""
    import dataclasses

    from blueberry.config import LMConfig

    base = dict(d_model=32, n_heads=4, n_layers=2, d_ff=48, n_experts=4, top_k=2, expert_d_ff=16,
                mla_kv_rank=16, mla_rope_dim=4, mla_q_rank=0)
    return dataclasses.replace(LMConfig(), **{**base, **changes})


@pytest.fixture
def cli(tmp_path):
    def call(*args, env=None, timeout=300):
        return run_cli(*args, cwd=tmp_path, env=env, timeout=timeout)
    call.cwd = tmp_path
    return call


def wandb_offline_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """(summary object, history rows) of the one offline W&B run in a run dir, read back with
    `wandb leet inspect` as a user would."""
    runs = sorted((Path(run_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    wandb = str(Path(sys.executable).with_name("wandb"))
    summary = json.loads(subprocess.run([wandb, "leet", "inspect", "--summary", "--json", str(runs[0])],
                                        capture_output=True, text=True, check=True).stdout)
    records = subprocess.run([wandb, "leet", "inspect", "--json", str(runs[0])],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    history = [json.loads(line)["history"] for line in records if '"type":"history"' in line]
    run_record = next(json.loads(line)["run"] for line in records if '"type":"run"' in line)
    summary["run_group"] = run_record.get("run_group")   # the summary view leaves the group out
    return summary, [{**h["item"], "step": h["step"]["num"]} for h in history]

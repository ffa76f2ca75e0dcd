"""Every test runs isolated from the user's machine: W&B offline into a temp dir, a temp token
cache, no API key, no SLURM job variables. Subprocesses inherit this environment."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_BASE = Path(tempfile.mkdtemp(prefix="blueberry-tests-"))
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
    """`blueberry ARGS` in a fresh interpreter, as a user types it."""
    return subprocess.run([sys.executable, "-m", "blueberry.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in Path(out).iterdir() if p.is_dir())


@pytest.fixture
def cli(tmp_path):
    def call(*args, env=None, timeout=300):
        return run_cli(*args, cwd=tmp_path, env=env, timeout=timeout)
    call.cwd = tmp_path
    return call

"""Two CPU ranks through the real launchers: disjoint data shards, one run dir, one W&B run."""

import json
import subprocess
import sys
from pathlib import Path

from blueberry import rundir
from conftest import TINY, run_dirs, wandb_offline_run

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def test_ranks_read_disjoint_shards(tmp_path):
    out = tmp_path / "rows.json"
    res = subprocess.run([TORCHRUN, "--nproc_per_node=2", str(REPO / "tests" / "shard_probe.py"), str(out)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    rank0, rank1 = (set(map(tuple, rows)) for rows in json.loads(out.read_text()))
    assert len(rank0) == len(rank1) == 24      # 6 batches x 4 windows each, none repeated
    assert not rank0 & rank1


def test_accelerate_launch_two_ranks_makes_one_run_dir_and_one_wandb_run(tmp_path):
    cmd = [ACCELERATE, "launch", "--config_file", str(REPO / "launch" / "cpu-2proc.yaml"), "--main_process_port", "0",
           "-m", "blueberry.cli", "train", "lm", *TINY, "--max_steps=6", "--eval_every=3", "--grad_accum=2"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "runs")
    summary = rundir.read_summary(run)
    assert summary["status"] == "finished" and summary["step"] == 6
    # Both ranks trained: tokens = steps x grad_accum x batch x seq_len x 2 processes.
    assert summary["tokens_seen"] == 6 * 2 * 4 * 32 * 2
    steps = [r["step"] for r in rundir.read_metrics(run) if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]           # one writer: each step logged once
    wandb_offline_run(run)                        # exactly one offline W&B run
    assert res.stderr.count("finished at step 6") == 1

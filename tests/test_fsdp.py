"""FSDP2 on two CPU ranks (gloo), through the real launchers: the same 20 steps as DDP and as one
process, Muon on sharded parameters, no reduce-scatter per micro-batch, no host reads in a step;
sharded checkpoints resumed on 2 ranks and on 1 process, evaluated and consolidated."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from blueberry import rundir
from conftest import TINY, run_dirs

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
STEPS = 20
# Two blocks (two FSDP units besides the root), the expert load all-reduced for the router bias.
COMMON = [*TINY, "--n_layers=2", f"--max_steps={STEPS}", "--eval_every=10", "--bias_update_rate=0.01",
          "--wandb_mode=disabled"]
TOLERANCE = 1e-4


def launch(config: str | None, out: Path, *args: str) -> Path:
    """`blueberry train lm` under `accelerate launch --config_file launch/CONFIG` (2 ranks), or in one
    process when config is None; returns the run dir."""
    prefix = ([ACCELERATE, "launch", "--config_file", str(REPO / "launch" / config), "--main_process_port", "0"]
              if config else [sys.executable])
    # One OpenMP thread per process, as torchrun sets for each rank: on 2 shared cores more threads
    # only wait on each other.
    res = subprocess.run([*prefix, "-m", "blueberry.cli", "train", "lm", *COMMON, f"--out_dir={out}", *args],
                         cwd=out.parent, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = run_dirs(out)
    return run


def curve(run: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in rundir.read_metrics(run) if key in r}


def max_gap(a: dict[int, float], b: dict[int, float]) -> float:
    assert a.keys() == b.keys() and a, (sorted(a), sorted(b))
    return max(abs(a[s] - b[s]) for s in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each run once: 2 ranks x grad_accum 2 under FSDP2 and DDP, and 1 process x grad_accum 4 on the
    same windows in the same order (the sampler deals global batches independently of the world size)."""
    base = tmp_path_factory.mktemp("fsdp")
    made = {}
    for name, config, args in [
        ("fsdp_adamw", "fsdp-cpu-2proc.yaml", ["--grad_accum=2", "--optimizer=adamw", "--save_every=10",
                                               "--async_save=true"]),
        ("ddp_adamw", "cpu-2proc.yaml", ["--grad_accum=2", "--optimizer=adamw"]),
        ("one_adamw", None, ["--grad_accum=4", "--optimizer=adamw"]),
        ("fsdp_muon", "fsdp-cpu-2proc.yaml", ["--grad_accum=2", "--optimizer=muon", "--save_every=10"]),
        ("one_muon", None, ["--grad_accum=4", "--optimizer=muon"]),
    ]:
        made[name] = launch(config, base / name, *args)
    return made


def test_fsdp_adamw_matches_ddp_and_one_process(runs):
    fsdp, ddp, one = runs["fsdp_adamw"], runs["ddp_adamw"], runs["one_adamw"]
    # Really sharded: torch.distributed.checkpoint shards (this run saves asynchronously, fsdp_muon through Accelerate).
    assert (rundir.latest_checkpoint(fsdp) / "dcp").is_dir()   # its saves are asynchronous: one DCP folder
    assert (rundir.latest_checkpoint(runs["fsdp_muon"]) / "pytorch_model_fsdp_0").is_dir()   # Accelerate's, sync
    assert not (rundir.latest_checkpoint(ddp) / "pytorch_model_fsdp_0").exists()
    assert len(curve(fsdp, "train/loss")) == STEPS
    assert max_gap(curve(fsdp, "train/loss"), curve(one, "train/loss")) < TOLERANCE
    assert max_gap(curve(ddp, "train/loss"), curve(one, "train/loss")) < TOLERANCE
    # Clipping over DTensors: the global norm, as DDP computes it from whole gradients.
    assert max_gap(curve(fsdp, "train/grad_norm"), curve(ddp, "train/grad_norm")) < TOLERANCE
    # Evaluation and the all-reduced expert load (router bias) as under DDP (same val windows).
    assert max_gap(curve(fsdp, "val/loss"), curve(ddp, "val/loss")) < TOLERANCE
    assert max_gap(curve(fsdp, "moe/min_share"), curve(ddp, "moe/min_share")) < TOLERANCE
    assert rundir.read_summary(fsdp)["status"] == "finished"


def test_fsdp_muon_matches_one_process(runs):
    fsdp, one = runs["fsdp_muon"], runs["one_muon"]
    assert max_gap(curve(fsdp, "train/loss"), curve(one, "train/loss")) < TOLERANCE
    # Muon moved the weights differently from AdamW: the comparison is not of two AdamW runs.
    assert max_gap(curve(fsdp, "train/loss"), curve(runs["fsdp_adamw"], "train/loss")) > 10 * TOLERANCE


def test_muon_on_sharded_parameters_and_the_trainer_step_under_fsdp(tmp_path):
    out = tmp_path / "probe.json"
    res = subprocess.run([TORCHRUN, "--nproc_per_node=2", str(REPO / "tests" / "fsdp_probe.py"), str(out)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = json.loads(out.read_text())
    for rank in ranks:
        muon = rank["muon"]
        assert muon["max_abs_diff"] < 1e-6 < muon["reference_change"]
        # 4 row-sharded matrices a step: each gathered, and orthogonalised by exactly one owner rank.
        assert muon["gathers"] == 4 * muon["steps"]
        assert muon["ns_2d"] == 2 * muon["steps"]
    # Uneven shards were exercised: 3 experts over 2 ranks, a 1-row matrix that rank 1 holds none of.
    assert [r["muon"]["rows"]["experts3"] for r in ranks] == [2, 1]
    assert [r["muon"]["rows"]["c.weight"] for r in ranks] == [1, 0]

    step = ranks[0]["trainer"]
    assert step["fsdp_units"] >= 3   # two blocks and the root, at least
    # Gradient accumulation: one reduce-scatter per FSDP unit per optimizer step, not per micro-batch.
    assert step["reduce_scatters"] == step["fsdp_units"] and step["grad_accum"] == 3
    assert step["grad_norm_type"] == "Tensor"   # the full norm, not a DTensor of partial norms
    assert ranks[1]["trainer"]["grad_norm"] == step["grad_norm"]
    assert all(r["trainer"]["host_reads"] == [] for r in ranks)

    # Memory: parameters + gradients + optimizer state a rank holds, from its local tensors.
    for rank in ranks:
        held = rank["trainer"]["memory"]
        assert held["fsdp"]["total"] <= 0.55 * held["ddp"]["total"]
        assert held["fsdp"]["optimizer"] > 0 and held["fsdp"]["grads"] > 0   # all three were counted
    held = ranks[0]["trainer"]["memory"]   # rank 0 holds the larger shard of an uneven split
    assert held["fsdp_estimate"] == held["fsdp"] and held["ddp_estimate"] == held["ddp"]


def resume_copy(run: Path, out: Path, config: str | None, *args: str) -> Path:
    """Resume a copy of `run` from its step-10 checkpoint (later checkpoints removed from the copy)."""
    copy = out / run.name
    shutil.copytree(run, copy, symlinks=True)
    for ckpt in (copy / rundir.CHECKPOINTS).iterdir():
        if ckpt.is_symlink():   # best
            ckpt.unlink()
        elif ckpt.name != "step-0000010":
            shutil.rmtree(ckpt)
    assert launch(config, out, f"--resume={copy / rundir.CHECKPOINTS / 'step-0000010'}", *args) == copy
    return copy


def test_sharded_checkpoints_resume_exactly_on_2_ranks_and_on_1_process(runs, tmp_path, cli):
    fsdp = runs["fsdp_muon"]
    step10 = fsdp / rundir.CHECKPOINTS / "step-0000010"
    assert (step10 / "pytorch_model_fsdp_0").is_dir() and (step10 / "optimizer_0").is_dir()
    two = resume_copy(fsdp, tmp_path / "two", "fsdp-cpu-2proc.yaml")
    one = resume_copy(fsdp, tmp_path / "one", None)   # no option: grad_accum 2 -> 4 keeps the global batch
    assert "grad_accum: 4" in (one / rundir.CONFIG).read_text()
    # Steps 11-20 after the resume equal the uninterrupted run's: weights, optimizer state (Muon
    # momentum, AdamW moments), schedule and data position all came back, also in another world size.
    assert max_gap(curve(two, "train/loss"), curve(fsdp, "train/loss")) < TOLERANCE
    assert max_gap(curve(one, "train/loss"), curve(fsdp, "train/loss")) < TOLERANCE
    assert rundir.read_summary(one)["step"] == STEPS
    assert (one / rundir.CHECKPOINTS / "step-0000020" / "model.safetensors").exists()   # saved unsharded

    # evaluate reads the sharded checkpoint as it reads the unsharded one of the resumed process.
    def evaluate(run: Path) -> float:
        res = cli("evaluate", str(run), "--split", "val", "--checkpoint", "latest")   # step 20
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads((run / "eval-val.json").read_text())["metrics"]["val/loss"]

    assert abs(evaluate(fsdp) - evaluate(one)) < TOLERANCE
    res = cli("report", str(fsdp), str(one), "--out", str(tmp_path / "report"), "--no-per-run-figures")
    assert res.returncode == 0 and fsdp.name in res.stdout, res.stderr[-2000:]

    # consolidate: one ordinary state dict with the same weights.
    res = cli("checkpoint", "consolidate", str(fsdp))
    assert res.returncode == 0, res.stderr[-2000:]
    from safetensors.torch import load_file

    merged = load_file(fsdp / rundir.CHECKPOINTS / "step-0000020" / "model.safetensors")
    reference = load_file(one / rundir.CHECKPOINTS / "step-0000020" / "model.safetensors")
    assert merged.keys() == reference.keys()
    assert max((merged[k] - reference[k]).abs().max().item() for k in merged) < TOLERANCE

    # a damaged shard: the run's latest gives way to the newest intact checkpoint, a named one is refused
    damaged = tmp_path / "damaged" / fsdp.name
    shutil.copytree(fsdp, damaged, symlinks=True)
    shard = sorted((damaged / rundir.CHECKPOINTS / "step-0000020" / "pytorch_model_fsdp_0").glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:-7])
    res = cli("checkpoint", "consolidate", str(damaged))
    assert res.returncode == 0 and "step-0000010" in res.stdout, res.stderr[-2000:]
    assert f"latest checkpoint is damaged: {shard}: " in res.stderr
    assert (damaged / rundir.CHECKPOINTS / "step-0000010" / "model.safetensors").exists()
    res = cli("checkpoint", "consolidate", str(shard.parent.parent))
    assert res.returncode == 2 and res.stderr.strip().endswith(f"{shard}: {shard.stat().st_size} bytes, "
                                                               f"{shard.stat().st_size + 7} were written "
                                                               "(truncated or damaged)"), res.stderr


def test_async_fsdp_checkpoints_resume_in_one_process(runs, tmp_path):
    """FSDP2 with async_save: each rank's DTensor shards written by the background writer as one DCP
    checkpoint (dcp/), resumed by one process: steps 11-20 as the uninterrupted 2-rank run."""
    fsdp = runs["fsdp_adamw"]
    step10 = fsdp / rundir.CHECKPOINTS / "step-0000010"
    assert (step10 / "dcp").is_dir() and not (step10 / "pytorch_model_fsdp_0").exists()
    assert len(list((step10 / "dcp").glob("*.distcp"))) == 2 and rundir.read_summary(fsdp)["checkpoints"]["async"]
    one = resume_copy(fsdp, tmp_path / "one", None)
    assert max_gap(curve(one, "train/loss"), curve(fsdp, "train/loss")) < TOLERANCE


def test_memory_command_estimates_per_rank_state(cli):
    res = cli("memory", "--preset", "lm-tiny", "--world-size", "4")
    assert res.returncode == 0, res.stderr
    ddp_row, fsdp_row = (line for line in res.stdout.splitlines() if line.startswith("| lm-tiny"))
    ddp4, fsdp4 = float(ddp_row.split("|")[-2]), float(fsdp_row.split("|")[-2])   # total MiB
    assert 0 < fsdp4 <= 0.3 * ddp4

    from blueberry.config import LMConfig, resolve
    from blueberry.memory import estimate_table

    table = estimate_table(resolve(LMConfig, cli_values={"preset": "lm-tiny"}), 2)
    ddp2, fsdp2 = (float(line.split("|")[-2]) for line in table.splitlines() if line.startswith("| lm-tiny"))
    assert ddp2 == ddp4 and fsdp4 < fsdp2 <= 0.55 * ddp2   # a DDP rank holds everything at any world size
    assert cli("memory", "--world-size", "0").returncode == 2


def test_fsdp_plugin_from_the_launch_config(monkeypatch):
    import torch

    from blueberry.errors import UserError
    from blueberry.train.sharding import fsdp_plugin

    assert fsdp_plugin("bf16") is None   # no FSDP launch config: DDP as before
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    policy = fsdp_plugin("bf16").mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)   # fp32 gradient reduce
    assert fsdp_plugin("no").mixed_precision_policy is None
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(UserError, match="fsdp_version=1"):
        fsdp_plugin("no")

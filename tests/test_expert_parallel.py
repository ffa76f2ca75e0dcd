"""Expert parallelism on two CPU ranks (gloo): the token exchange exact, EP=2 under DDP and FSDP2 equal
to one process gradient by gradient (AdamW and Muon), each rank holding half the experts, and EP
checkpoints resumed 2 -> 2, 2 -> 1 and 1 -> 2, evaluated and consolidated through the real CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blueberry import rundir
from probes import probes
from test_fsdp import curve, launch, max_gap   # the FSDP tests' launcher and curves (2 blocks, 20 steps)

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
LAYOUTS = ["ddp_adamw", "ddp_muon", "fsdp_adamw", "fsdp_muon"]
TOLERANCE = 1e-4   # loss curves of whole runs, as tests/test_fsdp.py


def run_probe(ranks: int, base: Path) -> list[dict]:
    """tests/expert_parallel_probe.py under torchrun: every rank's results (checkpoints go under `base`)."""
    out = base / "probe.json"
    res = subprocess.run([TORCHRUN, f"--nproc_per_node={ranks}", str(REPO / "tests" / "expert_parallel_probe.py"),
                          str(out), str(base)], cwd=base, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """The probe on 2 ranks, once."""
    return run_probe(2, tmp_path_factory.mktemp("ep-probe"))


def test_gloo_all_to_all_uneven_splits_need_the_single_tensor_form(probe):
    for rank in probe:
        found = rank["collectives"]
        assert "invalid tensor size" in found["list_uneven"]   # the list form refuses uneven sizes
        assert found["autograd_values_exact"] and found["autograd_grad_exact"]
    assert [r["collectives"]["received_rows"] for r in probe] == [1, 5]   # rank 0 got nothing from rank 1


def test_dispatch_then_combine_returns_the_rows_and_their_gradient_exactly(probe):
    for rank in probe:
        trip = rank["round_trip"]
        assert trip["rows_back_exact"] and trip["grad_exact"]
        assert trip["arrived_exact"]   # each rank received exactly its experts' rows, expert by expert
        assert trip["tags_exact"]      # and each row came back from the expert it was routed to
    assert [r["round_trip"]["local_counts"] for r in probe] == [[5, 0], [2, 5]]   # expert 1 got no token


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ep2_equals_one_process_gradient_by_gradient(probe, layout):
    for rank in probe:
        run = rank[layout]
        for ep, one in run["losses"]:
            assert ep == pytest.approx(one, rel=1e-5)
        # every gradient the optimizer was handed, 3 steps x 18 parameters, assert_close(rtol 1e-5)
        assert run["grads_compared"] == 54 and run["grad_errors"] == []
        assert run["max_weight_diff"] < 1e-6
        # the load-balancing bias moved, by the same global counts as in one process
        assert run["max_router_bias_diff"] == 0.0 < run["router_bias_moved"]
        # really expert parallel: 2 of the 4 experts here; per MoE layer 3 all-to-alls forward, 2 backward
        assert run["expert_local_rows"] == [2] * 6 and run["all_to_alls_per_step"] == 2 * 5
        assert run["sharded"] == run["other_params_dtensor"] == layout.startswith("fsdp")


def test_ep_under_fsdp2_bf16_casts_the_experts_as_fsdp2_casts_the_rest(probe):
    import math

    for rank in probe:
        run = rank["fsdp_bf16"]
        assert math.isfinite(run["loss"]) and run["expert_weight_dtype"] == "torch.float32"   # fp32 master weights


def test_two_ep_groups_of_two_on_four_ranks_equal_one_process(tmp_path):
    """expert_parallel=2 of 4 ranks: each expert is held by two ranks, whose gradients are all-reduced."""
    ranks = run_probe(4, tmp_path)
    assert len(ranks) == 4
    for rank in ranks:
        for layout in ("ddp_adamw", "fsdp_muon"):
            run = rank[layout]
            assert run["grads_compared"] == 54 and run["grad_errors"] == [] and run["max_weight_diff"] < 1e-6
            assert run["expert_bytes"] * 2 == run["expert_bytes_total"]


def test_muon_orthogonalises_each_local_expert_without_communication(probe):
    for rank in probe:
        # 3 steps x 2 layers x 3 stacks, each a batch of this rank's 2 experts
        assert rank["ddp_muon"]["ns_local_experts"] == rank["fsdp_muon"]["ns_local_experts"] == 18
        assert rank["ddp_muon"]["collectives_in_muon_step"] == 0
        assert rank["fsdp_muon"]["collectives_in_muon_step"] > 0   # FSDP2's row-sharded matrices are gathered
    assert probe[0]["ddp_muon"]["losses"] != probe[0]["ddp_adamw"]["losses"]


@probes("expert_parallel")
def test_each_rank_holds_half_of_the_expert_bytes(probe):
    """Measured from the local tensors: expert_parallel=2 against the same model at expert_parallel=1."""
    for rank in probe:
        for layout in LAYOUTS:
            run = rank[layout]
            assert run["expert_bytes"] * 2 == run["expert_bytes_total"] > 0


@pytest.mark.parametrize("layout, folder", [("ddp_adamw", "dcp"), ("fsdp_adamw", "pytorch_model_fsdp_0")])
def test_an_ep2_checkpoint_loads_into_one_process_with_the_same_logits(probe, layout, folder):
    from blueberry.config import LMConfig
    from blueberry.models.lm import Decoder
    from blueberry.train.checkpoint import formats

    saved = probe[0][layout]["checkpoint"]
    ckpt = Path(saved["run_dir"]) / rundir.CHECKPOINTS / "step-0000003"
    assert folder in saved["files"] and "model.safetensors" not in saved["files"]
    model = Decoder(LMConfig(d_model=32, n_heads=2, n_layers=2, n_experts=4, top_k=2, expert_d_ff=16), 64).eval()
    formats.load_model_weights(model, ckpt)   # EP=2 shards resharded by DCP into whole tensors
    with torch.no_grad():
        logits, _ = model(torch.tensor(saved["tokens"]))
    torch.testing.assert_close(logits, torch.tensor(saved["logits"]), rtol=1e-5, atol=1e-6)
    merged = formats.consolidate(ckpt)   # `blueberry checkpoint consolidate`'s work, from the metadata alone
    from safetensors.torch import load_file

    weights = load_file(merged)
    assert weights["blocks.0.ffn.experts.w_gate"].shape == (4, 16, 32)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items() if k in weights)


# --- the real CLI: EP runs, resumed in other layouts -----------------------------------------------

@pytest.fixture(scope="module")
def ep_run(tmp_path_factory):
    """20 steps of `blueberry train lm --expert_parallel=2` on 2 ranks (DDP for the rest), Muon,
    checkpoints at 10 and 20."""
    return launch("cpu-2proc.yaml", tmp_path_factory.mktemp("ep") / "ep", "--grad_accum=2", "--optimizer=muon",
                  "--save_every=10", "--expert_parallel=2")


def copy_at(run: Path, out: Path, step: int) -> Path:
    """A copy of `run` holding only its checkpoint of `step`; returns that checkpoint."""
    copy = out / run.name
    shutil.copytree(run, copy, symlinks=True)
    for ckpt in (copy / rundir.CHECKPOINTS).iterdir():
        if ckpt.is_symlink() or ckpt.name != f"step-{step:07d}":
            shutil.rmtree(ckpt) if not ckpt.is_symlink() else ckpt.unlink()
    return copy / rundir.CHECKPOINTS / f"step-{step:07d}"


def test_ep_checkpoints_resume_2_to_2_to_1_and_back_to_2(ep_run, tmp_path, cli):
    step10 = ep_run / rundir.CHECKPOINTS / "step-0000010"
    assert (step10 / "dcp").is_dir() and not (step10 / "model.safetensors").exists()   # synchronous, DCP
    assert len(curve(ep_run, "train/loss")) == 20 and rundir.read_summary(ep_run)["status"] == "finished"

    # 2 -> 2: steps 11-20 equal the uninterrupted run's
    ckpt = copy_at(ep_run, tmp_path / "two", 10)
    two = launch("cpu-2proc.yaml", tmp_path / "two", f"--resume={ckpt}", "--expert_parallel=2")
    assert max_gap(curve(two, "train/loss"), curve(ep_run, "train/loss")) < TOLERANCE

    # 2 -> 1: one process, unsharded, steps 11-15 (the global batch kept: grad_accum 2 -> 4)
    ckpt = copy_at(ep_run, tmp_path / "one", 10)
    one = launch(None, tmp_path / "one", f"--resume={ckpt}", "--expert_parallel=1", "--stop_at_step=15")
    step15 = one / rundir.CHECKPOINTS / "step-0000015"
    assert (step15 / "model.safetensors").exists() and not (step15 / "dcp").exists()
    losses = curve(ep_run, "train/loss")
    assert max_gap(curve(one, "train/loss"), {s: losses[s] for s in range(1, 16)}) < TOLERANCE

    # 1 -> 2: the unsharded checkpoint spread over 2 EP ranks, steps 16-20
    back = launch("cpu-2proc.yaml", tmp_path / "one", f"--resume={step15}", "--expert_parallel=2")
    assert back == one and max_gap(curve(back, "train/loss"), losses) < TOLERANCE
    assert (back / rundir.CHECKPOINTS / "step-0000020" / "dcp").is_dir()

    # evaluate reads an EP checkpoint in one process; consolidate writes its whole experts
    def evaluate(run: Path) -> float:
        res = cli("evaluate", str(run), "--split", "val", "--checkpoint", "latest")
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads((run / "eval-val.json").read_text())["metrics"]["val/loss"]

    assert abs(evaluate(ep_run) - evaluate(back)) < TOLERANCE
    res = cli("checkpoint", "consolidate", str(ep_run))
    assert res.returncode == 0, res.stderr[-2000:]
    from safetensors.torch import load_file

    merged = load_file(ep_run / rundir.CHECKPOINTS / "step-0000020" / "model.safetensors")
    assert merged["blocks.0.ffn.experts.w_gate"].shape == (4, 64, 32)


def test_bad_degrees_are_one_line_before_any_work(cli):
    from blueberry.config import LMConfig
    from blueberry.errors import UserError
    from blueberry.train.parallel import check_degree

    for args, message in [(["--expert_parallel=3"], "expert_parallel=3: must divide n_experts (4)"),
                          (["--expert_parallel=2", "--n_experts=0"], "expert_parallel=2: must divide n_experts (0)"),
                          (["--expert_parallel=2"], "expert_parallel=2: must divide the number of processes (1)")]:
        res = cli("train", "lm", "--out_dir=runs", *args)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
        assert not list((cli.cwd / "runs").glob("*"))   # no run dir
    check_degree(LMConfig(expert_parallel=2), 4)   # two groups of two: allowed
    with pytest.raises(UserError, match="expert_parallel=4: must divide the number of processes"):
        check_degree(LMConfig(expert_parallel=4), 6)

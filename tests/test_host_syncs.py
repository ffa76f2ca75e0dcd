"""A training step reads nothing back from the device: on a GPU every such read (`.item()`, `if t.any()`,
`.tolist()`, `.cpu()`, `nonzero`, ...) stalls the host until the queued kernels finish.

CUDA's own check (torch.cuda.set_sync_debug_mode) needs a GPU, so the same reads are counted here at
the Python level on the CPU: a run of 6 steps must make exactly as many as a run of 2 steps, since
both log, evaluate and checkpoint the same number of times. Exempt are tensors that live on the CPU
by design, where reading them never waits for a GPU: the optimizer's `step` counters (unless fused)
and the data sampler's permutations (they pick window indices before a batch goes to the device).
The MoE layers run the path a GPU takes (the grouped GEMM): the CPU's own default, the per-expert loop,
reads each layer's expert offsets once per forward, which costs nothing where there is no queue
(tests/test_moe_dispatch.py counts that read).
"""

import traceback
from collections import Counter

import pytest
import torch

import blueberry.train.trainer as trainer
from blueberry.models.moe import Experts
from blueberry.config import ScanlineConfig
from test_fields_reach_code import train_inprocess

TENSOR_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy", "nonzero")
TORCH_READS = ("nonzero", "unique", "bincount", "masked_select")
HOST_SIDE_FILES = ("packing.py",)


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "blueberry" in frame.filename or "accelerate" in frame.filename or "torch/optim" in frame.filename:
            return f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}"
    return "?"


def _count_reads(monkeypatch, tmp_path, steps: int, **changes) -> Counter:
    reads: Counter = Counter()
    optimizers = []
    build = trainer.build_optimizer

    def capture(model, cfg):
        optimizers.append(build(model, cfg))
        return optimizers[-1]

    def exempt(t) -> bool:
        return any(t is s.get("step") for opt in optimizers for s in opt.state.values())

    def counting(name, original):
        def read(*args, **kwargs):
            where = _caller()
            if not (isinstance(args[0], torch.Tensor) and exempt(args[0])) and \
                    not where.startswith(HOST_SIDE_FILES):
                reads[f"{name} at {where}"] += 1
            return original(*args, **kwargs)
        return read

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "build_optimizer", capture)
        patch.setattr(Experts, "grouped", True)       # a GPU's default dispatch path
        for name in TENSOR_READS:
            patch.setattr(torch.Tensor, name, counting(f"Tensor.{name}", getattr(torch.Tensor, name)))
        for name in TORCH_READS:
            patch.setattr(torch, name, counting(f"torch.{name}", getattr(torch, name)))
        train_inprocess(tmp_path / f"steps{steps}", max_steps=steps, log_every=100, eval_every=100, **changes)
    return reads


SCANLINE = ScanlineConfig(n_images=24, image_size=32, lines_per_sample=4, line_stride=4, model="sequential",
                          d_model=16, n_heads=2, n_layers=1, d_ff=32, cnn_channels=8, batch_size=8)


@pytest.mark.parametrize("changes", [dict(optimizer="adamw", grad_accum=2, bias_update_rate=0.01),
                                     dict(optimizer="muon", z_loss_weight=0.01, n_shared_experts=1),
                                     dict(base=SCANLINE, optimizer="muon")],
                         ids=["adamw-accum-bias", "muon-shared-zloss", "scanline-muon"])
def test_training_steps_read_nothing_back_from_the_device(monkeypatch, tmp_path, changes):
    short = _count_reads(monkeypatch, tmp_path, 2, **changes)
    long = _count_reads(monkeypatch, tmp_path, 6, **changes)
    assert sum(short.values()) > 0            # the counting works: logging and evaluation do read
    assert long == short, f"reads that grow with the number of steps: {long - short}"

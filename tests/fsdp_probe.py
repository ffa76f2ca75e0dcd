"""Run under torchrun with 2 ranks (gloo); writes a JSON object to argv[1] (rank 0).

1. HybridMuon on FSDP2-sharded parameters against the same optimizer on an unsharded copy of the
   model in each process, fed the same gradients: the largest absolute difference after the steps,
   and per rank the Newton–Schulz calls on whole 2-D matrices, the gathers made, the rows held.
2. The trainer's optimizer_step on the real decoder, prepared by Accelerate's FSDP2 plugin as an FSDP
   launch config would (blueberry.train.sharding): FSDP units, gradient reduce-scatters per step of
   grad_accum micro-batches, the gradient norm's type, and tensor reads back to the host; the bytes
   of parameters, gradients and optimizer state a rank holds, sharded and unsharded.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import blueberry.optim.muon as muon
from blueberry.optim.muon import HybridMuon

STEPS = 3


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 5, bias=False)        # 5 rows over 2 ranks: 3 + 2
        self.b = nn.Linear(5, 6)                    # a bias for the AdamW group
        self.c = nn.Linear(6, 1, bias=False)        # 1 row: rank 1 holds none of it
        self.d = nn.Linear(8, 7, bias=False)
        self.experts4 = nn.Parameter(torch.randn(4, 6, 8))   # E divides the world size
        self.experts3 = nn.Parameter(torch.randn(3, 6, 8))   # E does not

    def matrices(self):
        return [p for p in self.parameters() if p.ndim >= 2]


def optimizer(model):
    return HybridMuon([{"use_muon": True, "params": model.matrices(), "lr": 0.05, "weight_decay": 0.1},
                       {"use_muon": False, "params": [model.b.bias], "lr": 0.01}])


def muon_check(rank: int) -> dict:
    torch.manual_seed(0)
    reference = Toy()
    sharded = Toy()
    sharded.load_state_dict(reference.state_dict())
    for module in (sharded.a, sharded.b, sharded.c, sharded.d):
        fully_shard(module)
    fully_shard(sharded)
    ref_opt, shard_opt = optimizer(reference), optimizer(sharded)

    ns_calls, gathers = [0], [0]
    ns, gather = muon.zeropower_via_newtonschulz, dist.gather

    def counting_ns(G, *args, **kwargs):
        ns_calls[0] += G.ndim == 2 and tuple(G.shape) in {tuple(p.shape) for p in reference.matrices()}
        return ns(G, *args, **kwargs)

    def counting_gather(*args, **kwargs):
        gathers[0] += 1
        return gather(*args, **kwargs)

    for step in range(STEPS):
        gen = torch.Generator().manual_seed(100 + step)
        grads = {name: torch.randn(p.shape, generator=gen) for name, p in reference.named_parameters()}
        for name, p in reference.named_parameters():
            p.grad = grads[name].clone()
        ref_opt.step()
        for name, p in sharded.named_parameters():
            chunks = grads[name].chunk(2)   # FSDP2's Shard(0): torch.chunk rows, the last ranks may get none
            local = chunks[rank] if rank < len(chunks) else grads[name][:0]
            p.grad = DTensor.from_local(local.clone(), p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
        muon.zeropower_via_newtonschulz, dist.gather = counting_ns, counting_gather
        try:
            shard_opt.step()
        finally:
            muon.zeropower_via_newtonschulz, dist.gather = ns, gather

    sharded_full = {name: p.full_tensor() for name, p in sharded.named_parameters()}
    diff = max((sharded_full[name] - p).abs().max().item() for name, p in reference.named_parameters())
    rows = {name: p.to_local().shape[0] for name, p in sharded.named_parameters()}
    torch.manual_seed(0)
    initial = Toy()
    change = max((p - initial.state_dict()[name]).abs().max().item() for name, p in reference.named_parameters())
    return {"max_abs_diff": diff, "reference_change": change, "steps": STEPS,
            "ns_2d": ns_calls[0], "gathers": gathers[0], "rows": rows}


TENSOR_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


def trainer_step_check(grad_accum: int = 3) -> dict:
    """optimizer_step as the trainer runs it, on the decoder sharded by Accelerate's FSDP2 plugin."""
    import traceback
    from types import SimpleNamespace

    from torch.distributed.fsdp import FSDPModule

    from blueberry.config import LMConfig
    from blueberry.models.moe import Experts
    from blueberry.tasks.lm import LMTask
    from blueberry.train import trainer

    Experts.grouped = True   # the grouped GEMM a GPU runs (the CPU's own per-expert loop reads offsets)

    os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP",
                      FSDP_RESHARD_AFTER_FORWARD="true", FSDP_STATE_DICT_TYPE="SHARDED_STATE_DICT")
    cfg = LMConfig(d_model=32, n_heads=2, n_layers=2, n_experts=4, top_k=2, expert_d_ff=16, optimizer="muon",
                   grad_accum=grad_accum, bias_update_rate=0.01)
    task = LMTask()
    accelerator = trainer.make_accelerator(cfg)
    data = SimpleNamespace(payload={"vocab_size": 64})
    model, optimizer, scheduler, _ = trainer.build_training(cfg, task, data, accelerator)
    units = sum(isinstance(m, FSDPModule) for m in model.modules())
    gen = torch.Generator().manual_seed(1 + accelerator.process_index)
    def batch():
        tokens = torch.randint(0, 64, (2, 9), generator=gen)
        return tokens[:, :-1], tokens[:, 1:]

    batches = iter(batch, None)
    trainer.optimizer_step(cfg, task, accelerator, model, optimizer, scheduler, batches, {})   # warm-up: lazy inits

    reduce_scatters, reads = [0], []
    reduce_scatter = dist.reduce_scatter_single

    def counting_reduce_scatter(*args, **kwargs):
        reduce_scatters[0] += 1
        return reduce_scatter(*args, **kwargs)

    def counting(name, original):
        def read(*args, **kwargs):
            frames = [f.filename for f in traceback.extract_stack()[:-1]
                      if "blueberry" in f.filename or "accelerate" in f.filename or "torch/optim" in f.filename]
            if frames and "torch/optim" not in frames[-1]:   # torch's optimizers keep CPU step counters
                reads.append(f"{name} at {frames[-1].rsplit('/', 2)[-1]}")
            return original(*args, **kwargs)
        return read

    originals = {name: getattr(torch.Tensor, name) for name in TENSOR_READS}
    dist.reduce_scatter_single = counting_reduce_scatter
    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(name, original))
    try:
        grad_norm, _ = trainer.optimizer_step(cfg, task, accelerator, model, optimizer, scheduler, batches, {})
    finally:
        dist.reduce_scatter_single = reduce_scatter
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return {"fsdp_units": units, "grad_accum": grad_accum, "reduce_scatters": reduce_scatters[0],
            "grad_norm_type": type(grad_norm).__name__, "grad_norm": float(grad_norm), "host_reads": reads,
            "memory": memory_check(cfg, task, data, accelerator, model, optimizer, batches)}


def memory_check(cfg, task, data, accelerator, model, optimizer, batches) -> dict:
    """Bytes of parameters, gradients (after a backward) and optimizer state this rank holds under
    FSDP2, and what the same model holds unsharded (as every DDP rank does); with the estimates."""
    from blueberry import memory
    from blueberry.optim.build import build_optimizer

    def state_after_backward(model, optimizer, backward):
        loss, _ = task.train_loss(model, next(batches), cfg)
        backward(loss)
        return memory.measure(model, optimizer)

    unsharded = task.build_model(cfg, data)
    unsharded_opt = build_optimizer(unsharded, cfg)
    state_after_backward(unsharded, unsharded_opt, lambda loss: loss.backward())
    unsharded_opt.step()   # the optimizer state exists from the first step on
    world = accelerator.num_processes
    return {"fsdp": state_after_backward(model, optimizer, accelerator.backward).as_dict(),
            "ddp": state_after_backward(unsharded, unsharded_opt, lambda loss: loss.backward()).as_dict(),
            "fsdp_estimate": memory.estimate(model, cfg.optimizer, world, sharded=True).as_dict(),
            "ddp_estimate": memory.estimate(unsharded, cfg.optimizer, world, sharded=False).as_dict()}


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    report_and_exit({"muon": muon_check(rank), "trainer": trainer_step_check()}, out_path)


def report_and_exit(result: dict, out_path: str) -> None:
    """Rank 0 writes every rank's `result` to out_path as one JSON list; then the ranks leave (a probe's end)."""
    rank = dist.get_rank()
    report = [None] * dist.get_world_size()
    dist.all_gather_object(report, result)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(report, f)
    dist.barrier()
    dist.destroy_process_group()
    # torch's gloo teardown can abort at interpreter exit after all work is done (NOTES.md).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])

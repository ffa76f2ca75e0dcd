"""Run under torchrun with 2 ranks (gloo): python expert_parallel_probe.py OUT.json CKPT_DIR.
Rank 0 writes every rank's results to OUT.json; CKPT_DIR receives two run dirs with a checkpoint each.
With 4 ranks it runs check 3 alone, at expert_parallel=2 (two EP groups that are replicas).

1. collectives: what gloo does with torch's all-to-alls (uneven splits, empty splits, autograd).
2. round_trip: the token exchange with identity experts, then with experts that tag their rows.
3. parity: the trainer's own step (make_accelerator, build_training, optimizer_step) with
   expert_parallel=2 under DDP and under FSDP2, AdamW and Muon, against one process running both
   ranks' micro-batches: the loss, every gradient the optimizer is handed, the weights after 3 steps.
4. memory: the bytes of expert parameters each rank holds, against the model's total.
5. checkpoint: each layout's EP model saved by the trainer's Checkpointer, and its logits on a fixed batch
   (the test loads the checkpoint into one process and compares).
6. fsdp_bf16: one step of EP + FSDP2 with mixed_precision=bf16.
"""

import contextlib
import dataclasses
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

from fsdp_probe import report_and_exit   # tests/ is the script's folder: on sys.path

STEPS = 3
VOCAB = 64
FSDP_ENV = dict(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP",
                FSDP_RESHARD_AFTER_FORWARD="true", FSDP_STATE_DICT_TYPE="SHARDED_STATE_DICT")


def collectives_check(rank: int) -> dict:
    """gloo and torch's all-to-alls on 2 ranks: the list form with uneven sizes, and the functional
    autograd form with uneven and empty splits (values and input gradients, both exact)."""
    from torch.distributed._functional_collectives import all_to_all_single_autograd

    found = {}
    rows = [[1, 3], [0, 2]]   # rows[s][d]: rows rank s sends to rank d; rank 1 sends rank 0 nothing
    try:
        out = [torch.empty(rows[s][rank]) for s in range(2)]
        dist.all_to_all(out, [torch.full((rows[rank][d],), 10.0 * rank + d) for d in range(2)])
        found["list_uneven"] = "ok"
    except RuntimeError as e:
        found["list_uneven"] = str(e).splitlines()[0]

    def sent_by(s):
        return torch.arange(sum(rows[s]) * 3, dtype=torch.float32).reshape(-1, 3) + 100 * s

    x = sent_by(rank).requires_grad_()
    y = all_to_all_single_autograd(x, [rows[s][rank] for s in range(2)], rows[rank], dist.group.WORLD) * 1.0
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(rank))
    (y * g).sum().backward()
    gs = [None, None]   # every rank's output gradient, to know what x's gradient must be
    dist.all_gather_object(gs, g)
    expected = torch.cat([sent_by(s)[sum(rows[s][:rank]):][:rows[s][rank]] for s in range(2)])
    expected_grad = torch.cat([gs[d][sum(rows[s][d] for s in range(rank)):][:rows[rank][d]] for d in range(2)])
    found["autograd_values_exact"] = torch.equal(y.detach(), expected)
    found["autograd_grad_exact"] = torch.equal(x.grad, expected_grad)
    found["received_rows"] = y.shape[0]
    return found


def round_trip_check(rank: int) -> dict:
    """Identity experts: dispatch -> combine gives the rows back exactly, and their gradient exactly.
    Tagging experts (rows times expert id + 1): each row reached the rank and expert it was routed to."""
    from blueberry.models.expert_parallel import TokenExchange

    n_experts, width = 4, 5
    # rows per expert on each rank: expert 1 gets none from anyone; rank 1 sends rank 1's experts only one row
    counts = torch.tensor([[3, 0, 1, 5], [2, 0, 1, 0]][rank])
    gen = torch.Generator().manual_seed(10 + rank)
    rows = torch.randn(int(counts.sum()), width, generator=gen).requires_grad_()
    exchange = TokenExchange(dist.group.WORLD, n_experts)
    arrived, local_counts, route = exchange.dispatch(rows, counts)
    back = exchange.combine(arrived, route)
    g = torch.randn(back.shape, generator=gen)
    (back * g).sum().backward()
    # what this rank's experts must have received: every rank's rows of those experts, expert-major
    everyone = [None, None]
    dist.all_gather_object(everyone, (rows.detach(), counts))
    local = range(rank * exchange.n_local, (rank + 1) * exchange.n_local)
    expected = torch.cat([src_rows[int(src_counts[:e].sum()):][:int(src_counts[e])]
                          for e in local for src_rows, src_counts in everyone])

    tagged_rows = rows.detach().clone().requires_grad_()
    arrived_again, _, route = exchange.dispatch(tagged_rows, counts)
    expert_id = torch.repeat_interleave(torch.arange(exchange.n_local) + rank * exchange.n_local, local_counts)
    tagged = exchange.combine(arrived_again * (expert_id + 1).unsqueeze(-1), route)
    own_expert = torch.repeat_interleave(torch.arange(n_experts), counts)
    return {"rows_back_exact": torch.equal(back.detach(), rows.detach()), "grad_exact": torch.equal(rows.grad, g),
            "arrived_exact": torch.equal(arrived.detach(), expected),
            "local_counts": local_counts.tolist(),
            "tags_exact": torch.equal(tagged.detach(), rows.detach() * (own_expert + 1).unsqueeze(-1))}


class OneProcess:
    """What trainer.optimizer_step and the task ask of Accelerate, for the one-process reference."""
    num_processes = 1

    def backward(self, loss):
        loss.backward()

    def no_sync(self, model):
        return contextlib.nullcontext()

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def unwrap_model(self, model):
        return model

    def reduce(self, t, op):
        return t


def full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def prepared(layout: str, **fields):
    """(cfg, task, data, accelerator, model, optimizer, scheduler) as the trainer builds them for a
    tiny MoE at expert_parallel=2 under `layout` (ddp | fsdp): a fresh Accelerator in this process."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    from blueberry.config import LMConfig
    from blueberry.models.moe import Experts
    from blueberry.tasks.lm import LMTask
    from blueberry.train import trainer

    AcceleratorState._reset_state(reset_partial_state=True)   # a new Accelerator for each layout in one process
    for key, value in FSDP_ENV.items():
        if layout == "fsdp":
            os.environ[key] = value
        else:
            os.environ.pop(key, None)
    # The grouped GEMM path in one of the layouts (a GPU's default), the CPU's loop in the other.
    Experts.grouped = layout == "fsdp"
    cfg = LMConfig(d_model=32, n_heads=2, n_layers=2, n_experts=4, top_k=2, expert_d_ff=16, bias_update_rate=0.01,
                   z_loss_weight=0.001, grad_clip=1.0, warmup_steps=1, max_steps=10, expert_parallel=2, **fields)
    task, data = LMTask(), SimpleNamespace(payload={"vocab_size": VOCAB})
    accelerator = trainer.make_accelerator(cfg)
    set_seed(cfg.seed)
    return cfg, task, data, accelerator, *trainer.build_training(cfg, task, data, accelerator)[:3]


def parity_check(layout: str, optimizer: str, rank: int, world: int, ckpt_root: Path | None) -> dict:
    from accelerate.utils import set_seed
    from torch.utils._python_dispatch import TorchDispatchMode

    import blueberry.optim.muon as muon
    from blueberry.models.moe import Experts
    from blueberry.optim.build import build_optimizer
    from blueberry.optim.schedules import build_scheduler
    from blueberry.train import sharding, trainer

    cfg, task, data, accelerator, model, opt, scheduler = prepared(layout, optimizer=optimizer)
    degree = cfg.expert_parallel
    core = accelerator.unwrap_model(model)
    set_seed(cfg.seed)
    one_cfg = dataclasses.replace(cfg, expert_parallel=1, grad_accum=world)
    reference = task.build_model(one_cfg, data)
    ref_opt = build_optimizer(reference, one_cfg)
    ref_scheduler = build_scheduler(ref_opt, one_cfg)

    handed = {}
    getattr(opt, "optimizer", opt).register_step_pre_hook(
        lambda *_: handed.update(ep={n: full(p.grad).clone() for n, p in core.named_parameters()}))
    ref_opt.register_step_pre_hook(
        lambda *_: handed.update(one={n: p.grad.clone() for n, p in reference.named_parameters()}))

    gen = torch.Generator().manual_seed(5)
    windows = [torch.randint(0, VOCAB, (2, 9), generator=gen) for _ in range(STEPS * world)]
    batch = lambda i: (windows[i][:, :-1], windows[i][:, 1:])   # noqa: E731

    counts = {"ns_local_experts": 0, "collectives_in_muon_step": 0, "all_to_alls_per_step": 0}
    ns = muon.zeropower_via_newtonschulz

    def counting_ns(G, *args, **kwargs):
        counts["ns_local_experts"] += G.ndim == 3 and G.shape[0] == cfg.n_experts // degree
        return ns(G, *args, **kwargs)

    class Collectives(TorchDispatchMode):
        """Counts collectives however they are issued (c10d or functional ops)."""
        def __init__(self, key):
            super().__init__()
            self.key = key

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func)
            if "c10d" in name and not name.startswith("_c10d_functional.wait_tensor"):
                if self.key != "all_to_alls_per_step" or "all_to_all" in name or "alltoall" in name:
                    counts[self.key] += 1
            return func(*args, **(kwargs or {}))

    inner = getattr(opt, "optimizer", opt)
    muon_step = getattr(inner, "_muon_step", None)

    def counted_muon_step(group):
        muon.zeropower_via_newtonschulz = counting_ns
        try:
            with Collectives("collectives_in_muon_step"):
                return muon_step(group)
        finally:
            muon.zeropower_via_newtonschulz = ns

    if optimizer == "muon":
        inner._muon_step = counted_muon_step
    losses, grad_errors = [], []
    for step in range(STEPS):
        parts = {}
        with Collectives("all_to_alls_per_step") if step == 0 else contextlib.nullcontext():
            trainer.optimizer_step(cfg, task, accelerator, model, opt, scheduler,
                                   iter([batch(step * world + rank)]), parts)
        ref_parts = {}
        trainer.optimizer_step(one_cfg, task, OneProcess(), reference, ref_opt, ref_scheduler,
                               iter([batch(step * world + r) for r in range(world)]), ref_parts)
        loss = accelerator.reduce(parts["loss"].reshape(1), "mean")   # the logged loss: the ranks' mean
        losses.append([loss.item(), ref_parts["loss"].item()])
        for name, one in handed["one"].items():
            try:
                torch.testing.assert_close(handed["ep"][name], one, rtol=1e-5, atol=1e-7)
            except AssertionError as e:
                grad_errors.append(f"step {step} {name}: {str(e).splitlines()[-1]}")
    weights = max((full(p).detach() - reference.get_parameter(n)).abs().max().item() for n, p in core.named_parameters())
    bias = max((a.router.bias - b.router.bias).abs().max().item() for a, b in zip(core.moe_layers, reference.moe_layers))
    expert_params = [p for m in core.modules() if isinstance(m, Experts) for p in m.parameters()]
    result = {
        "losses": losses, "grad_errors": grad_errors, "grads_compared": len(handed["one"]) * STEPS,
        "max_weight_diff": weights, "max_router_bias_diff": bias,
        "router_bias_moved": max(m.router.bias.abs().max().item() for m in core.moe_layers),
        "sharded": sharding.is_sharded(accelerator),
        "other_params_dtensor": type(core.embed.weight).__name__ == "DTensor",
        "expert_local_rows": [p.to_local().shape[0] for p in expert_params],
        "expert_bytes": sum(p.to_local().numel() * p.element_size() for p in expert_params),
        "expert_bytes_total": sum(p.numel() * p.element_size() for m in reference.modules() if isinstance(m, Experts)
                                  for p in m.parameters()),
        **counts,
    }
    if ckpt_root is not None:
        result["checkpoint"] = save_and_forward(accelerator, model, core, ckpt_root / f"{layout}-{optimizer}")
    dist.barrier()
    return result


def bf16_check() -> dict:
    """FSDP2's bf16 policy casts the blocks it manages; the EP experts it does not manage must follow."""
    from blueberry.train import trainer

    cfg, task, _, accelerator, model, opt, scheduler = prepared("fsdp", mixed_precision="bf16")
    tokens = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    parts = {}
    trainer.optimizer_step(cfg, task, accelerator, model, opt, scheduler, iter([(tokens[:, :-1], tokens[:, 1:])]), parts)
    experts = accelerator.unwrap_model(model).blocks[0].ffn.experts
    return {"loss": parts["loss"].item(), "expert_weight_dtype": str(experts.w_gate.dtype)}


def save_and_forward(accelerator, model, core, run_dir: Path) -> dict:
    """The trainer's Checkpointer saves step 3; the EP model's logits on a fixed batch (every rank forwards)."""
    from blueberry.train.checkpoint import TrainerState
    from blueberry.train.checkpoint.manager import Checkpointer

    state = TrainerState()
    state.step = STEPS
    accelerator.register_for_checkpointing(state)
    checkpointer = Checkpointer(accelerator, run_dir, state, keep_last=1)
    checkpointer.save(STEPS)
    checkpointer.close()
    x = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(99))
    model.eval()
    with torch.no_grad():
        logits, _ = model(x)
    return {"run_dir": str(run_dir), "tokens": x.tolist(), "logits": logits.tolist(),
            "files": sorted(p.name for p in (run_dir / "checkpoints" / f"step-{STEPS:07d}").iterdir())}


def main(out_path: str, ckpt_root: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if world == 2:
        result = {"collectives": collectives_check(rank), "round_trip": round_trip_check(rank)}
        for layout in ("ddp", "fsdp"):
            for optimizer in ("adamw", "muon"):
                root = Path(ckpt_root) if optimizer == "adamw" else None   # one checkpoint per layout
                result[f"{layout}_{optimizer}"] = parity_check(layout, optimizer, rank, world, root)
        result["fsdp_bf16"] = bf16_check()
    else:   # 4 ranks: two EP groups of 2, replicas of each other (their expert gradients all-reduced)
        result = {f"{layout}_{optimizer}": parity_check(layout, optimizer, rank, world, None)
                  for layout, optimizer in (("ddp", "adamw"), ("fsdp", "muon"))}
    report_and_exit(result, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

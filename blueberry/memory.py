"""Per-rank memory of a run's training state: parameters, gradients and optimizer state.

Estimated from the parameter shapes for DDP (every rank holds everything), FSDP2 (every tensor
split on dim 0 in torch.chunk rows) and expert parallelism (each rank holds 1/EP of every MoE layer's
experts, the rest as under DDP or FSDP2), and measured from the local tensors a rank really holds.
Activations, all-gathered parameters in flight and allocator slack come on top; they depend on the
batch, not on the world size.
"""

from __future__ import annotations

from dataclasses import dataclass

from blueberry.config import bpe_size

KINDS = ("params", "grads", "optimizer")


@dataclass(frozen=True)
class StateBytes:
    params: int
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer

    def as_dict(self) -> dict[str, int]:
        return {"params": self.params, "grads": self.grads, "optimizer": self.optimizer, "total": self.total}


def _rows_on_rank0(shape, world_size: int) -> int:
    """Elements of the largest dim-0 shard (rank 0's): torch.chunk gives ceil(rows / world) rows."""
    rows = -(-shape[0] // world_size) if shape else 1
    rest = 1
    for d in shape[1:]:
        rest *= d
    return rows * rest


def estimate(model, optimizer_name: str, world_size: int, sharded: bool, expert_parallel: int = 1) -> StateBytes:
    """Rank 0's bytes of fp32 parameters, gradients and optimizer state under DDP or FSDP2, with the
    experts spread over `expert_parallel` ranks (train/parallel.py: whole experts, never FSDP-sharded).

    Optimizer state per element as optim.build.state_copies. `model` may live on the meta device.
    """
    from blueberry.models.moe import Experts
    from blueberry.optim.build import partition_params, state_copies

    parts = partition_params(model)
    per_elem = 4   # fp32 master weights, gradients and state, also under bf16 mixed precision
    experts = {id(p) for m in model.modules() if isinstance(m, Experts) for p in m.parameters()}

    def size(p) -> int:
        if expert_parallel > 1 and id(p) in experts:
            return p.numel() // expert_parallel   # a DTensor's numel is the whole stack's
        return _rows_on_rank0(tuple(p.shape), world_size) if sharded else p.numel()

    params = sum(size(p) for kind in parts.values() for p in kind)
    state = sum(state_copies(kind, optimizer_name) * size(p) for kind, ps in parts.items() for p in ps)
    return StateBytes(params * per_elem, params * per_elem, state * per_elem)


def measure(model, optimizer) -> StateBytes:
    """This rank's bytes of parameters, gradients and optimizer-state tensors, from the local
    tensors (a DTensor counts its shard). Gradients must still be there (after backward)."""
    import torch

    def local_bytes(t) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    params = list(model.parameters())
    grads = sum(local_bytes(p.grad) for p in params if p.grad is not None)
    inner = getattr(optimizer, "optimizer", optimizer)
    state = sum(local_bytes(v) for s in inner.state.values() for v in s.values()
                if isinstance(v, torch.Tensor) and v.ndim > 0)   # scalar step counters are noise
    return StateBytes(sum(local_bytes(p) for p in params), grads, state)


def format_table(rows: list[tuple[str, StateBytes]]) -> str:
    """Markdown table of MiB per rank."""
    lines = ["| setting | params MiB | grads MiB | optimizer MiB | total MiB |", "|---|---:|---:|---:|---:|"]
    for name, b in rows:
        lines.append(f"| {name} | " + " | ".join(f"{v / 2**20:.2f}" for v in (b.params, b.grads, b.optimizer, b.total))
                     + " |")
    return "\n".join(lines)


def lm_vocab_size(tokenizer: str) -> int:
    """The vocabulary a run's tokenizer spec gives: bpe:N -> N, else the pretrained tokenizer's."""
    if bpe_size(tokenizer) is not None:
        return bpe_size(tokenizer)
    from blueberry.data.tokenizer import pretrained

    return pretrained(tokenizer).vocab_size


def estimate_table(cfg, world_size: int, vocab_size: int | None = None, expert_parallel: int | None = None) -> str:
    """`blueberry memory`: rank 0's estimated training state under DDP and FSDP2 at `world_size`, and
    with expert parallelism when `expert_parallel` (default: the config's) is above 1; from the LM
    config's model built on the meta device (no memory, no data)."""
    import torch

    from blueberry.errors import UserError
    from blueberry.models.lm import Decoder

    if cfg.task != "lm":
        raise UserError(f"task={cfg.task}: memory estimates cover lm runs (scanline models fit any one device)")
    if world_size < 1:
        raise UserError(f"world_size={world_size}: must be at least 1")
    ep = expert_parallel or cfg.expert_parallel
    if ep > 1 and (world_size % ep or not cfg.n_experts or cfg.n_experts % ep):
        raise UserError(f"expert_parallel={ep}: must divide the world size ({world_size}) and n_experts "
                        f"({cfg.n_experts})")
    with torch.device("meta"):
        model = Decoder(cfg, vocab_size or lm_vocab_size(cfg.tokenizer))
    name = f"{cfg.preset or cfg.name} ({cfg.optimizer})"
    ddp = estimate(model, cfg.optimizer, world_size, sharded=False)
    fsdp = estimate(model, cfg.optimizer, world_size, sharded=True)
    rows = [(f"{name}, DDP, any world size", ddp), (f"{name}, FSDP2, {world_size} ranks", fsdp)]
    ratios = f"FSDP2 / DDP per rank: {fsdp.total / ddp.total:.3f}"
    if ep > 1:
        ep_ddp = estimate(model, cfg.optimizer, world_size, sharded=False, expert_parallel=ep)
        ep_fsdp = estimate(model, cfg.optimizer, world_size, sharded=True, expert_parallel=ep)
        rows += [(f"{name}, EP={ep} + DDP, {world_size} ranks", ep_ddp),
                 (f"{name}, EP={ep} + FSDP2, {world_size} ranks", ep_fsdp)]
        ratios += (f"; EP={ep} + DDP / DDP: {ep_ddp.total / ddp.total:.3f}; "
                   f"EP={ep} + FSDP2 / DDP: {ep_fsdp.total / ddp.total:.3f}")
    return format_table(rows) + "\n" + ratios

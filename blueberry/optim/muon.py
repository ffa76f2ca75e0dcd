"""Muon on hidden matrices (stacked expert weights included) and AdamW on the rest, in one optimizer.

Muon: Keller Jordan, https://kellerjordan.github.io/posts/muon/ ; the update follows
`torch.optim.Muon` (torch/optim/_muon.py) step for step, so a 2-D parameter moves exactly as there.
One optimizer instead of a Muon + AdamW pair because the trainer, LambdaLR, Accelerate and the
checkpoint code all expect a single `torch.optim.Optimizer`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam
from torch.optim.optimizer import _get_scalar_dtype

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

# Per-kind defaults a group gets for the keys it does not set (torch.optim.Muon / AdamW defaults).
MUON_DEFAULTS: dict[str, Any] = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "weight_decay": 0.1,
                                 "ns_steps": 5, "ns_coefficients": NS_COEFFICIENTS, "eps": 1e-7,
                                 "ns_dtype": "auto"}
# Newton–Schulz precision: torch runs it in bf16, which GPUs do natively. CPUs without bf16 matmul
# units emulate it ~30x slower than fp32 (measured here: a moe-exp8 Muon step took 275 s in bf16),
# so "auto" means bf16 on accelerators and fp32 on the CPU.
NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# fused: None = torch's fused AdamW kernel when the group's parameters are on a GPU (one launch per
# step instead of a dozen per parameter, as torch.optim.AdamW(fused=True)); True/False force it.
ADAMW_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2,
                                  "fused": None}


def zeropower_via_newtonschulz(G: Tensor, steps: int = 5,
                               coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                               eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Approximately orthogonalise each trailing matrix of G ([..., A, B]) with a quintic Newton–Schulz.

    Same arithmetic as torch's `_zeropower_via_newtonschulz` (bf16, norm, addmm order), so a 2-D input
    gives bit-identical output; leading dims are a batch, and each matrix is normalised by its own
    Frobenius norm so one large expert gradient does not shrink the others. Runs and returns `dtype`.
    """
    if G.ndim < 2:
        raise ValueError(f"Newton–Schulz needs a matrix or a batch of matrices, got shape {tuple(G.shape)}")
    a, b, c = coefficients
    X = G.to(dtype)
    if X.ndim > 3:
        X = X.flatten(0, -3)  # baddbmm takes exactly one batch dim
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT  # iterate on the short side: the Gram matrix is min(A, B)^2
    if X.ndim == 2:
        addmm, norm = torch.addmm, X.norm()
    else:
        addmm, norm = torch.baddbmm, torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    # Frobenius norm >= spectral norm, so this puts every singular value in [0, 1].
    X = X / norm.clamp(min=eps)
    for _ in range(steps):
        gram = X @ X.mT
        poly = addmm(gram, gram, gram, beta=b, alpha=c)
        X = addmm(X, poly, X, beta=a)
    if tall:
        X = X.mT
    return X.reshape(G.shape) if G.ndim > 3 else X


class HybridMuon(torch.optim.Optimizer):
    """Muon for groups with `use_muon=True`, torch's AdamW for groups with `use_muon=False`.

    Every group must say `use_muon`. Muon groups: lr, momentum, nesterov, weight_decay, ns_steps
    (plus ns_coefficients, eps, ns_dtype "auto" | "bfloat16" | "float32"); parameters are [..., out, in] and each trailing matrix is one Muon
    matrix, so a stacked MoE weight [E, out, in] is E matrices. AdamW groups: lr, betas, eps,
    weight_decay; their step is `torch.optim.adam.adam(decoupled_weight_decay=True)`, the function
    `torch.optim.AdamW` runs (fused on GPUs). Missing keys take MUON_DEFAULTS / ADAMW_DEFAULTS.
    """

    def __init__(self, params: Iterable[dict[str, Any]]) -> None:
        # Defaults differ by group kind, so add_param_group fills them; the base class needs none.
        super().__init__(params, {})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict) or "use_muon" not in param_group:
            raise ValueError("HybridMuon: every param group must be a dict with a 'use_muon' key")
        defaults = MUON_DEFAULTS if param_group["use_muon"] else ADAMW_DEFAULTS
        param_group = {**defaults, **param_group}
        super().add_param_group(param_group)
        if param_group["use_muon"]:
            for p in param_group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"HybridMuon: Muon group holds a parameter of shape {tuple(p.shape)}; "
                                     "Muon needs matrices, put vectors in an AdamW group")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]

        def orthogonalise(update: Tensor, p: Tensor) -> Tensor:
            return zeropower_via_newtonschulz(update, group["ns_steps"], group["ns_coefficients"],
                                              group["eps"], _ns_dtype(group["ns_dtype"], p))

        def apply(p: Tensor, update: Tensor) -> None:
            # Keller's shape scaling sqrt(max(1, out/in)) from each matrix's own (out, in).
            out_dim, in_dim = p.shape[-2:]
            local = p.to_local() if _is_dtensor(p) else p
            local.mul_(1 - lr * wd)
            local.add_(update, alpha=-lr * math.sqrt(max(1, out_dim / in_dim)))

        # Under FSDP2 parameters are DTensors: their updates are orthogonalised together at the end
        # (collectives batched); otherwise one at a time, so only one update is alive at once.
        sharded = any(map(_is_dtensor, group["params"]))
        params, updates = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.lerp_(grad, 1 - momentum)   # elementwise: a DTensor shard needs nothing from the others
            update = grad.lerp(buf, momentum) if group["nesterov"] else buf
            if sharded:
                params.append(p)
                updates.append(update)
            else:
                apply(p, orthogonalise(update, p))
        if sharded:
            for p, update in zip(params, orthogonalised_shards(params, updates, orthogonalise)):
                apply(p, update)

    def _adamw_step(self, group: dict[str, Any]) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        has_complex = False
        fused = group["fused"]
        if fused is None:
            fused = all(p.is_cuda for p in group["params"])
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("HybridMuon: sparse gradients are not supported")
            state = self.state[p]
            if not state:
                # Same state layout as torch.optim.AdamW: the fused kernel reads `step` on the
                # parameter's device; otherwise it stays on the CPU (no kernel launch to bump it).
                state["step"] = (torch.zeros((), dtype=_get_scalar_dtype(is_fused=True), device=p.device) if fused
                                 else torch.tensor(0.0, dtype=_get_scalar_dtype()))
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            elif fused and state["step"].device != p.device:   # loaded from a checkpoint: kept on the CPU
                state["step"] = state["step"].to(p.device, torch.float32)
            has_complex |= torch.is_complex(p)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        # fused None: adam() then picks what torch.optim.AdamW picks by default (foreach on GPUs).
        adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, fused=fused or None, has_complex=has_complex,
             decoupled_weight_decay=True, amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
             weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
             grad_scale=getattr(self, "grad_scale", None), found_inf=getattr(self, "found_inf", None))


def orthogonalised_shards(params: list[Tensor], updates: list[Tensor], orthogonalise) -> list[Tensor]:
    """Newton–Schulz of sharded updates, as this rank's local shard of each result.

    FSDP2 shards every parameter on dim 0 in whole rows (Shard(0) on a 1-D mesh). A stack [E, out, in]
    then holds whole experts on each rank, so they are orthogonalised where they are, with no
    communication, whether or not E divides by the world size. A matrix [out, in] is split across
    rows: one owner rank per matrix (round robin) gathers it, runs Newton–Schulz once, and scatters
    the rows back, so no matrix is computed twice (the zero-redundancy scheme of distributed Muon
    implementations such as Dion's and the torch.optim.Muon distributed design). Every rank issues
    the same collectives in the same order; gathers are all started before the first is awaited.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import Shard

    results: list[Tensor | None] = [None] * len(params)
    pending = []   # (index, owner, group, rows per rank, gather work, gather buffers)
    for i, (p, u) in enumerate(zip(params, updates)):
        if not _is_dtensor(p):
            results[i] = orthogonalise(u, p)
            continue
        if p.device_mesh.ndim != 1 or tuple(p.placements) != (Shard(0),):
            raise NotImplementedError(f"HybridMuon: DTensor placements {p.placements} on a {p.device_mesh.ndim}-D "
                                      "mesh; only FSDP2's Shard(0) on one mesh dimension is supported")
        local = u.to_local()
        if p.ndim > 2:   # whole matrices on this rank (dim 0 is a batch dim)
            results[i] = orthogonalise(local, p) if local.numel() else local.clone()
            continue
        group = p.device_mesh.get_group()
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        rows = -(-p.shape[0] // world)   # torch.chunk's row count per rank; the last ones may hold fewer
        owner = len(pending) % world
        padded = local.new_zeros(rows, *p.shape[1:])
        padded[:local.shape[0]] = local
        buffers = [torch.empty_like(padded) for _ in range(world)] if rank == owner else None
        work = dist.gather(padded, buffers, group=group, group_dst=owner, async_op=True)
        pending.append((i, owner, group, rows, work, buffers))
    scatters = []
    for i, owner, group, rows, work, buffers in pending:
        work.wait()
        p = params[i]
        pieces = None
        if buffers is not None:
            full = orthogonalise(torch.cat(buffers)[:p.shape[0]], p)
            # In the update's dtype, which every rank knows (bf16 Newton–Schulz values are exact in fp32).
            full = torch.cat([full, full.new_zeros(rows * len(buffers) - p.shape[0], *p.shape[1:])])
            pieces = list(full.to(updates[i].dtype).split(rows))
        out = torch.empty(rows, *p.shape[1:], dtype=updates[i].dtype, device=updates[i].device)
        scatters.append((i, out, dist.scatter(out, pieces, group=group, group_src=owner, async_op=True)))
    for i, out, work in scatters:
        work.wait()
        results[i] = out[:updates[i].to_local().shape[0]]
    return results


def _is_dtensor(t: Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _ns_dtype(name: str, p: Tensor) -> torch.dtype:
    if name == "auto":
        return torch.float32 if p.device.type == "cpu" else torch.bfloat16
    return NS_DTYPES[name]

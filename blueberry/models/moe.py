"""Mixture-of-experts FFN: top-k router, SwiGLU experts run as one grouped GEMM, shared experts.

Nothing on the grouped path reads a tensor back to the host, so a GPU forward/backward never stalls
on routing decisions. On the CPU the experts run one after another instead (see grouped_by_default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from blueberry.models.expert_parallel import TokenExchange


class SwiGLU(nn.Module):
    """SwiGLU FFN (Shazeer 2020, arXiv 2002.05202): down(silu(gate x) * up x)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


# --- routing ----------------------------------------------------------------------------------

class Routing(NamedTuple):
    idx: torch.Tensor      # [N, k] long: chosen experts
    weights: torch.Tensor  # [N, k] fp32: mixing weights of the chosen experts
    logits: torch.Tensor   # [N, E] fp32: raw router logits (z-loss)
    probs: torch.Tensor    # [N, E] fp32: per-token distribution over experts (lb loss)
    counts: torch.Tensor   # [E] long: assignments per expert


def expert_counts(topk_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Assignments per expert, [E] long.

    Not torch.bincount: on CUDA it reads max(idx) back to the host to size its output.
    """
    flat = topk_idx.reshape(-1)
    return torch.zeros(n_experts, dtype=torch.long, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))


class Router(nn.Module):
    """Top-k router: softmax over experts (Mixtral) or sigmoid scores (DeepSeek-V3)."""

    muon_exclude = True  # the optimizer keeps the router on AdamW

    def __init__(self, cfg):
        super().__init__()
        self.kind, self.top_k, self.renorm = cfg.router, cfg.top_k, cfg.router_renorm
        # A bare parameter in nn.Linear layout rather than an nn.Linear child, so `muon_exclude`
        # sits on the module that owns the weight, and `bias` can name the buffer below.
        self.weight = nn.Parameter(torch.empty(cfg.n_experts, cfg.d_model).normal_(0.0, 0.02))
        # Score-correction bias, DeepSeek-V3 §2.1.2: shifts which experts are chosen, never the weights.
        self.register_buffer("bias", torch.zeros(cfg.n_experts, dtype=torch.float32))

    @property
    def n_experts(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> Routing:
        logits = F.linear(x, self.weight).float()
        if self.kind == "softmax":
            scores = probs = logits.softmax(dim=-1)
        else:
            scores = logits.sigmoid()
            probs = scores / scores.sum(dim=-1, keepdim=True)
        idx = torch.topk(scores + self.bias, self.top_k, dim=-1).indices
        weights = scores.gather(-1, idx)
        if self.renorm:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return Routing(idx, weights, logits, probs, expert_counts(idx, self.n_experts))


def load_balance_loss(probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Switch Transformer (Fedus et al. 2021, eq. 4): E * sum_i f_i * P_i.

    f_i = fraction of the N*k assignments routed to expert i (no gradient), P_i = mean router
    probability of expert i. Equals 1 when routing is uniform, up to E when it collapses.
    """
    f = counts.float() / counts.sum()
    return probs.shape[-1] * (f * probs.mean(dim=0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE (Zoph et al. 2022, eq. 5): mean over tokens of logsumexp(logits)^2."""
    return torch.logsumexp(logits, dim=-1).square().mean()


# --- experts and dispatch ---------------------------------------------------------------------

def _grouped_mm_applies(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Whether torch._grouped_mm will take these operands (it refuses misaligned strides)."""
    if not hasattr(torch, "_grouped_mm") or any(w.dtype != x.dtype for w in weights):
        return False
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    align = 16 // x.element_size()  # every non-unit stride must be a multiple of 16 bytes
    return all(s % align == 0 for t in (x, *weights) for s in t.stride() if s != 1)


def _grouped_swiglu(xs, offsets, w_gate, w_up, w_down):
    if xs.dtype != torch.bfloat16 and torch.compiler.is_compiling():
        return _grouped_swiglu_outside_graph(xs, offsets, w_gate, w_up, w_down)
    return _grouped_swiglu_math(xs, offsets, w_gate, w_up, w_down)


def _grouped_swiglu_math(xs, offsets, w_gate, w_up, w_down):
    def mm(a, w):
        return torch._grouped_mm(a, w.transpose(-2, -1), offs=offsets)
    return mm(F.silu(mm(xs, w_gate)) * mm(xs, w_up), w_down)


# torch.compile traces torch._grouped_mm in bf16 only (its meta kernel refuses other dtypes, torch
# 2.9-2.13), so in fp32 the grouped GEMMs run eagerly between two compiled graphs.
_grouped_swiglu_outside_graph = torch.compiler.disable(_grouped_swiglu_math)


def grouped_by_default(device: torch.device) -> bool:
    """The dispatch path a device gets when none is forced: the grouped GEMM everywhere but the CPU.

    torch's CPU grouped GEMM is itself a loop over the groups, slower than the plain per-expert loop
    (which keeps each expert's rows in cache): 0.84 x at moe-exp8's shape (benchmarks/moe_layer.py).
    The loop's one read of the offsets costs nothing on the CPU, where there is no queue to wait for.
    """
    return device.type != "cpu"


def _looped_swiglu(xs, offsets, w_gate, w_up, w_down):
    bounds = [0] + offsets.tolist()  # the layer's one host sync
    out = []
    # unbind, not w[e]: the backward of E unbinds is one stack, of E indexings E full-size zero grads.
    for lo, hi, wg, wu, wd in zip(bounds[:-1], bounds[1:], w_gate.unbind(0), w_up.unbind(0), w_down.unbind(0)):
        xe = xs[lo:hi]
        out.append(F.linear(F.silu(F.linear(xe, wg)) * F.linear(xe, wu), wd))
    return torch.cat(out)


def dispatch(x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor,
             w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
             *, grouped: bool | None = None, exchange: TokenExchange | None = None) -> torch.Tensor:
    """sum_j topk_w[n, j] * SwiGLU_{topk_idx[n, j]}(x[n]) for x [N, D]; returns [N, D].

    The N*k assignments are sorted by expert so each expert reads one contiguous slice; the
    grouped GEMM then runs all experts in one call. `grouped`: None = the device's default
    (grouped_by_default) where torch._grouped_mm applies, else the per-expert loop; True/False force a path.
    Expert parallel (`exchange`): the weights are this rank's experts only; the sorted rows travel to
    the ranks holding their experts and the outputs come back before they are mixed.
    """
    N, k = topk_idx.shape
    flat = topk_idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token = order // k  # the row of x each sorted assignment reads
    counts = expert_counts(flat, exchange.n_experts if exchange else w_gate.shape[0])
    xs = x.index_select(0, token)
    if exchange is not None:
        xs, counts, route = exchange.dispatch(xs, counts)
    offsets = counts.cumsum(0).to(torch.int32)
    if grouped is None:
        grouped = grouped_by_default(x.device) and _grouped_mm_applies(xs, w_gate, w_up, w_down)
    ys = (_grouped_swiglu if grouped else _looped_swiglu)(xs, offsets, w_gate, w_up, w_down)
    if exchange is not None:
        ys = exchange.combine(ys, route)
    ys = ys * topk_w.reshape(-1)[order].unsqueeze(-1).to(ys.dtype)
    return x.new_zeros(x.shape).index_add(0, token, ys.to(x.dtype))


class Experts(nn.Module):
    """E SwiGLU experts as stacked [E, out, in] matrices (nn.Linear layout per expert)."""

    # dispatch's path: None = the device's default (grouped_by_default); True/False force one (to compare).
    grouped: bool | None = None
    # Expert parallel (train/parallel.py): the weights are DTensors sharded on the expert dim, this rank
    # computes its own experts, and the exchange moves the tokens. None: every expert is here.
    exchange: TokenExchange | None = None

    def __init__(self, n_experts: int, d_model: int, d_ff: int):
        super().__init__()
        self.w_gate = nn.Parameter(torch.empty(n_experts, d_ff, d_model).normal_(0.0, 0.02))
        self.w_up = nn.Parameter(torch.empty(n_experts, d_ff, d_model).normal_(0.0, 0.02))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_model, d_ff).normal_(0.0, 0.02))

    def forward(self, x: torch.Tensor, topk_idx: torch.Tensor, topk_w: torch.Tensor) -> torch.Tensor:
        # A DTensor's local shard: its gradient comes back as the DTensor's (Shard(0)) gradient.
        weights = tuple(w.to_local() if self.exchange is not None else w for w in (self.w_gate, self.w_up, self.w_down))
        if torch.is_autocast_enabled(x.device.type):
            # Autocast does not cover _grouped_mm; cast as it would cast an nn.Linear.
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weights = x.to(dtype), tuple(w.to(dtype) for w in weights)
        elif x.dtype != weights[0].dtype:
            # FSDP2's bf16 policy casts the parameters it manages; expert-parallel experts are not among
            # them, so they are cast here as it would cast them (their gradients still land in fp32).
            weights = tuple(w.to(x.dtype) for w in weights)
        return dispatch(x, topk_idx, topk_w, *weights, grouped=self.grouped, exchange=self.exchange)


class MoE(nn.Module):
    """Routed experts plus always-on shared experts (DeepSeekMoE, arXiv 2401.06066)."""

    def __init__(self, cfg):
        super().__init__()
        self.router = Router(cfg)
        self.experts = Experts(cfg.n_experts, cfg.d_model, cfg.expert_d_ff)
        # n_shared experts of width expert_d_ff == one SwiGLU of width n_shared * expert_d_ff.
        self.shared = SwiGLU(cfg.d_model, cfg.n_shared_experts * cfg.expert_d_ff) if cfg.n_shared_experts else None
        self.bias_update_rate = cfg.bias_update_rate
        # Assignments per expert since the last take_load(); fp32 so an all-reduce can sum it.
        self.register_buffer("load", torch.zeros(cfg.n_experts, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        flat = x.reshape(-1, x.shape[-1])
        route = self.router(flat)
        y = self.experts(flat, route.idx, route.weights)
        if self.shared is not None:
            y = y + self.shared(flat)
        with torch.no_grad():
            self.load += route.counts
        aux = {"lb_loss": load_balance_loss(route.probs, route.counts), "z_loss": router_z_loss(route.logits)}
        return y.view(x.shape), aux

    def take_load(self) -> torch.Tensor:
        load = self.load.clone()
        self.load.zero_()
        return load

    @torch.no_grad()
    def update_bias(self, load: torch.Tensor) -> None:
        """Aux-loss-free balancing, DeepSeek-V3 §2.1.2: raise the bias of underloaded experts."""
        if self.bias_update_rate:
            load = load.to(self.router.bias)
            self.router.bias += self.bias_update_rate * torch.sign(load.mean() - load)

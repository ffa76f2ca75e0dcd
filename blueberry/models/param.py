"""Parametrizations: how a language model's init, forward multipliers and per-parameter optimizer
settings follow its width and depth, relative to the base (proxy) model its hyperparameters were
tuned on. Every rule is a ratio to the base, so at the base (m = 1, same depth) all are sp exactly.

- sp: the init and learning rates as set, at every size (GPT-2 init: std 0.02, residual outputs
  0.02 / sqrt(2 n_layers)).
- mup: muP for Adam, Tensor Programs V (Yang et al. 2022, arXiv 2203.03466) Table 3, relative to
  the base as the `mup` package's base shapes are. m_in = a matrix's fan-in / the base's.
  Hidden matrices: init std x m_in^-1/2 (variance x 1/m_in), AdamW LR x 1/m_in. The embedding
  (an input weight) and vectors: unchanged. The readout, tied to the embedding: its input x 1/m
  (m = d_model / base_d_model), the output multiplier of Table 3. Every matrix but the embedding
  and the head follows the hidden rule on its own fan-in: the router, and MLA's projections into
  a fixed rank, keep their outputs O(1) that way. Muon: its orthogonalised update has spectral norm
  1 whatever the shape; the spectral condition for feature learning (Yang, Simon & Bernstein 2023,
  arXiv 2310.17813) asks for ||dW|| ~ sqrt(fan_out / fan_in), which Keller's sqrt(max(1, out/in))
  meets only while out/in stays what it is at the base (or out >= in at both sizes). So each
  Muon matrix's update is x sqrt((out/in) / (base out/in)) from its size at the base (a
  width-invariant RMS->RMS update size); 1 for the matrices whose both sides grow together.
- completep: mup plus depth, CompleteP (Dey et al. 2025, arXiv 2505.01618, Table 1 with alpha = 1):
  each residual branch x base_n_layers / n_layers; AdamW eps x (1 / m)(base_n_layers / n_layers);
  hidden AdamW weight decay x m_in (so lr x weight_decay, the decay per step, stays as at the base);
  residual-output init 0.02 / sqrt(2 base_n_layers) at every depth (the branch multiplier scales).

`n_experts` is not a width: it indexes a stack of experts (a batch dimension of each expert matrix),
and the router's fan-out, which stays as set at every size.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

PARAMS = ("sp", "mup", "completep")
# Rules that can be left out one by one (`blueberry coords --drop RULE`), to see which rule keeps
# which module's activations from growing with width.
RULES = ("init", "lr", "logits", "muon", "attention", "residual", "eps", "weight_decay")
INIT_STD = 0.02


@dataclass(frozen=True)
class ParamScale:
    """One parameter's factors, each x what sp uses."""

    init: float = 1.0           # init std
    adamw_lr: float = 1.0       # lr, when the parameter is on AdamW
    muon_lr: float = 1.0        # muon_lr, when it is on Muon (on top of Muon's own shape factor)
    eps: float = 1.0            # AdamW eps
    weight_decay: float = 1.0   # AdamW weight decay

    def adamw_key(self) -> tuple[float, float, float]:
        return self.adamw_lr, self.eps, self.weight_decay


@dataclass(frozen=True)
class Multipliers:
    """The forward pass's factors: x 1 under sp."""

    logits: float = 1.0         # the readout's input (the final norm's output)
    residual: float = 1.0       # every residual branch (attention and FFN outputs)
    attention: float = 1.0      # x sp's attention logit scale 1/sqrt(d_head)
    residual_init_layers: int | None = None   # n_layers of the residual-output init; None = the model's
    zero_readout: bool = False


@dataclass
class Parametrization:
    name: str
    multipliers: Multipliers
    scales: dict[str, ParamScale] = field(default_factory=dict)   # by parameter name; absent = ParamScale()

    def scale(self, name: str) -> ParamScale:
        return self.scales.get(name, ParamScale())


def width_multiplier(cfg: Any) -> float:
    """m = d_model / base_d_model (1 when no base is named)."""
    return cfg.d_model / (cfg.base_d_model or cfg.d_model)


def depth_multiplier(cfg: Any) -> float:
    """n_layers / base_n_layers under completep, else 1 (mup and sp do not scale with depth)."""
    if cfg.param != "completep":
        return 1.0
    return cfg.n_layers / (cfg.base_n_layers or cfg.n_layers)


def base_config(cfg: Any) -> Any:
    """The base model's config: the same model at the base widths, under sp (same depth, so the
    parameter names match one to one)."""
    return dataclasses.replace(cfg, d_model=cfg.base_d_model or cfg.d_model, d_ff=cfg.base_d_ff or cfg.d_ff,
                               expert_d_ff=cfg.base_expert_d_ff or cfg.expert_d_ff, param="sp")


def multipliers(cfg: Any, drop: frozenset[str] = frozenset()) -> Multipliers:
    """The forward multipliers of cfg's parametrization, less the rules in `drop`."""
    param = getattr(cfg, "param", "sp")
    if param not in PARAMS:
        raise ValueError(f"param={param!r}: must be one of {', '.join(PARAMS)}")
    if param == "sp":
        return Multipliers()
    attention = 1.0
    if cfg.mup_attn_1_over_d and "attention" not in drop:
        # sqrt(base_d)/d instead of 1/sqrt(d), d = the query-key width per head
        rope = cfg.mla_rope_dim if cfg.attention == "mla" else 0
        d, base_d = cfg.d_model // cfg.n_heads + rope, (cfg.base_d_model or cfg.d_model) // cfg.n_heads + rope
        attention = math.sqrt(base_d / d)
    completep = param == "completep"
    return Multipliers(
        logits=1.0 if "logits" in drop else 1.0 / width_multiplier(cfg),
        residual=1.0 / depth_multiplier(cfg) if completep and "residual" not in drop else 1.0,
        attention=attention,
        residual_init_layers=(cfg.base_n_layers or cfg.n_layers) if completep and "residual" not in drop else None,
        zero_readout=cfg.mup_zero_readout)


def parameter_scales(cfg: Any, model: nn.Module, base_shapes: dict[str, tuple[int, ...]],
                     drop: frozenset[str] = frozenset()) -> dict[str, ParamScale]:
    """Each parameter's factors (module docstring) from its shape against the base model's."""
    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    completep = cfg.param == "completep"
    eps = 1.0 / (width_multiplier(cfg) * depth_multiplier(cfg)) if completep and "eps" not in drop else 1.0
    scales = {}
    for name, p in model.named_parameters():
        if p.ndim < 2 or id(p) in embedding:
            scales[name] = ParamScale(eps=eps)
            continue
        base_out, base_in = base_shapes[name][-2:]
        m_in, m_out = p.shape[-1] / base_in, p.shape[-2] / base_out
        aspect, base_aspect = p.shape[-2] / p.shape[-1], base_out / base_in
        scales[name] = ParamScale(
            init=1.0 if "init" in drop else m_in ** -0.5,
            adamw_lr=1.0 if "lr" in drop else 1.0 / m_in,
            muon_lr=1.0 if "muon" in drop else muon_factor(aspect, base_aspect),
            eps=eps,
            weight_decay=m_in if completep and "weight_decay" not in drop else 1.0)
    return scales


def muon_factor(aspect: float, base_aspect: float) -> float:
    """x muon_lr that makes a Muon update of a matrix with out/in = `aspect` as large per unit RMS as
    at the base: the spectral condition's sqrt(aspect / base_aspect) on top of the base's Keller
    factor, less the Keller factor sqrt(max(1, aspect)) HybridMuon applies itself."""
    return math.sqrt(max(1.0, base_aspect) * (aspect / base_aspect) / max(1.0, aspect))


def parametrization(cfg: Any, model: nn.Module, base_shapes: dict[str, tuple[int, ...]] | None,
                    drop: frozenset[str] = frozenset()) -> Parametrization:
    """cfg's parametrization of `model`; `base_shapes` ({name: shape} of the base model) is needed
    unless cfg.param is sp."""
    unknown = sorted(set(drop) - set(RULES))
    if unknown:
        raise ValueError(f"unknown parametrization rules {unknown}; known: {', '.join(RULES)}")
    param = getattr(cfg, "param", "sp")
    found = Parametrization(param, multipliers(cfg, drop))
    if param != "sp":
        found.scales = parameter_scales(cfg, model, base_shapes, drop)
    return found


def init_std(name: str, residual_out: bool, n_layers: int, parametrization: Parametrization | None) -> float:
    """The init std of a matrix: GPT-2's (0.02, residual outputs 0.02 / sqrt(2 n_layers)) x the
    parametrization's factor; n_layers is the residual-init depth (completep: the base's)."""
    layers = n_layers
    scale = 1.0
    if parametrization is not None:
        layers = parametrization.multipliers.residual_init_layers or n_layers
        scale = parametrization.scale(name).init
    return (INIT_STD / math.sqrt(2 * layers) if residual_out else INIT_STD) * scale

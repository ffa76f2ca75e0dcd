"""Decoder-only language model: pre-norm blocks of attention and a dense or MoE SwiGLU FFN."""

import torch
from torch import nn

from blueberry.models import param as param_rules
from blueberry.models.attention import NORM_EPS, build_attention
from blueberry.models.moe import MoE, SwiGLU

# Parameters that write into the residual stream; GPT-2 scales their init by 1/sqrt(2 * n_layers).
RESIDUAL_OUT = ("out_proj", "down", "w_down")


class Block(nn.Module):
    def __init__(self, cfg, multipliers: param_rules.Multipliers = param_rules.Multipliers()):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=NORM_EPS)
        self.attn = build_attention(cfg, multipliers.attention)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=NORM_EPS)
        self.ffn = MoE(cfg) if cfg.n_experts else SwiGLU(cfg.d_model, cfg.d_ff)
        self.drop = nn.Dropout(cfg.dropout)
        self.branch_scale = multipliers.residual   # CompleteP's base_n_layers / n_layers; 1 otherwise

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        x = x + self._branch(self.drop(self.attn(self.attn_norm(x))))
        h, aux = self.ffn(self.ffn_norm(x)), None
        if isinstance(self.ffn, MoE):
            h, aux = h
        return x + self._branch(self.drop(h)), aux

    def _branch(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.branch_scale == 1 else h * self.branch_scale


class Decoder(nn.Module):
    _no_split_modules = ("Block",)   # one FSDP unit per block (Accelerate's TRANSFORMER_BASED_WRAP)

    def __init__(self, cfg, vocab_size: int, drop_rules: frozenset[str] = frozenset()):
        """`drop_rules`: rules of cfg's parametrization to leave out (models/param.py RULES), for
        the coordinate check's ablations."""
        super().__init__()
        self.n_experts, self.top_k = cfg.n_experts, cfg.top_k
        multipliers = param_rules.multipliers(cfg, drop_rules)
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, multipliers) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=NORM_EPS)
        self.readout_scale = multipliers.logits   # muP's output multiplier 1/m; 1 under sp
        # Read by optim.build_optimizer for the per-parameter LR, eps and weight decay factors.
        sp = getattr(cfg, "param", "sp") == "sp"
        self.parametrization = param_rules.parametrization(
            cfg, self, None if sp else _base_shapes(cfg, vocab_size), drop_rules)
        self._init_weights(cfg.n_layers)

    def _init_weights(self, n_layers: int) -> None:
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                leaf = name.removesuffix(".weight").rsplit(".", 1)[-1]
                std = param_rules.init_std(name, leaf in RESIDUAL_OUT, n_layers, self.parametrization)
                nn.init.normal_(p, mean=0.0, std=std)
            else:  # only RMSNorm weights are vectors
                nn.init.ones_(p)
        for m in self.moe_layers:
            m.router.bias.zero_()
        if self.parametrization.multipliers.zero_readout:
            # The head is the embedding: zeroing the final norm's gain starts the logits at 0 as a
            # zero readout would, and leaves the input embedding as initialised.
            nn.init.zeros_(self.norm.weight)

    @property
    def moe_layers(self) -> list[MoE]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoE)]

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.drop(self.embed(idx))
        lb, z = [], []
        for block in self.blocks:
            x, aux = block(x)
            if aux is not None:
                lb.append(aux["lb_loss"])
                z.append(aux["z_loss"])
        h = self.norm(x)
        if self.readout_scale != 1:
            h = h * self.readout_scale
        logits = h @ self.embed.weight.T  # LM head tied to the embedding
        zero = torch.zeros((), device=idx.device)
        aux = {"lb_loss": torch.stack(lb).mean() if lb else zero,
               "z_loss": torch.stack(z).mean() if z else zero}
        return logits, aux

    def param_counts(self) -> dict[str, int]:
        """total (tied weight once), active per token (routed experts a token skips excluded), embedding."""
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        skipped = sum(sum(p.numel() for p in m.experts.parameters()) // self.n_experts * (self.n_experts - self.top_k)
                      for m in self.moe_layers)
        return {"total": total, "active": total - skipped, "embedding": self.embed.weight.numel()}

    def take_expert_load(self) -> torch.Tensor:
        """Assignments per expert since the last call, [n_moe_layers, E] fp32; resets the counts."""
        layers = self.moe_layers
        if not layers:
            return torch.zeros(0, 0, device=self.embed.weight.device)
        return torch.stack([m.take_load() for m in layers])

    def update_router_bias(self, load: torch.Tensor) -> None:
        """One aux-loss-free balancing step per MoE layer from load [n_moe_layers, E]."""
        for m, layer_load in zip(self.moe_layers, load):
            m.update_bias(layer_load)


def _base_shapes(cfg, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """{parameter name: shape} of cfg's base model (param.base_config), built on the meta device."""
    with torch.device("meta"):
        base = Decoder(param_rules.base_config(cfg), vocab_size)
    return {name: tuple(p.shape) for name, p in base.named_parameters()}

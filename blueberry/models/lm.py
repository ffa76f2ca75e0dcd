"""Decoder-only language model: pre-norm blocks of attention and a dense or MoE SwiGLU FFN."""

import math

import torch
from torch import nn

from blueberry.models.attention import NORM_EPS, build_attention
from blueberry.models.moe import MoE, SwiGLU

# Parameters that write into the residual stream; GPT-2 scales their init by 1/sqrt(2 * n_layers).
RESIDUAL_OUT = ("out_proj", "down", "w_down")


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=NORM_EPS)
        self.attn = build_attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=NORM_EPS)
        self.ffn = MoE(cfg) if cfg.n_experts else SwiGLU(cfg.d_model, cfg.d_ff)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        x = x + self.drop(self.attn(self.attn_norm(x)))
        h, aux = self.ffn(self.ffn_norm(x)), None
        if isinstance(self.ffn, MoE):
            h, aux = h
        return x + self.drop(h), aux


class Decoder(nn.Module):
    _no_split_modules = ("Block",)   # one FSDP unit per block (Accelerate's TRANSFORMER_BASED_WRAP)

    def __init__(self, cfg, vocab_size: int):
        super().__init__()
        self.n_experts, self.top_k = cfg.n_experts, cfg.top_k
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=NORM_EPS)
        self._init_weights(cfg.n_layers)

    def _init_weights(self, n_layers: int) -> None:
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                leaf = name.removesuffix(".weight").rsplit(".", 1)[-1]
                std = 0.02 / math.sqrt(2 * n_layers) if leaf in RESIDUAL_OUT else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            else:  # only RMSNorm weights are vectors
                nn.init.ones_(p)
        for m in self.moe_layers:
            m.router.bias.zero_()

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
        logits = self.norm(x) @ self.embed.weight.T  # LM head tied to the embedding
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

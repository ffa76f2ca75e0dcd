"""Causal self-attention: multi-head (MHA) and DeepSeek-V3 multi-head latent attention (MLA).

No dropout on the attention weights: with dropout_p > 0 SDPA leaves its fused kernel for the unfused
math one (bmm, softmax, bernoulli), 1.20 x the training-step time of moe-exp8 on CPU (paired;
docs/benchmarks.md). The LM's `dropout` acts on the residual stream (models/lm.py), as the scanline ViT's does.
"""

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from blueberry.models.rope import Rotary, apply_rope

NORM_EPS = 1e-6


class MultiHeadAttention(nn.Module):
    def __init__(self, cfg, scale_factor: float = 1.0):
        super().__init__()
        self.n_heads = cfg.n_heads
        head_dim = cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.rope = Rotary(head_dim, cfg.rope_theta)
        # None = SDPA's own 1/sqrt(head_dim); a parametrization may scale it (models/param.py)
        self.scale = None if scale_factor == 1 else scale_factor / math.sqrt(head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.n_heads)
        cos, sin = self.rope(x.shape[1])
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.out_proj(rearrange(y, "b h t d -> b t (h d)"))


class LatentAttention(nn.Module):
    """Multi-head latent attention, DeepSeek-V3 (arXiv 2412.19437) §2.1.1.

    Keys and values come from one low-rank latent per token; position enters only through a
    decoupled RoPE part: a per-head query part and ONE key part shared by all heads.
    """

    def __init__(self, cfg, scale_factor: float = 1.0):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.rope_dim = cfg.mla_rope_dim
        self.kv_rank = cfg.mla_kv_rank
        H, hd, r = self.n_heads, self.head_dim, self.rope_dim
        if cfg.mla_q_rank > 0:
            self.q_proj = nn.Sequential(nn.Linear(cfg.d_model, cfg.mla_q_rank, bias=False),     # W^DQ
                                        nn.RMSNorm(cfg.mla_q_rank, eps=NORM_EPS),
                                        nn.Linear(cfg.mla_q_rank, H * (hd + r), bias=False))  # W^UQ, W^QR
        else:
            self.q_proj = nn.Linear(cfg.d_model, H * (hd + r), bias=False)
        self.kv_compress = nn.Linear(cfg.d_model, self.kv_rank + r, bias=False)  # W^DKV and W^KR
        self.kv_norm = nn.RMSNorm(self.kv_rank, eps=NORM_EPS)
        self.kv_expand = nn.Linear(self.kv_rank, H * 2 * hd, bias=False)        # W^UK and W^UV
        self.out_proj = nn.Linear(H * hd, cfg.d_model, bias=False)
        self.rope = Rotary(r, cfg.rope_theta)
        self.scale = scale_factor / math.sqrt(hd + r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        cos, sin = self.rope(T)
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=self.n_heads)
        q_nope, q_rope = q.split([self.head_dim, self.rope_dim], dim=-1)
        latent, k_rope = self.kv_compress(x).split([self.kv_rank, self.rope_dim], dim=-1)
        kv = rearrange(self.kv_expand(self.kv_norm(latent)), "b t (h d) -> b h t d", h=self.n_heads)
        k_nope, v = kv.split([self.head_dim, self.head_dim], dim=-1)
        k_rope = apply_rope(k_rope.unsqueeze(1), cos, sin).expand(-1, self.n_heads, -1, -1)
        q = torch.cat((q_nope, apply_rope(q_rope, cos, sin)), dim=-1)
        k = torch.cat((k_nope, k_rope), dim=-1)
        # Values zero-padded to the query/key width: SDPA's fused kernels want one head width, and
        # without them it runs the unfused math kernel (fwd+bwd 1.3-1.6 x slower on CPU at the
        # lm-tiny and moe-exp8 shapes). The padded output columns are zeros, sliced off again.
        v = F.pad(v, (0, self.rope_dim))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)[..., :self.head_dim]
        return self.out_proj(rearrange(y, "b h t d -> b t (h d)"))


def build_attention(cfg, scale_factor: float = 1.0) -> nn.Module:
    """cfg's attention; `scale_factor` multiplies the usual 1/sqrt(d) of the attention logits."""
    if cfg.attention == "mha":
        return MultiHeadAttention(cfg, scale_factor)
    if cfg.attention == "mla":
        return LatentAttention(cfg, scale_factor)
    raise ValueError(f"attention={cfg.attention!r}: expected 'mha' or 'mla'")

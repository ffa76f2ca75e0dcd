"""Rotary position embeddings (Su et al. 2021, RoFormer, arXiv 2104.09864)."""

import torch
from torch import nn


class Rotary(nn.Module):
    """cos/sin tables for positions 0..T-1, grown on demand and cached."""

    def __init__(self, dim: int, theta: float):
        super().__init__()
        assert dim % 2 == 0, f"rotary dim {dim} must be even"
        self.dim, self.theta = dim, theta
        # Not persistent: derived from (dim, theta), so checkpoints stay independent of seq_len.
        self.register_buffer("cos", torch.empty(0, dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(0, dim // 2), persistent=False)

    def forward(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():
            # Inside a compiled graph the table costs nothing, while growing the cache would change a
            # buffer's shape and so recompile the graph.
            return self._table(T)
        if self.cos.shape[0] < T:
            self.cos, self.sin = self._table(T)
        return self.cos[:T], self.sin[:T]

    def _table(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        # In fp32 each time, never from a (possibly bf16-cast) buffer.
        device = self.cos.device
        inv_freq = self.theta ** (-torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) / self.dim)
        angles = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by position; pairs are (i, i + D/2) as in GPT-NeoX/Llama."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)

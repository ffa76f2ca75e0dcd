"""The parts of the attention layers (blueberry/models/attention.py) that a shape test cannot see.

Parameter counts are derived from the MLA definition (DeepSeek-V2/V3, arXiv 2412.19437 §2.1.1)
and the config fields; the MLA forward pass is checked against an explicit einsum computation
(RMSNorm on the latents with eps 1e-6, RoPE on pairs (i, i + D/2), softmax scale
1/sqrt(head_dim + rope_dim), causal mask) written here from those definitions, in float64.
"""

import math

import pytest
import torch

from conftest import tiny_model_config as tiny
from blueberry.models.attention import LatentAttention, MultiHeadAttention, build_attention

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 1e-6  # DeepSeek-V3's rms_norm_eps


def mla_param_count(cfg):
    """W^DQ (+ its RMSNorm gain) and W^UQ/W^QR, W^DKV/W^KR, the kv RMSNorm gain, W^UK/W^UV, W^O:
    no biases anywhere."""
    d, H, hd, r, c = cfg.d_model, cfg.n_heads, cfg.d_model // cfg.n_heads, cfg.mla_rope_dim, cfg.mla_kv_rank
    q_out = H * (hd + r)  # per head: a content part and a RoPE part
    query = d * q_out if cfg.mla_q_rank == 0 else d * cfg.mla_q_rank + cfg.mla_q_rank + cfg.mla_q_rank * q_out
    kv = d * (c + r) + c + c * H * 2 * hd  # ONE RoPE key part of width r, shared by all heads
    return query + kv + H * hd * d


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_mha_has_four_d_squared_parameters_and_no_biases():
    cfg = tiny(attention="mha")
    attn = MultiHeadAttention(cfg)
    assert n_params(attn) == 4 * cfg.d_model ** 2  # W_q, W_k, W_v, W_o
    assert all(m.bias is None for m in attn.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("q_rank", [0, 1, 12])
def test_mla_parameter_count_follows_the_ranks(q_rank):
    cfg = tiny(attention="mla", mla_q_rank=q_rank, mla_kv_rank=16, mla_rope_dim=4)
    attn = LatentAttention(cfg)
    assert n_params(attn) == mla_param_count(cfg)
    assert all(m.bias is None for m in attn.modules() if isinstance(m, torch.nn.Linear))


def test_mla_query_compression_starts_at_rank_one():
    # q_rank 1 is a (degenerate) compression: d_model -> 1 -> heads, not the direct projection
    d, H, hd, r = 32, 4, 8, 4
    direct = n_params(LatentAttention(tiny(attention="mla", mla_q_rank=0)))
    compressed = n_params(LatentAttention(tiny(attention="mla", mla_q_rank=1)))
    assert direct - compressed == d * H * (hd + r) - (d * 1 + 1 + 1 * H * (hd + r))


def rms_norm(x, gain):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * gain


def rope(x, theta):
    """x [..., T, D]: rotate the pair (i, i + D/2) at position t by t * theta^(-2i/D)."""
    T, D = x.shape[-2], x.shape[-1]
    freq = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * freq
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def reference_mla(attn, cfg, x):
    B, T, d = x.shape
    H, hd, r, c = cfg.n_heads, cfg.d_model // cfg.n_heads, cfg.mla_rope_dim, cfg.mla_kv_rank
    if cfg.mla_q_rank:
        w_dq, norm_q, w_uq = attn.q_proj
        q = rms_norm(x @ w_dq.weight.T, norm_q.weight) @ w_uq.weight.T
    else:
        q = x @ attn.q_proj.weight.T
    q = q.view(B, T, H, hd + r).transpose(1, 2)                   # b h t (hd + r)
    q = torch.cat((q[..., :hd], rope(q[..., hd:], cfg.rope_theta)), dim=-1)
    ckv = x @ attn.kv_compress.weight.T                            # b t (c + r)
    latent, k_rope = ckv[..., :c], rope(ckv[..., c:], cfg.rope_theta)
    kv = (rms_norm(latent, attn.kv_norm.weight) @ attn.kv_expand.weight.T).view(B, T, H, 2 * hd)
    k_nope, v = kv[..., :hd].transpose(1, 2), kv[..., hd:].transpose(1, 2)
    k = torch.cat((k_nope, k_rope[:, None].expand(B, H, T, r)), dim=-1)
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(hd + r)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    p = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    y = torch.einsum("bhts,bhsd->bthd", p, v).reshape(B, T, H * hd)
    return y @ attn.out_proj.weight.T


@pytest.mark.parametrize("q_rank", [0, 1, 12])
@pytest.mark.parametrize("latent_scale", [1.0, 1e-4], ids=["latent-1", "latent-tiny"])
def test_mla_forward_matches_an_explicit_computation(q_rank, latent_scale):
    """latent-tiny: the compressed latents are ~1e-4, so their RMSNorm is dominated by eps 1e-6."""
    torch.manual_seed(q_rank)
    cfg = tiny(attention="mla", mla_q_rank=q_rank, mla_kv_rank=16, mla_rope_dim=4, rope_theta=100.0)
    attn = LatentAttention(cfg).double()
    with torch.no_grad():
        for p in attn.parameters():  # larger than the default init: peaked softmax, visible scale
            p.copy_(torch.randn_like(p) * (0.6 if p.dim() == 2 else 1.0) + (1.0 if p.dim() == 1 else 0.0))
        attn.kv_compress.weight[:cfg.mla_kv_rank] *= latent_scale  # the latent rows, not W^KR
        if q_rank:
            attn.q_proj[0].weight *= latent_scale
    x = torch.randn(2, 6, cfg.d_model, dtype=torch.float64)
    with torch.no_grad():
        got = attn(x)
        want = reference_mla(attn, cfg, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_build_attention_names_the_bad_choice():
    with pytest.raises(ValueError) as err:
        build_attention(tiny(attention="gqa"))
    msg = str(err.value)
    assert "gqa" in msg and "mha" in msg and "mla" in msg

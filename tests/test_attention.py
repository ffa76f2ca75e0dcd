
import pytest
import torch

from conftest import tiny_model_config
from blueberry.models.attention import LatentAttention, MultiHeadAttention, build_attention
from blueberry.models.lm import Decoder
from blueberry.models.rope import Rotary, apply_rope

VOCAB = 50


pytestmark = pytest.mark.usefixtures("one_thread")


tiny = tiny_model_config


@pytest.mark.parametrize("kw", [dict(attention="mha"), dict(attention="mla", mla_q_rank=0),
                                dict(attention="mla", mla_q_rank=12)], ids=["mha", "mla", "mla-qrank"])
def test_changing_a_token_changes_no_earlier_logit(kw):
    torch.manual_seed(0)
    model = Decoder(tiny(**kw), VOCAB).eval()
    idx = torch.randint(0, VOCAB, (2, 12))
    t = 5
    changed = idx.clone()
    changed[:, t] = (idx[:, t] + 1) % VOCAB
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=1e-6, rtol=0)
    assert (a[:, t] - b[:, t]).abs().max() > 1e-3
    assert (a[:, t + 1:] - b[:, t + 1:]).abs().max() > 1e-5, "later positions should attend to the change"


def test_build_attention_picks_by_config():
    assert isinstance(build_attention(tiny(attention="mha")), MultiHeadAttention)
    assert isinstance(build_attention(tiny(attention="mla")), LatentAttention)


@pytest.mark.parametrize("q_rank", [0, 12])
def test_mla_shapes_follow_ranks(q_rank):
    cfg = tiny(attention="mla", mla_q_rank=q_rank)
    attn = LatentAttention(cfg)
    H, hd, r = cfg.n_heads, cfg.d_model // cfg.n_heads, cfg.mla_rope_dim
    # one shared RoPE key: the compression emits kv_rank + r, not kv_rank + H * r
    assert attn.kv_compress.weight.shape == (cfg.mla_kv_rank + r, cfg.d_model)
    assert attn.kv_expand.weight.shape == (H * 2 * hd, cfg.mla_kv_rank)
    assert attn.out_proj.weight.shape == (cfg.d_model, H * hd)
    q_out = attn.q_proj[-1] if q_rank else attn.q_proj
    assert q_out.weight.shape == (H * (hd + r), q_rank or cfg.d_model)
    assert attn(torch.randn(2, 7, cfg.d_model)).shape == (2, 7, cfg.d_model)


@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_attention_scores_depend_only_on_relative_position(attention, monkeypatch):
    # Same token everywhere: with RoPE on both q and k (MLA: the shared key part too), the score
    # of (i, j) depends on i - j alone.
    torch.manual_seed(0)
    attn = build_attention(tiny(attention=attention))
    seen = {}
    real = torch.nn.functional.scaled_dot_product_attention

    def capture(q, k, v, **kw):
        seen["scores"] = q @ k.transpose(-2, -1)
        return real(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", capture)
    attn(torch.randn(1, 1, 32).expand(1, 10, 32))
    s = seen["scores"][0]
    torch.testing.assert_close(s[:, 1:, 1:], s[:, :-1, :-1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(s[:, 4, 0], s[:, 4, 3], atol=1e-3)


def test_rope_scores_depend_only_on_relative_position():
    rope = Rotary(8, 10000.0)
    cos, sin = rope(20)
    q, k = torch.randn(8), torch.randn(8)

    def score(i, j):
        qi = apply_rope(q.expand(1, 1, 20, 8), cos, sin)[0, 0, i]
        kj = apply_rope(k.expand(1, 1, 20, 8), cos, sin)[0, 0, j]
        return qi @ kj

    torch.testing.assert_close(score(7, 3), score(15, 11))
    assert not torch.allclose(score(7, 3), score(7, 4))
    # rotation keeps norms; position 0 is the identity
    x = torch.randn(1, 2, 20, 8)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(apply_rope(x, cos, sin)[:, :, 0], x[:, :, 0])


def test_rope_cache_grows_and_is_not_saved():
    rope = Rotary(8, 500.0)
    cos_short, _ = rope(4)
    cos_long, _ = rope(16)
    assert rope.cos.shape == (16, 4)
    torch.testing.assert_close(cos_long[:4], cos_short)
    assert "cos" not in rope.state_dict()
    inv_freq = 500.0 ** (-torch.arange(0, 8, 2) / 8)
    torch.testing.assert_close(cos_long[3], torch.cos(3 * inv_freq))

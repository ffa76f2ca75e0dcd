"""Attention stays on SDPA's fused kernels: no dropout on the attention weights (the LM's `dropout` acts on
the residual stream), and MLA pads its values to the query/key width. Either would otherwise send SDPA to
its unfused math kernel (docs/benchmarks.md)."""

import pytest
import torch

from conftest import tiny_model_config
from blueberry.models.attention import build_attention
from blueberry.models.lm import Decoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_dropout_acts_on_the_residual_stream_not_on_attention_weights(attention):
    cfg = tiny_model_config(attention=attention, dropout=0.5)
    torch.manual_seed(0)
    attn = build_attention(cfg).train()
    x = torch.randn(2, 8, cfg.d_model)
    torch.testing.assert_close(attn(x), attn(x), rtol=0, atol=0)     # no random mask inside attention

    model = Decoder(cfg, vocab_size=64).train()
    idx = torch.randint(0, 64, (2, 8))
    a, b = model(idx)[0], model(idx)[0]
    assert not torch.allclose(a, b)                                 # the residual stream is dropped
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0], rtol=0, atol=0)


def test_mla_value_padding_changes_nothing(monkeypatch):
    cfg = tiny_model_config(attention="mla", mla_rope_dim=8)
    torch.manual_seed(0)
    attn = build_attention(cfg)
    x = torch.randn(2, 9, cfg.d_model)
    padded = attn(x)
    with monkeypatch.context() as m:    # the same forward with unpadded values (SDPA's math kernel)
        m.setattr(torch.nn.functional, "pad", lambda t, pad: t)
        unpadded = attn(x)
    assert padded.shape == unpadded.shape == x.shape
    torch.testing.assert_close(padded, unpadded, rtol=1e-5, atol=1e-6)

"""Parts of the decoder LM (models/lm.py) and the scan-line classifiers (models/scanline.py) that the
end-to-end model tests do not pin: norm eps, residual signs, init scales, the device of aux outputs,
integer parameter counts, the per-line CNN's architecture, the line-position embedding, causal
attention through SDPA's causal kernel, and which heads stay off Muon.

Expected values come from references written here (float64, explicit ops) or from the formula.
"""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from conftest import tiny_model_config
from blueberry.config import ScanlineConfig
from blueberry.models.attention import NORM_EPS
from blueberry.models.lm import Decoder
from blueberry.models.scanline import CNNLSTM, LineCNN, LineTransformer
from blueberry.optim.build import partition_params

pytestmark = pytest.mark.usefixtures("one_thread")

V = 40


def lm(**kw) -> Decoder:
    torch.manual_seed(0)
    cfg = tiny_model_config(**{"d_model": 16, "n_heads": 2, "d_ff": 24, "expert_d_ff": 8, "mla_kv_rank": 8,
                               "dropout": 0.0, **kw})
    return Decoder(cfg, V)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


# --- decoder LM ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n_experts", [0, 4], ids=["dense", "moe"])
def test_decoder_forward_matches_a_pre_norm_reference_in_float64(n_experts):
    """x += attn(norm(x)); x += ffn(norm(x)); logits = norm(x) @ E^T, every norm with eps NORM_EPS.

    The embedding is scaled down so that mean(x^2) is ~4e-6 and an eps of 1e-6 visibly matters.
    """
    m = lm(n_experts=n_experts).double().eval()
    with torch.no_grad():
        m.embed.weight.mul_(0.1)
        for norm in [m.norm] + [n for b in m.blocks for n in (b.attn_norm, b.ffn_norm)]:
            norm.weight.uniform_(0.5, 1.5)  # not all ones, so each norm's own weight is read
        idx = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(1))
        logits, _ = m(idx)

        E = m.embed.weight
        x = E[idx]
        for b in m.blocks:
            x = x + b.attn(rms_norm(x, b.attn_norm.weight, NORM_EPS))
            f = b.ffn(rms_norm(x, b.ffn_norm.weight, NORM_EPS))
            x = x + (f[0] if isinstance(f, tuple) else f)
        expected = torch.einsum("btd,vd->btv", rms_norm(x, m.norm.weight, NORM_EPS), E)
    torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-12)


def test_residual_output_init_std_is_scaled_by_depth():
    """GPT-2: matrices writing into the residual stream get N(0, 0.02 / sqrt(2 * n_layers)), others 0.02.

    Pooled over 3 layers the sample std of ~60k weights is within 1% of the true std.
    """
    n_layers = 3
    m = lm(n_experts=0, n_layers=n_layers, d_model=64, n_heads=4, d_ff=256)
    out = torch.cat([w.flatten() for b in m.blocks for w in (b.attn.out_proj.weight, b.ffn.down.weight)])
    other = torch.cat([w.flatten() for b in m.blocks for w in (b.ffn.gate.weight, b.ffn.up.weight)])
    want = 0.02 / math.sqrt(2 * n_layers)
    assert abs(out.std().item() - want) < 0.03 * want
    assert abs(out.mean().item()) < 0.03 * want
    assert abs(other.std().item() - 0.02) < 0.03 * 0.02


def test_dense_aux_losses_live_on_the_input_device():
    """On meta tensors (a stand-in for an accelerator) the zero aux losses must not land on the CPU."""
    m = lm(n_experts=0).to("meta")
    _, aux = m(torch.zeros(1, 4, dtype=torch.long, device="meta"))
    assert aux["lb_loss"].device.type == aux["z_loss"].device.type == "meta"
    assert aux["lb_loss"].shape == aux["z_loss"].shape == ()


def test_dense_expert_load_lives_on_the_model_device():
    load = lm(n_experts=0).to("meta").take_expert_load()
    assert load.shape == (0, 0) and load.device.type == "meta"


def test_param_counts_are_integers():
    """Experts split evenly, so the active count is a whole number and stays an int (not 1234.0)."""
    counts = lm(n_experts=4, top_k=2).param_counts()
    assert all(type(v) is int for v in counts.values()), counts
    expert = 3 * 8 * 16  # gate, up, down of d_ff 8 at d_model 16
    assert counts["total"] - counts["active"] == 2 * (4 - 2) * expert


# --- scan-line classifiers ----------------------------------------------------------------------

def scan_cfg(**changes) -> ScanlineConfig:
    base = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "cnn_channels": 8, "lstm_hidden": 16,
            "lines_per_sample": 6, "dropout": 0.0}
    return dataclasses.replace(ScanlineConfig(), **{**base, **changes})


def test_line_cnn_default_size_is_three_blocks_of_kernel_5():
    """conv(1->C, k=5) + GroupNorm(C), then two conv(C->C, k=5) + GroupNorm(C): weights, biases, affine."""
    C = 8
    cnn = LineCNN(C)
    first = 1 * C * 5 + C + 2 * C
    later = C * C * 5 + C + 2 * C
    assert sum(p.numel() for p in cnn.parameters()) == first + 2 * later
    assert cnn.out_features == C


def reference_line_cnn(cnn: LineCNN, x: torch.Tensor) -> torch.Tensor:
    """Three blocks of: 'same' conv k=5, GroupNorm over all channels and positions of a line, exact GELU,
    max-pool 2 that keeps a last odd position; then the mean over positions. float64."""
    B, L, W = x.shape
    h = x.reshape(B * L, 1, W).double()
    for i in range(3):
        conv, gn = cnn.net[4 * i], cnn.net[4 * i + 1]
        w, b = conv.weight.double(), conv.bias.double()  # [C, C_in, 5], [C]
        windows = F.pad(h, (2, 2)).unfold(-1, 5, 1)  # [N, C_in, W, 5]
        h = torch.einsum("niwk,oik->now", windows, w) + b[:, None]
        mu = h.mean(dim=(1, 2), keepdim=True)
        var = ((h - mu) ** 2).mean(dim=(1, 2), keepdim=True)
        h = (h - mu) / torch.sqrt(var + gn.eps) * gn.weight.double()[:, None] + gn.bias.double()[:, None]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        if h.shape[-1] % 2:
            h = F.pad(h, (0, 1), value=-math.inf)
        h = h.reshape(*h.shape[:-1], -1, 2).amax(-1)
    return h.mean(-1).view(B, L, -1)


def test_line_cnn_matches_a_float64_reference_on_odd_length_lines():
    """W = 25 is odd at every stage (25 -> 13 -> 7 -> 4), so padding and the pooling's rounding show."""
    torch.manual_seed(0)
    cnn = LineCNN(6)
    with torch.no_grad():
        for gn in cnn.net[1::4]:  # non-trivial affine, so a wrong grouping is not hidden by it
            gn.weight.uniform_(0.5, 1.5)
            gn.bias.uniform_(-0.5, 0.5)
        x = torch.randn(2, 3, 25, generator=torch.Generator().manual_seed(1))
        got = cnn(x)
    assert got.shape == (2, 3, 6)
    torch.testing.assert_close(got.double(), reference_line_cnn(cnn, x), rtol=1e-4, atol=1e-5)


def test_line_cnn_halves_the_length_per_block_rounding_up():
    cnn = LineCNN(4)
    lengths = []
    h = torch.randn(1, 1, 25)
    for layer in cnn.net:
        h = layer(h)
        if isinstance(layer, torch.nn.MaxPool1d):
            lengths.append(h.shape[-1])
    assert lengths == [13, 7, 4]


def test_line_states_add_the_line_position_and_attend_causally():
    """With one encoder layer, causal state t equals the unmasked encoder run on lines 0..t, at t."""
    torch.manual_seed(0)
    m = LineTransformer(scan_cfg(), 4).eval()
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        m.line_pos.weight.normal_(0, 1.0)  # large, so its sign is unmistakable
        got = m.line_states(x)
        h = m.proj(m.cnn(x)) + m.line_pos.weight[:5]
        expected = torch.stack([m.encoder(h[:, : t + 1])[:, -1] for t in range(5)], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


class AttentionCalls(TorchFunctionMode):
    """Records (is_causal, need_weights) of every F.multi_head_attention_forward call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward:
            self.calls.append((kwargs.get("is_causal"), kwargs.get("need_weights")))
        return func(*args, **kwargs)


def test_line_states_hand_attention_the_causal_hint():
    """Each layer's attention gets is_causal=True without weights, so torch drops the [L, L] mask and
    SDPA runs its causal kernel; with is_causal=False it would materialise the mask instead."""
    torch.manual_seed(0)
    m = LineTransformer(scan_cfg(n_layers=2), 4).train()
    with AttentionCalls() as rec:
        m.line_states(torch.randn(2, 4, 32))
    assert rec.calls == [(True, False)] * 2


@pytest.mark.parametrize("cls", [LineTransformer, CNNLSTM])
def test_output_head_stays_off_muon(cls):
    """Muon's recipe keeps the classifier head on AdamW: its weight is an 'other_matrix', not 'hidden'."""
    torch.manual_seed(0)
    m = cls(scan_cfg(), 4)
    parts = partition_params(m)
    ids = {kind: {id(p) for p in ps} for kind, ps in parts.items()}
    assert id(m.head.weight) in ids["other_matrix"] and id(m.head.weight) not in ids["hidden"]
    assert id(m.head.bias) in ids["vector"]

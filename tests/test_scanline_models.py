import dataclasses

import pytest
import torch
import torch.nn.functional as F

from blueberry.config import ScanlineConfig
from blueberry.models.scanline import CNNLSTM, LineTransformer, build_scanline_model
from blueberry.models.scanline_vit import ScanlineViT

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = ("vit", "sequential", "cnn_lstm")
K, W = 4, 128


def tiny(**changes) -> ScanlineConfig:
    base = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "patch_size": 8, "cnn_channels": 8,
            "lstm_hidden": 16, "lines_per_sample": 20, "dropout": 0.0}
    return dataclasses.replace(ScanlineConfig(), **{**base, **changes})


def build(model: str, line_length: int = W, **changes):
    torch.manual_seed(0)
    return build_scanline_model(tiny(model=model, **changes), K, line_length)


def lines(B: int, L: int, w: int = W, seed: int = 1) -> torch.Tensor:
    x = torch.randn(B, L, w, generator=torch.Generator().manual_seed(seed))
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("L", [1, 20])
@pytest.mark.parametrize("model", MODELS)
def test_logits_shape_and_every_parameter_gets_a_gradient(model, L):
    m = build(model, lines_per_sample=L)
    logits = m(lines(3, L))
    assert logits.shape == (3, K) and torch.isfinite(logits).all()
    logits.sum().backward()
    unused = [name for name, p in m.named_parameters() if p.grad is None]  # DDP would refuse these
    assert not unused


@pytest.mark.parametrize("model", MODELS)
def test_first_and_last_line_of_the_window_reach_the_logits(model):
    """The sequential and LSTM heads read the state after the last line, which has read them all."""
    m = build(model, lines_per_sample=6).eval()
    x = lines(2, 6)
    with torch.no_grad():
        base = m(x)
        for line in (0, 5):
            changed = x.clone()
            changed[:, line] = lines(2, 1, seed=9)[:, 0]
            assert not torch.allclose(m(changed), base), f"line {line} does not reach the logits"


@pytest.mark.parametrize("model", MODELS)
def test_overfits_a_small_fixed_batch(model):
    m = build(model, line_length=32, lines_per_sample=4, d_model=32, d_ff=64, cnn_channels=16, lstm_hidden=32)
    x, y = lines(16, 4, 32), torch.randint(0, K, (16,), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(300):
        logits = m(x)
        if (logits.argmax(-1) == y).float().mean() > 0.95:
            break
        opt.zero_grad()
        F.cross_entropy(logits, y).backward()
        opt.step()
    assert (m(x).argmax(-1) == y).float().mean() > 0.95


@pytest.mark.parametrize("train", [True, False])
def test_sequential_line_states_are_causal(train):
    m = build("sequential", lines_per_sample=6).train(train)
    x = lines(2, 6).requires_grad_()
    states = m.line_states(x)
    assert states.shape == (2, 6, 16)
    probe = torch.randn(16, generator=torch.Generator().manual_seed(4))  # a plain sum of a LayerNorm output is 0
    for t in range(6):
        (grad,) = torch.autograd.grad((states[:, t] @ probe).sum(), x, retain_graph=True)
        per_line = grad.abs().sum(dim=(0, 2))
        assert (per_line[t + 1:] == 0).all(), f"state {t} reads a later line"
        assert (per_line[: t + 1] > 0).all(), f"state {t} ignores an earlier line"
    with torch.no_grad():  # the same through the no-grad (fast) path the evaluation takes
        later = x.detach().clone()
        later[:, 3:] = lines(2, 3, seed=7)
        a, b = m.line_states(x.detach()), m.line_states(later)
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6) and not torch.allclose(a[:, 3:], b[:, 3:])


def test_vit_line_embedding_only_in_multi_line_windows():
    assert build("vit", lines_per_sample=1).line_pos is None
    m = build("vit", lines_per_sample=20).eval()
    one, window = lines(2, 1), lines(2, 20)
    with torch.no_grad():
        before = m(one), m(window)
        m.line_pos.weight.add_(torch.randn(20, 16))  # not a constant: LayerNorm would remove that
        after = m(one), m(window)
    assert torch.equal(before[0], after[0])          # L = 1: no line index to add
    assert not torch.allclose(before[1], after[1])


def test_vit_line_order_matters_only_through_the_line_embedding():
    m = build("vit", lines_per_sample=20).eval()
    x = lines(2, 20)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert not torch.allclose(m(x), m(x[:, perm]), atol=1e-5)
        m.line_pos.weight.zero_()  # without it the encoder sees a set of lines
        assert torch.allclose(m(x), m(x[:, perm]), atol=1e-5)


def test_vit_patch_size_must_divide_the_line_length():
    with pytest.raises(ValueError, match="patch_size=12"):
        build("vit", patch_size=12)
    with pytest.raises(ValueError, match="64 points"):
        build("vit")(lines(1, 1, 64))


@pytest.mark.parametrize("model", ["vit", "sequential"])
def test_window_longer_than_the_model_was_built_for_raises(model):
    with pytest.raises(ValueError, match="lines_per_sample=4"):
        build(model, lines_per_sample=4)(lines(1, 5))


def test_model_field_picks_the_class():
    assert [type(build(m)) for m in MODELS] == [ScanlineViT, LineTransformer, CNNLSTM]
    with pytest.raises(ValueError, match="model='mlp'"):
        build("mlp")


SIZE_CHANGES = [("vit", "d_model", 32), ("vit", "n_layers", 2), ("vit", "d_ff", 64), ("vit", "patch_size", 4),
                ("vit", "lines_per_sample", 8),
                ("sequential", "d_model", 32), ("sequential", "n_layers", 2), ("sequential", "d_ff", 64),
                ("sequential", "cnn_channels", 16), ("sequential", "lines_per_sample", 8),
                ("cnn_lstm", "cnn_channels", 16), ("cnn_lstm", "lstm_hidden", 32), ("cnn_lstm", "n_layers", 2)]


@pytest.mark.parametrize("model, field, value", SIZE_CHANGES, ids=[f"{m}-{f}" for m, f, _ in SIZE_CHANGES])
def test_size_fields_reach_the_parameter_count(model, field, value):
    assert n_params(build(model, **{field: value})) != n_params(build(model))


@pytest.mark.parametrize("model", ["vit", "sequential"])
def test_n_heads_changes_the_output(model):
    x = lines(2, 20)
    with torch.no_grad():
        assert not torch.allclose(build(model, n_heads=2).eval()(x), build(model, n_heads=4).eval()(x))


@pytest.mark.parametrize("model, n_layers", [("vit", 1), ("sequential", 1), ("cnn_lstm", 1), ("cnn_lstm", 2)])
def test_dropout_changes_train_outputs_only(model, n_layers):
    x = lines(4, 20)
    plain, dropped = build(model, n_layers=n_layers), build(model, n_layers=n_layers, dropout=0.3)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), dropped.eval()(x))
        torch.manual_seed(5)
        a = plain.train()(x)
        torch.manual_seed(5)
        b = dropped.train()(x)
    assert not torch.allclose(a, b)
    if model == "cnn_lstm":
        assert dropped.lstm.dropout == (0.3 if n_layers > 1 else 0.0)  # only between LSTM layers

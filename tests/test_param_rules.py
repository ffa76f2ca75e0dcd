"""The parametrizations' rules (models/param.py): at the base every param is sp; away from it each
rule of muP (Tensor Programs V, Table 3) and CompleteP (Dey et al. 2025) does what the paper says,
checked against formulas written here."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model_config
from probes import probes
from test_param_sp import _groups
from blueberry.models.attention import NORM_EPS
from blueberry.models.lm import Decoder
from blueberry.optim.build import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")

V = 48
SHAPES = {"dense": dict(n_experts=0), "moe": dict(router="sigmoid", n_shared_experts=1),
          "mla": dict(attention="mla", mla_q_rank=8)}


def cfg_of(**kw):
    return dataclasses.replace(tiny_model_config(), **{"lr": 3e-3, "dropout": 0.0, **kw})


def built(cfg, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(cfg, V)


def logits_of(model: Decoder) -> torch.Tensor:
    x = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(x)[0]


# --- identity at the base -----------------------------------------------------------------------

@probes("param")
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("param", ["mup", "completep"])
def test_at_the_base_every_param_is_sp(param, shape, optimizer):
    """m = 1 and the base's depth: the same init, logits and optimizer groups as sp, with every
    option that is a ratio to the base switched on; and off the base the param does change them."""
    sp = cfg_of(**SHAPES[shape], optimizer=optimizer)
    same = dataclasses.replace(sp, param=param, base_d_model=sp.d_model, base_d_ff=sp.d_ff,
                               base_expert_d_ff=sp.expert_d_ff, base_n_layers=sp.n_layers, mup_attn_1_over_d=True)
    a, b = built(sp), built(same)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name
    torch.testing.assert_close(logits_of(a), logits_of(b), rtol=0, atol=0)
    assert _groups(a, build_optimizer(a, sp)) == _groups(b, build_optimizer(b, same))
    wide = dataclasses.replace(same, base_d_model=sp.d_model // 2, base_d_ff=sp.d_ff // 2,
                               base_expert_d_ff=sp.expert_d_ff // 2)
    c = built(wide)
    assert not torch.allclose(logits_of(a), logits_of(c))
    if optimizer == "adamw":   # (Muon's LR stays when both sides of every matrix grow: see the Muon test)
        assert _groups(a, build_optimizer(a, sp)) != _groups(c, build_optimizer(c, wide))


# --- muP ----------------------------------------------------------------------------------------

def _wide(param="mup", **kw):
    """d_model 64 with a base of 32 (m = 2), heads 4; the MoE's expert_d_ff doubled too."""
    return cfg_of(**{"d_model": 64, "n_heads": 4, "d_ff": 96, "expert_d_ff": 32, "param": param, "base_d_model": 32,
                     "base_d_ff": 48, "base_expert_d_ff": 16, **kw})


@probes("param", "base_d_model", "base_expert_d_ff")
def test_mup_hidden_init_variance_and_adamw_lr_are_one_over_m():
    cfg = _wide(n_layers=4, n_experts=8)
    model = built(cfg)
    block = model.blocks[0]
    sp_std = 0.02
    out_std = 0.02 / math.sqrt(2 * 4)
    for p, std in [(block.attn.qkv.weight, sp_std), (block.ffn.experts.w_gate, sp_std), (block.ffn.router.weight, sp_std),
                   (block.attn.out_proj.weight, out_std), (block.ffn.experts.w_down, out_std)]:
        assert p.std().item() == pytest.approx(std / math.sqrt(2), rel=0.1)       # variance x 1/m
    assert model.embed.weight.std().item() == pytest.approx(sp_std, rel=0.1)      # input weights: unscaled
    groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {k: {names[id(p)] for p in g["params"]} for k, g in groups.items()}
    assert set(groups) == {"adamw_decay", "adamw_no_decay", "adamw_decay_x0.5"}
    assert members["adamw_decay"] == {"embed.weight"}
    assert all(n.endswith("norm.weight") for n in members["adamw_no_decay"])
    assert groups["adamw_decay_x0.5"]["lr"] == pytest.approx(cfg.lr / 2)
    assert groups["adamw_decay"]["lr"] == groups["adamw_no_decay"]["lr"] == cfg.lr
    assert groups["adamw_decay_x0.5"]["weight_decay"] == cfg.weight_decay              # mup keeps weight decay
    assert {g["eps"] for g in groups.values()} == {1e-8}                                # and eps
    hidden = {n for n, p in model.named_parameters() if p.ndim >= 2 and n != "embed.weight"}
    assert members["adamw_decay_x0.5"] == hidden


@probes("param", "base_d_model")
def test_mup_multiplies_the_readout_input_by_one_over_m():
    """The tied head computes (norm(x) / m) @ E^T: Table 3's output multiplier 1/fan_in, relative to the base."""
    cfg = _wide(n_experts=0, n_layers=1)
    model = built(cfg)
    x = torch.randint(0, V, (1, 6))
    captured = {}
    model.norm.register_forward_hook(lambda m, i, o: captured.setdefault("h", o))
    logits, _ = model(x)
    torch.testing.assert_close(logits, (captured["h"] / 2) @ model.embed.weight.T)
    assert model.readout_scale == 0.5 and built(dataclasses.replace(cfg, param="sp")).readout_scale == 1


@probes("base_d_ff")
def test_base_d_ff_is_the_dense_ffn_base_width():
    """d_ff 96 on a base of 48: the down projection's fan-in doubled (init and LR follow); with
    base_d_ff = d_ff its fan-in is the base's and only d_model's ratio shows."""
    for base_d_ff, m_in in [(48, 2.0), (96, 1.0)]:
        cfg = _wide(n_experts=0, base_d_ff=base_d_ff)
        model = built(cfg)
        assert model.parametrization.scale("blocks.0.ffn.down.weight").adamw_lr == 1 / m_in
        assert model.parametrization.scale("blocks.0.ffn.down.weight").init == pytest.approx(m_in ** -0.5)
        assert model.parametrization.scale("blocks.0.ffn.gate.weight").adamw_lr == 0.5      # fan-in d_model


def _rms_gain_of_one_muon_step(cfg, name: str) -> float:
    """||dW||_op * sqrt(fan_in / fan_out) / muon_lr of `name` after one Muon step (its largest over
    the stacked experts): the update's RMS->RMS operator norm per unit LR."""
    model = built(cfg)
    opt = build_optimizer(model, dataclasses.replace(cfg, weight_decay=0.0))
    p = dict(model.named_parameters())[name]
    before = p.detach().clone()
    x = torch.randint(0, V, (4, 16), generator=torch.Generator().manual_seed(3))
    logits, aux = model(x)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
    opt.step()
    delta = (p.detach() - before).reshape(-1, *p.shape[-2:])
    op = max(torch.linalg.matrix_norm(d, ord=2).item() for d in delta)
    return op * math.sqrt(p.shape[-1] / p.shape[-2]) / cfg.muon_lr


@probes("param", "base_expert_d_ff")
def test_mup_muon_update_is_width_invariant_per_unit_rms():
    """Experts keep expert_d_ff = 16 while d_model doubles: their aspect changes. Under sp (Keller's
    sqrt(max(1, out/in)) alone) the RMS->RMS size of a Muon update of w_gate (out < in) changes by
    sqrt(2); under mup it stays as at the base (the spectral condition). w_down (out > in) is already
    right under Keller's factor and keeps it; matrices whose both sides double are unchanged."""
    base = cfg_of(d_model=32, n_heads=4, n_experts=4, expert_d_ff=16, optimizer="muon", n_layers=1)
    wide = dataclasses.replace(base, d_model=64)
    mup = dataclasses.replace(wide, param="mup", base_d_model=32, base_expert_d_ff=16)
    for name in ("blocks.0.ffn.experts.w_gate", "blocks.0.ffn.experts.w_down"):
        at_base, sp, mu = (_rms_gain_of_one_muon_step(c, name) for c in (base, wide, mup))
        assert mu / at_base == pytest.approx(1.0, abs=0.2), name
        if name.endswith("w_gate"):
            assert sp / at_base == pytest.approx(math.sqrt(2), abs=0.2), name   # sqrt(2) too large under sp
    model = built(mup)
    names = {id(p): n.removesuffix(".weight").split(".")[-1] for n, p in model.named_parameters()}
    groups = {g["name"]: (g["lr"], sorted({names[id(p)] for p in g["params"]}))
              for g in build_optimizer(model, mup).param_groups}
    assert groups["muon"] == (base.muon_lr, ["out_proj", "qkv", "w_down"])       # both sides x2, or out > in
    assert groups["muon_x0.7071"] == (pytest.approx(base.muon_lr / math.sqrt(2)), ["w_gate", "w_up"])
    assert groups["adamw_decay_x0.5"] == (pytest.approx(base.lr / 2), ["router"])  # the router, on AdamW


@probes("mup_attn_1_over_d")
@pytest.mark.parametrize("attention", ["mha", "mla"])
def test_attention_scale_one_over_d(attention):
    """sqrt(base d)/d replaces 1/sqrt(d): the attention module's scale, and the logits change."""
    kw = dict(attention=attention, n_experts=0, mla_rope_dim=4, mla_kv_rank=16)
    on, off = _wide(mup_attn_1_over_d=True, **kw), _wide(**kw)
    d, base_d = (16 + 4, 8 + 4) if attention == "mla" else (16, 8)
    assert built(on).blocks[0].attn.scale == pytest.approx(math.sqrt(base_d) / d)
    assert not torch.allclose(logits_of(built(on)), logits_of(built(off)))
    sp_scale = built(dataclasses.replace(on, param="sp")).blocks[0].attn.scale
    assert sp_scale == (None if attention == "mha" else pytest.approx(1 / math.sqrt(d)))


@probes("mup_zero_readout")
def test_zero_readout_starts_the_logits_at_zero_and_then_learns():
    cfg = _wide(mup_zero_readout=True, n_experts=0)
    model = built(cfg)
    assert (logits_of(model) == 0).all() and (model.embed.weight != 0).any()
    assert (logits_of(built(dataclasses.replace(cfg, mup_zero_readout=False))) != 0).all()
    opt = build_optimizer(model, cfg)
    x = torch.randint(0, V, (2, 10))
    logits, _ = model(x)
    F.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
    opt.step()
    assert logits_of(model).abs().max() > 0


# --- CompleteP ----------------------------------------------------------------------------------

@probes("param", "base_n_layers")
def test_completep_scales_each_residual_branch_by_base_depth_over_depth():
    """One block written out: x + (L_base/L) attn(norm x), then + (L_base/L) ffn(norm x)."""
    cfg = cfg_of(n_experts=0, n_layers=4, param="completep", base_n_layers=1)
    model = built(cfg)
    assert [b.branch_scale for b in model.blocks] == [0.25] * 4
    x = torch.randint(0, V, (1, 7))
    h = model.embed(x)
    for block in model.blocks:
        h = h + 0.25 * block.attn(F.rms_norm(h, (cfg.d_model,), block.attn_norm.weight, NORM_EPS))
        h = h + 0.25 * block.ffn(F.rms_norm(h, (cfg.d_model,), block.ffn_norm.weight, NORM_EPS))
    expected = F.rms_norm(h, (cfg.d_model,), model.norm.weight, NORM_EPS) @ model.embed.weight.T
    torch.testing.assert_close(model(x)[0], expected, rtol=1e-5, atol=1e-6)
    assert [b.branch_scale for b in built(dataclasses.replace(cfg, param="mup")).blocks] == [1.0] * 4


@probes("param", "base_n_layers", "base_d_model")
def test_completep_eps_weight_decay_and_residual_init():
    """AdamW eps x (1/m)(L_base/L) on every AdamW group, hidden weight decay x m (lr x wd stays
    put), and the residual-output init of the base depth, 0.02/sqrt(2 L_base)."""
    cfg = _wide(param="completep", n_experts=0, n_layers=4, base_n_layers=2)
    model = built(cfg)
    groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
    assert [g["eps"] for g in groups.values()] == [pytest.approx(1e-8 / 2 * 2 / 4)] * len(groups)
    assert groups["adamw_decay_x0.5"]["weight_decay"] == pytest.approx(2 * cfg.weight_decay)
    assert groups["adamw_decay_x0.5"]["lr"] * groups["adamw_decay_x0.5"]["weight_decay"] == pytest.approx(
        cfg.lr * cfg.weight_decay)
    out = model.blocks[0].attn.out_proj.weight
    assert out.std().item() == pytest.approx(0.02 / math.sqrt(2 * 2) / math.sqrt(2), rel=0.1)
    deeper = built(dataclasses.replace(cfg, n_layers=8))
    assert deeper.blocks[0].attn.out_proj.weight.std().item() == pytest.approx(out.std().item(), rel=0.1)


def test_a_base_width_that_does_not_split_into_the_heads_is_refused(cli):
    res = cli("train", "lm", "--param", "mup", "--d_model", "64", "--n_heads", "4", "--base_d_model", "20",
              "--print-config")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: base_d_model=20: base_d_model / n_heads (4) must be a whole, even head dim (the base model is "
        "built with this model's n_heads)"]
    assert cli("train", "lm", "--param", "sp", "--base_d_model", "20", "--print-config").returncode == 0

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model_config
from blueberry.models.lm import Decoder

V = 40


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw):
    return tiny_model_config(**{"d_model": 16, "n_heads": 2, "d_ff": 24, "expert_d_ff": 8, "mla_kv_rank": 8, **kw})


def model(**kw) -> Decoder:
    torch.manual_seed(0)
    return Decoder(tiny(**kw), V)


@pytest.mark.parametrize("kw", [dict(n_experts=0), dict(router="softmax"),
                                dict(router="sigmoid", n_shared_experts=1), dict(attention="mla", mla_q_rank=6)],
                         ids=["dense", "softmax-moe", "sigmoid-moe-shared", "mla"])
def test_forward_backward_reaches_every_parameter(kw):
    m = model(**kw)
    idx = torch.randint(0, V, (2, 9))
    logits, aux = m(idx)
    assert logits.shape == (2, 9, V) and set(aux) == {"lb_loss", "z_loss"}
    assert aux["lb_loss"].dim() == 0 and aux["z_loss"].dim() == 0
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), idx[:, 1:].reshape(-1))
    (loss + 0.01 * aux["lb_loss"] + 0.001 * aux["z_loss"]).backward()
    assert math.isfinite(loss.item()) and abs(loss.item() - math.log(V)) < 0.5  # near-uniform at init
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    if kw.get("n_experts") == 0:
        assert aux["lb_loss"] == 0 and aux["z_loss"] == 0
    else:
        assert aux["lb_loss"] > 0 and aux["z_loss"] > 0


def test_lm_head_is_tied_to_the_embedding():
    m = model()
    idx = torch.randint(0, V, (1, 5))
    with torch.no_grad():
        logits, _ = m(idx)
        m.embed.weight[3] += 1.0
        changed, _ = m(idx)
    assert not torch.allclose(logits[..., 3], changed[..., 3])
    assert not any(p.shape == (V, 16) for n, p in m.named_parameters() if n != "embed.weight")


def test_dropout_matters_only_in_train_mode():
    idx = torch.randint(0, V, (2, 8))
    m = model(dropout=0.3)
    m.train()
    assert not torch.allclose(m(idx)[0], m(idx)[0])
    m.eval()
    torch.testing.assert_close(m(idx)[0], m(idx)[0], atol=0, rtol=0)
    m = model(dropout=0.0).train()
    torch.testing.assert_close(m(idx)[0], m(idx)[0], atol=0, rtol=0)


def test_init_scales_residual_outputs():
    m = model(n_layers=4, d_model=64, n_heads=4, expert_d_ff=64, n_shared_experts=1, bias_update_rate=0.1)
    out_std = 0.02 / math.sqrt(8)
    block = m.blocks[0]
    for p in (block.attn.out_proj.weight, block.ffn.experts.w_down, block.ffn.shared.down.weight):
        assert abs(p.std().item() - out_std) < 0.2 * out_std
    for p in (block.attn.qkv.weight, block.ffn.experts.w_gate, m.embed.weight, block.ffn.router.weight):
        assert abs(p.std().item() - 0.02) < 0.1 * 0.02
    assert (block.attn_norm.weight == 1).all() and (m.norm.weight == 1).all()
    assert (block.ffn.router.bias == 0).all()


# --- parameter counts ---------------------------------------------------------------------------

def test_param_counts_match_a_hand_formula():
    d, L, E, k, Fe = 16, 2, 4, 2, 8
    m = model()
    counts = m.param_counts()
    unique = {id(p): p.numel() for p in m.parameters()}
    assert counts["total"] == sum(unique.values())
    expert = 3 * Fe * d
    per_layer = 4 * d * d + 2 * d + E * d + E * expert  # qkv+out, two norms, router, experts
    assert counts["total"] == V * d + L * per_layer + d
    assert counts["active"] == counts["total"] - L * (E - k) * expert
    assert counts["embedding"] == V * d


def test_param_counts_respond_to_the_config():
    d, L, Fe = 16, 2, 8
    base = model().param_counts()

    shared = model(n_shared_experts=2).param_counts()
    assert shared["total"] - base["total"] == L * 2 * 3 * Fe * d
    assert shared["active"] - base["active"] == L * 2 * 3 * Fe * d  # shared experts are always active

    dense = model(n_experts=0, d_ff=24).param_counts()
    assert dense["total"] == dense["active"] == V * d + L * (4 * d * d + 2 * d + 3 * 24 * d) + d

    H, hd, r, kv = 2, 8, 4, 8
    mla_kv = d * (kv + r) + kv + kv * H * 2 * hd + H * hd * d
    for q_rank, q_params in [(0, d * H * (hd + r)), (6, d * 6 + 6 + 6 * H * (hd + r))]:
        mla = model(attention="mla", mla_q_rank=q_rank).param_counts()
        assert mla["total"] - base["total"] == L * (mla_kv + q_params - 4 * d * d)
        assert mla["total"] - mla["active"] == base["total"] - base["active"]
    wider = model(attention="mla", mla_kv_rank=12).param_counts()
    assert wider["total"] - model(attention="mla").param_counts()["total"] == L * 4 * (d + 1 + H * 2 * hd)


# --- expert load --------------------------------------------------------------------------------

def test_take_expert_load_counts_assignments_and_resets():
    m = model(n_layers=3, top_k=2)
    m(torch.randint(0, V, (2, 7)))
    m.eval()
    with torch.no_grad():
        m(torch.randint(0, V, (1, 7)))
    load = m.take_expert_load()
    assert load.shape == (3, 4) and load.dtype == torch.float32
    torch.testing.assert_close(load.sum(-1), torch.full((3,), 3.0 * 7 * 2))
    assert m.take_expert_load().abs().sum() == 0


def test_update_router_bias_moves_each_layer():
    m = model(bias_update_rate=0.1)
    load = torch.tensor([[4.0, 0.0, 2.0, 2.0], [1.0, 1.0, 1.0, 5.0]])
    m.update_router_bias(load)
    torch.testing.assert_close(m.blocks[0].ffn.router.bias, torch.tensor([-0.1, 0.1, 0.0, 0.0]))
    torch.testing.assert_close(m.blocks[1].ffn.router.bias, torch.tensor([0.1, 0.1, 0.1, -0.1]))
    off = model(bias_update_rate=0.0)
    off.update_router_bias(load)
    assert all((b.ffn.router.bias == 0).all() for b in off.blocks)


def test_dense_model_has_no_expert_load():
    m = model(n_experts=0)
    m(torch.randint(0, V, (1, 4)))
    assert m.take_expert_load().shape == (0, 0)
    m.update_router_bias(torch.zeros(0, 0))

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model_config
import blueberry.models.moe as moe_module
from blueberry.models.moe import MoE, Router, dispatch, load_balance_loss, router_z_loss


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw):
    return tiny_model_config(**{"d_model": 16, "n_shared_experts": 0, **kw})


@pytest.fixture
def grouped_calls(monkeypatch):
    """Counts torch._grouped_mm calls, so a test knows which dispatch path ran."""
    calls = []
    real = torch._grouped_mm

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_grouped_mm", spy)
    return calls


def naive_moe(x, idx, w, w_gate, w_up, w_down):
    """Reference: every expert on its boolean-masked tokens."""
    out = torch.zeros_like(x)
    for e in range(w_gate.shape[0]):
        mask = idx == e
        rows = mask.any(dim=-1)
        if not rows.any():
            continue
        xe = x[rows]
        h = (F.silu(xe @ w_gate[e].T) * (xe @ w_up[e].T)) @ w_down[e].T
        out[rows] = out[rows] + (w * mask).sum(dim=-1)[rows, None] * h
    return out


def make_case(D=8, Fd=16, E=4, N=7, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    # expert 2 gets no token; expert 0 gets most
    idx = torch.tensor([[0, 1], [3, 0], [0, 1], [1, 3], [0, 3], [3, 1], [0, 1]])[:N]
    w = torch.rand(N, 2, generator=g)
    x = torch.randn(N, D, generator=g)
    ws = [torch.randn(E, Fd, D, generator=g) / math.sqrt(D), torch.randn(E, Fd, D, generator=g) / math.sqrt(D),
          torch.randn(E, D, Fd, generator=g) / math.sqrt(Fd)]
    return [t.to(dtype).requires_grad_() for t in (x, *ws)], idx, w


def run_and_grads(fn, tensors, idx, w, **kw):
    x, *ws = tensors
    y = fn(x, idx, w, *ws, **kw)
    # (y**2).mean(), not y.sum(): grouped_mm backward refuses the expanded gradient of a sum
    (y.float() ** 2).mean().backward()
    grads = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return y, grads


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "loop"])
def test_dispatch_matches_naive_loop(grouped, grouped_calls):
    tensors, idx, w = make_case()
    assert not (idx == 2).any()
    y, grads = run_and_grads(dispatch, tensors, idx, w, grouped=grouped)
    assert len(grouped_calls) == (3 if grouped else 0)
    y_ref, grads_ref = run_and_grads(naive_moe, tensors, idx, w)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for name, g, g_ref in zip(["x", "w_gate", "w_up", "w_down"], grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5, msg=name)
    assert grads[1][2].abs().max() == 0, "an expert without tokens gets no gradient"


@pytest.fixture
def gpu_default(monkeypatch):
    """The path choice a GPU makes (grouped where _grouped_mm applies), on this CPU."""
    monkeypatch.setattr(moe_module, "grouped_by_default", lambda device: True)


def test_dispatch_falls_back_when_strides_misaligned(grouped_calls, gpu_default):
    tensors, idx, w = make_case(D=5, Fd=6)  # 20-byte rows: grouped_mm needs 16-byte multiples
    y, grads = run_and_grads(dispatch, tensors, idx, w)
    assert grouped_calls == []
    y_ref, grads_ref = run_and_grads(naive_moe, tensors, idx, w)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)


def test_dispatch_bf16_grouped_is_close(grouped_calls, gpu_default):
    tensors, idx, w = make_case(dtype=torch.bfloat16)
    y, grads = run_and_grads(dispatch, tensors, idx, w)
    assert len(grouped_calls) == 3 and y.dtype == torch.bfloat16
    ref_tensors = [t.detach().float().requires_grad_() for t in tensors]
    y_ref, grads_ref = run_and_grads(naive_moe, ref_tensors, idx, w)
    # bf16 rounding leaves ~0.5% relative error (measured); a 5% scale error or a dropped row is far above 2%.
    for name, got, ref in zip(["y", "x", "w_gate", "w_up", "w_down"], [y, *grads], [y_ref, *grads_ref]):
        error = ((got.float() - ref).norm() / ref.norm()).item()
        assert error < 2e-2, f"{name}: relative error {error:.2e}"
    assert grads[1][2].abs().max() == 0, "an expert without tokens gets no gradient"


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_grouped_path_makes_no_host_sync(router, monkeypatch, grouped_calls):
    torch.manual_seed(0)
    moe = MoE(tiny(router=router, n_shared_experts=1))
    moe.experts.grouped = True   # a GPU's default path (the CPU's, the loop, reads the offsets once)
    x = torch.randn(2, 5, 16, requires_grad=True)

    def sync(*args, **kwargs):
        raise AssertionError("host sync on the grouped MoE path")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "nonzero", "__bool__"):
            m.setattr(torch.Tensor, name, sync)
        y, aux = moe(x)
        ((y ** 2).mean() + aux["lb_loss"] + aux["z_loss"]).backward()
    assert len(grouped_calls) == 3
    assert x.grad is not None and moe.experts.w_down.grad is not None and moe.router.weight.grad is not None


# --- aux losses -------------------------------------------------------------------------------

def test_lb_loss_hand_example():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], requires_grad=True)
    counts = torch.tensor([1, 1, 0])  # token 0 -> expert 0, token 1 -> expert 1
    # f = [.5, .5, 0], P = [.3, .45, .25]: 3 * (.15 + .225)
    loss = load_balance_loss(probs, counts)
    torch.testing.assert_close(loss, torch.tensor(1.125))
    loss.backward()
    torch.testing.assert_close(probs.grad, torch.tensor([[0.75, 0.75, 0.0]] * 2))


def test_lb_loss_is_one_when_balanced_and_grows_when_collapsed():
    E, N = 4, 8
    uniform = torch.full((N, E), 1 / E)
    torch.testing.assert_close(load_balance_loss(uniform, torch.full((E,), 4)), torch.tensor(1.0))
    peaked = torch.tensor([0.7, 0.1, 0.1, 0.1]).expand(N, E)
    collapsed = load_balance_loss(peaked, torch.tensor([N * 2, 0, 0, 0]))
    torch.testing.assert_close(collapsed, torch.tensor(E * 0.7))
    assert collapsed > 2.0


def test_z_loss_hand_example():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # logsumexp = ln 2, ln 4
    torch.testing.assert_close(router_z_loss(logits), torch.tensor(2.5 * math.log(2.0) ** 2))


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_moe_aux_losses_follow_the_formulas(router):
    torch.manual_seed(0)
    moe = MoE(tiny(router=router))
    with torch.no_grad():
        moe.router.weight.normal_(0, 0.5)
    x = torch.randn(3, 4, 16)
    _, aux = moe(x)
    logits = x.reshape(-1, 16) @ moe.router.weight.T
    scores = logits.softmax(-1) if router == "softmax" else logits.sigmoid()
    probs = scores / scores.sum(-1, keepdim=True)
    idx = scores.topk(2, dim=-1).indices
    f = torch.stack([(idx == e).float().sum() for e in range(4)]) / idx.numel()
    torch.testing.assert_close(aux["lb_loss"], 4 * (f * probs.mean(0)).sum())
    torch.testing.assert_close(aux["z_loss"], (torch.logsumexp(logits, -1) ** 2).mean())
    (aux["lb_loss"] + aux["z_loss"]).backward()
    assert moe.router.weight.grad.abs().sum() > 0


# --- router -----------------------------------------------------------------------------------

def make_router(**kw):
    torch.manual_seed(0)
    router = Router(tiny(**kw))
    with torch.no_grad():
        router.weight.normal_(0, 0.5)
    return router


def test_softmax_and_sigmoid_routers_weigh_differently():
    x = torch.randn(10, 16)
    soft, sig = make_router(router="softmax", router_renorm=False), make_router(router="sigmoid", router_renorm=False)
    a, b = soft(x), sig(x)
    torch.testing.assert_close(a.idx, b.idx)  # same weights, monotone maps: same choice
    assert not torch.allclose(a.weights, b.weights)
    torch.testing.assert_close(b.weights, (x @ sig.weight.T).sigmoid().gather(-1, b.idx))
    assert a.weights.sum(-1).max() < 1.0


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_renorm_makes_the_k_weights_sum_to_one(router):
    x = torch.randn(10, 16)
    out = make_router(router=router, router_renorm=True)(x)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(10))
    assert not torch.allclose(make_router(router=router, router_renorm=False)(x).weights.sum(-1), torch.ones(10))


@pytest.mark.parametrize("renorm", [False, True])
def test_bias_changes_the_choice_not_the_weights(renorm):
    router = make_router(router="sigmoid", router_renorm=renorm)
    x = torch.randn(20, 16)
    before = router(x)
    router.bias[2] = 10.0
    after = router(x)
    assert (after.idx == 2).any(-1).all() and not (before.idx == 2).any(-1).all()
    chosen = (x @ router.weight.T).sigmoid().gather(-1, after.idx)  # unbiased scores of the chosen experts
    if renorm:
        chosen = chosen / chosen.sum(-1, keepdim=True)
    torch.testing.assert_close(after.weights, chosen)


def test_bias_updates_even_out_a_skewed_router():
    torch.manual_seed(0)
    moe = MoE(tiny(router="sigmoid", top_k=1, bias_update_rate=0.03))
    with torch.no_grad():
        moe.router.weight[0, 0] = 2.0  # expert 0 wins for most tokens
    x = torch.randn(256, 16)
    x[:, 0] += 1.0
    loads = []
    for _ in range(20):
        with torch.no_grad():
            moe(x)
        loads.append(moe.take_load())
        moe.update_bias(loads[-1])

    def ratio(load):
        return (load.max() / load.min().clamp(min=1)).item()

    assert ratio(loads[0]) > 10
    # sign steps oscillate around balance, so judge the load summed over the last few steps
    assert ratio(torch.stack(loads[-4:]).sum(0)) < 4
    assert moe.router.bias[0] < 0 and "bias" in moe.router.state_dict()


def test_update_bias_is_a_noop_at_rate_zero():
    moe = MoE(tiny(bias_update_rate=0.0))
    moe.update_bias(torch.tensor([10.0, 0.0, 0.0, 0.0]))
    assert moe.router.bias.abs().sum() == 0


def test_load_counts_every_forward_and_resets():
    moe = MoE(tiny(n_experts=4, top_k=2))
    x = torch.randn(3, 5, 16)
    moe(x)
    moe.eval()
    with torch.no_grad():
        moe(x)
    load = moe.take_load()
    assert load.dtype == torch.float32 and load.sum() == 2 * 15 * 2
    assert moe.take_load().sum() == 0
    assert "load" not in moe.state_dict()


def test_shared_experts_add_an_always_on_ffn():
    torch.manual_seed(0)
    routed_only = MoE(tiny(n_shared_experts=0))
    with_shared = MoE(tiny(n_shared_experts=2))
    with_shared.load_state_dict(routed_only.state_dict(), strict=False)
    x = torch.randn(2, 3, 16)
    y0, _ = routed_only(x)
    y1, _ = with_shared(x)
    torch.testing.assert_close(y1 - y0, with_shared.shared(x))
    assert with_shared.shared.up.weight.shape == (2 * 16, 16)


def test_router_is_excluded_from_muon():
    moe = MoE(tiny())
    assert Router.muon_exclude is True
    assert [n for n, _ in moe.router.named_parameters()] == ["weight"]
    assert getattr(moe.experts, "muon_exclude", False) is False

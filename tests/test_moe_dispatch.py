"""The MoE layer's dispatch path per device: the per-expert loop on the CPU, one grouped GEMM elsewhere.

Both paths stay in use (the CPU by default, a GPU by default), so both are checked here against each
other on the same weights and input: outputs, input gradients and every parameter's gradient.
"""

import copy

import pytest
import torch

from conftest import tiny_model_config
from blueberry.models.moe import MoE, grouped_by_default

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def calls(monkeypatch):
    """Counts torch._grouped_mm calls and reads of a tensor back to the host (`.tolist()`)."""
    seen = {"grouped_mm": 0, "tolist": 0}
    grouped_mm, tolist = torch._grouped_mm, torch.Tensor.tolist

    def spy_mm(*args, **kwargs):
        seen["grouped_mm"] += 1
        return grouped_mm(*args, **kwargs)

    def spy_tolist(self):
        seen["tolist"] += 1
        return tolist(self)

    monkeypatch.setattr(torch, "_grouped_mm", spy_mm)
    monkeypatch.setattr(torch.Tensor, "tolist", spy_tolist)
    return seen


def test_each_device_gets_its_own_default_path():
    assert grouped_by_default(torch.device("cpu")) is False
    assert grouped_by_default(torch.device("cuda", 0)) is True


def _step(moe: MoE, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y, aux = moe(x)
    ((y ** 2).mean() + aux["lb_loss"] + aux["z_loss"]).backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in moe.named_parameters()}


@pytest.mark.parametrize("router,shared", [("softmax", 0), ("sigmoid", 1)])
def test_cpu_default_is_the_loop_and_every_path_gives_the_same_step(router, shared, calls):
    torch.manual_seed(0)
    default = MoE(tiny_model_config(d_model=32, expert_d_ff=16, router=router, n_shared_experts=shared))
    grouped, loop = copy.deepcopy(default), copy.deepcopy(default)
    grouped.experts.grouped, loop.experts.grouped = True, False
    x = torch.randn(3, 7, 32)

    ref = _step(default, x)
    assert calls == {"grouped_mm": 0, "tolist": 1}   # the loop: one read of the offsets, no grouped GEMM
    got = {"grouped": _step(grouped, x)}
    assert calls == {"grouped_mm": 3, "tolist": 1}   # the forced grouped path: 3 grouped GEMMs, no read
    got["loop"] = _step(loop, x)
    assert calls == {"grouped_mm": 3, "tolist": 2}
    for name, (y, gx, grads) in got.items():
        torch.testing.assert_close(y, ref[0], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} output: {m}")
        torch.testing.assert_close(gx, ref[1], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} input grad: {m}")
        assert grads.keys() == ref[2].keys()
        for p, g in grads.items():
            torch.testing.assert_close(g, ref[2][p], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name} {p} grad: {m}")
    assert ref[2]["experts.w_down"].abs().sum() > 0


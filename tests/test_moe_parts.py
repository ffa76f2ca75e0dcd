"""The MoE layer's parts that test_moe's dispatch and routing tests do not reach: the shared SwiGLU
expert, the initial weight scale, which devices take the grouped GEMM and when it applies, and the
experts under autocast (where _grouped_mm would otherwise meet fp32 weights)."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model_config
from blueberry.models.moe import Experts, MoE, Router, SwiGLU, _grouped_mm_applies, grouped_by_default

pytestmark = pytest.mark.usefixtures("one_thread")


def test_swiglu_is_down_of_silu_gate_times_up_without_biases():
    torch.manual_seed(0)
    ffn = SwiGLU(6, 10)
    x = torch.randn(5, 6)
    gate, up, down = ffn.gate.weight, ffn.up.weight, ffn.down.weight
    assert (gate.shape, up.shape, down.shape) == ((10, 6), (10, 6), (6, 10))
    assert sum(p.numel() for p in ffn.parameters()) == 3 * 6 * 10          # no bias anywhere
    expected = (F.silu(x @ gate.T) * (x @ up.T)) @ down.T
    torch.testing.assert_close(ffn(x), expected)


def test_the_shared_expert_adds_one_swiglu_of_n_shared_times_the_expert_width():
    cfg = tiny_model_config(d_model=16, n_experts=4, top_k=2, n_shared_experts=2, expert_d_ff=8)
    layer = MoE(cfg)
    assert layer.shared.gate.weight.shape == (16, 16)                       # 2 shared experts x width 8
    x = torch.randn(2, 3, 16)
    y, _ = layer(x)
    without = MoE(cfg)
    without.load_state_dict(layer.state_dict())
    without.shared = None
    y_routed, _ = without(x)
    torch.testing.assert_close(y.reshape(-1, 16), y_routed.reshape(-1, 16) + layer.shared(x.reshape(-1, 16)))


@pytest.mark.parametrize("make", [lambda: Router(tiny_model_config(d_model=64, n_experts=32)).weight,
                                  lambda: Experts(8, 64, 96).w_gate, lambda: Experts(8, 64, 96).w_up,
                                  lambda: Experts(8, 64, 96).w_down])
def test_router_and_expert_weights_start_at_mean_0_and_std_0_02(make):
    torch.manual_seed(0)
    w = make().detach()
    n = w.numel()                                   # >= 2048 draws: the sample std is within ~4% of 0.02
    assert abs(w.mean().item()) < 4 * 0.02 / n ** 0.5
    assert w.std().item() == pytest.approx(0.02, rel=0.1)


def test_the_router_bias_starts_at_zero_and_only_shifts_the_choice():
    router = Router(tiny_model_config(d_model=8, n_experts=4, top_k=1, router="softmax", router_renorm=False))
    assert router.bias.tolist() == [0.0] * 4 and router.bias.dtype == torch.float32
    x = torch.randn(6, 8)
    before = router(x)
    router.bias[3] = 10.0                          # every token now picks expert 3 ...
    after = router(x)
    assert (after.idx == 3).all()
    torch.testing.assert_close(after.weights.squeeze(-1), before.probs[:, 3])   # ... weighted by its real score


def test_only_the_cpu_keeps_the_per_expert_loop_by_default():
    assert grouped_by_default(torch.device("cpu")) is False
    assert grouped_by_default(torch.device("cuda")) is True and grouped_by_default(torch.device("meta")) is True


def test_grouped_gemm_applies_to_matching_float_dtypes_with_16_byte_strides():
    def case(dtype, d=8, w_dtype=None):
        x = torch.zeros(4, d, dtype=dtype)
        return _grouped_mm_applies(x, torch.zeros(2, 16, d, dtype=w_dtype or dtype))

    assert case(torch.float32) and case(torch.bfloat16) and case(torch.float16)
    assert not case(torch.float32, w_dtype=torch.bfloat16)                    # mixed dtypes
    assert not case(torch.float64) and not case(torch.int32)                  # dtypes it does not take
    assert not case(torch.float32, d=5) and not case(torch.bfloat16, d=4)     # 20- and 8-byte rows
    assert case(torch.bfloat16, d=24)                                         # 48-byte rows


@pytest.mark.parametrize("grouped", [None, True], ids=["default", "grouped"])
def test_experts_under_autocast_compute_in_the_autocast_dtype(grouped):
    """Autocast does not reach torch._grouped_mm: the experts cast x and their weights themselves."""
    torch.manual_seed(0)
    experts = Experts(3, 8, 16)   # bf16 rows of 16 and 32 bytes: _grouped_mm takes them
    experts.grouped = grouped
    x = torch.randn(5, 8)
    idx = torch.tensor([[0, 1], [2, 0], [1, 2], [0, 2], [1, 0]])
    w = torch.rand(5, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = experts(x, idx, w)
    assert y.dtype == torch.bfloat16
    # the reference: each token's experts with x and the weights rounded to bf16 as an nn.Linear would be
    xb, (g, u, d) = x.bfloat16().float(), (p.detach().bfloat16().float() for p in
                                            (experts.w_gate, experts.w_up, experts.w_down))
    ref = torch.stack([sum(w[t, j] * ((F.silu(xb[t] @ g[e].T) * (xb[t] @ u[e].T)) @ d[e].T)
                           for j, e in enumerate(idx[t].tolist())) for t in range(5)])
    error = ((y.float() - ref).norm() / ref.norm()).item()
    assert error < 2e-2, error
    assert experts.w_gate.dtype == torch.float32                              # the parameters stay fp32

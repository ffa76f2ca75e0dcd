"""HybridMuon against torch's Muon and AdamW, parameter grouping, and checkpoint round-trips."""

import io

import pytest
import torch
from torch import nn
from torch.optim._muon import _zeropower_via_newtonschulz as torch_ns

from blueberry.config import LMConfig
from blueberry.optim.build import build_optimizer, group_lrs
from blueberry.optim.muon import NS_COEFFICIENTS, HybridMuon, zeropower_via_newtonschulz
from blueberry.optim.schedules import build_scheduler

FACTORS = [0.25, 1.0, 0.6, 0.1]  # arbitrary LambdaLR factors, so lr changes between steps


def _ref_ns(g):
    return torch_ns(g, NS_COEFFICIENTS, 5, 1e-7)


@pytest.mark.parametrize("shape", [(8, 12), (12, 8)])
def test_ns_2d_is_bit_identical_to_torch(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(zeropower_via_newtonschulz(g), _ref_ns(g))


@pytest.mark.parametrize("shape", [(3, 8, 12), (3, 12, 8), (2, 2, 6, 10)])
def test_ns_batched_orthogonalises_each_matrix_on_its_own(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    g[0] *= 100  # a shared norm would squash the other matrices
    out = zeropower_via_newtonschulz(g)
    assert out.shape == g.shape
    flat_out, flat_g = out.reshape(-1, *shape[-2:]), g.reshape(-1, *shape[-2:])
    for o, m in zip(flat_out, flat_g):
        assert torch.equal(o, _ref_ns(m))


def test_ns_in_fp32_on_cpu_agrees_with_torch_bf16_to_bf16_precision():
    """On the CPU the default runs Newton–Schulz in fp32 (bf16 is emulated there, ~30x slower)."""
    gen = torch.Generator().manual_seed(5)
    init = torch.randn(24, 16, generator=gen)
    grads = [[torch.randn_like(init)] for _ in FACTORS]
    ours, ref = nn.Parameter(init.clone()), nn.Parameter(init.clone())
    hp = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1}
    opt = HybridMuon([{"params": [ours], "use_muon": True, **hp}])
    assert zeropower_via_newtonschulz(init, dtype=torch.float32).dtype == torch.float32
    _run(opt, [ours], grads)
    _run(torch.optim.Muon([ref], **hp), [ref], grads)
    moved_ours, moved_ref = ours.detach() - init, ref.detach() - init
    assert not torch.equal(moved_ours, moved_ref)                      # not the bf16 path
    assert torch.allclose(moved_ours, moved_ref, atol=2e-2 * moved_ref.abs().max().item())


def _run(opt, params, grads_per_step):
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: FACTORS[s % len(FACTORS)])
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        sched.step()


def test_hybrid_muon_matches_torch_muon_on_matrices():
    gen = torch.Generator().manual_seed(2)
    init = [torch.randn(16, 8, generator=gen), torch.randn(8, 16, generator=gen)]  # tall and wide
    grads = [[torch.randn_like(w) for w in init] for _ in FACTORS]
    ours = [nn.Parameter(w.clone()) for w in init]
    ref = [nn.Parameter(w.clone()) for w in init]
    hp = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1}
    _run(HybridMuon([{"params": ours, "use_muon": True, "ns_dtype": "bfloat16", **hp}]), ours, grads)
    _run(torch.optim.Muon(ref, nesterov=True, **hp), ref, grads)
    for a, b, w in zip(ours, ref, init):
        assert not torch.equal(a, w)
        assert torch.equal(a, b)


def test_stacked_expert_weight_is_separate_muon_matrices():
    n_exp, out_dim, in_dim = 3, 12, 8  # out != in: the sqrt(out/in) scaling must come from the last dims
    gen = torch.Generator().manual_seed(3)
    init = torch.randn(n_exp, out_dim, in_dim, generator=gen)
    grads = [torch.randn(n_exp, out_dim, in_dim, generator=gen) for _ in FACTORS]
    for g in grads:
        g[1] *= 50
    stacked = nn.Parameter(init.clone())
    experts = [nn.Parameter(w.clone()) for w in init]
    hp = {"lr": 0.05, "momentum": 0.95, "weight_decay": 0.1}
    _run(HybridMuon([{"params": [stacked], "use_muon": True, "ns_dtype": "bfloat16", **hp}]), [stacked],
         [[g] for g in grads])
    _run(torch.optim.Muon(experts, **hp), experts, [list(g) for g in grads])
    assert torch.equal(stacked.detach(), torch.stack([e.detach() for e in experts]))


def test_hybrid_muon_adamw_groups_match_torch_adamw():
    gen = torch.Generator().manual_seed(4)
    init = [torch.randn(6, 5, generator=gen), torch.randn(5, generator=gen)]
    grads = [[torch.randn_like(w) for w in init] for _ in FACTORS]
    ours = [nn.Parameter(w.clone()) for w in init]
    ref = [nn.Parameter(w.clone()) for w in init]
    hp = [{"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-6, "weight_decay": 0.1},
          {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-8, "weight_decay": 0.0}]
    opt = HybridMuon([{"params": [p], "use_muon": False, **h} for p, h in zip(ours, hp)])
    ref_opt = torch.optim.AdamW([{"params": [p], **h} for p, h in zip(ref, hp)])
    _run(opt, ours, grads)
    _run(ref_opt, ref, grads)
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
        assert set(opt.state[a]) == {"step", "exp_avg", "exp_avg_sq"}
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[a][key], ref_opt.state[b][key])


def test_hybrid_muon_fused_adamw_matches_torch_fused_adamw():
    """The GPU path (fused=None picks it for CUDA parameters), forced here on the CPU, where torch has the
    fused kernel too; also after a state_dict round-trip, which leaves `step` on the CPU."""
    gen = torch.Generator().manual_seed(5)
    init = [torch.randn(6, 5, generator=gen), torch.randn(5, generator=gen)]
    grads = [[torch.randn_like(w) for w in init] for _ in FACTORS]
    ours = [nn.Parameter(w.clone()) for w in init]
    ref = [nn.Parameter(w.clone()) for w in init]
    hp = {"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-6, "weight_decay": 0.1}
    opt = HybridMuon([{"params": ours, "use_muon": False, "fused": True, **hp}])
    ref_opt = torch.optim.AdamW(ref, fused=True, **hp)
    _run(opt, ours, grads[:2])
    _run(ref_opt, ref, grads[:2])
    opt.load_state_dict(opt.state_dict())
    _run(opt, ours, grads[2:])
    _run(ref_opt, ref, grads[2:])
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
        assert opt.state[a]["step"].dtype == torch.float32 and opt.state[a]["step"].item() == len(FACTORS)


def test_muon_group_rejects_vectors():
    with pytest.raises(ValueError, match="Muon"):
        HybridMuon([{"params": [nn.Parameter(torch.ones(4))], "use_muon": True}])


class Router(nn.Module):
    muon_exclude = True

    def __init__(self, d, n_exp):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_exp, d) * 0.1)
        self.noise = nn.Linear(d, n_exp, bias=False)  # a child module: the exclusion must reach it


class Experts(nn.Module):
    def __init__(self, d, n_exp):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_exp, 2 * d, d) * 0.1)


class TinyMoE(nn.Module):
    def __init__(self, vocab=11, d=8, n_exp=3):
        super().__init__()
        # The head is registered before the embedding it is tied to: it must still stay off Muon.
        self.head = nn.Linear(d, vocab, bias=False)
        self.emb = nn.Embedding(vocab, d)
        self.head.weight = self.emb.weight
        self.proj = nn.Linear(d, d)
        self.norm = nn.RMSNorm(d)
        self.experts = Experts(d, n_exp)
        self.router = Router(d, n_exp)
        self.frozen = nn.Parameter(torch.ones(d), requires_grad=False)

    def forward(self, x):
        h = self.proj(self.emb(x))
        gates = torch.softmax(h @ self.router.weight.T + self.router.noise(h), -1)
        y = (gates.unsqueeze(-1) * torch.einsum("btd,eod->bteo", h, self.experts.w)).sum(2)
        d = h.size(-1)
        return self.head(self.norm(h + y[..., :d] * torch.sigmoid(y[..., d:]) * self.frozen))


def _groups(opt):
    return {g["name"]: g for g in opt.param_groups}


def _ids(params):
    return {id(p) for p in params}


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_build_optimizer_groups(optimizer):
    torch.manual_seed(0)
    m = TinyMoE()
    cfg = LMConfig(optimizer=optimizer, lr=1e-3, muon_lr=0.02, muon_momentum=0.9, weight_decay=0.05,
                   beta1=0.8, beta2=0.97)
    opt = build_optimizer(m, cfg)
    groups = _groups(opt)
    matrices = [m.emb.weight, m.proj.weight, m.experts.w, m.router.weight, m.router.noise.weight]
    vectors = [m.proj.bias, m.norm.weight]
    if optimizer == "muon":
        assert isinstance(opt, HybridMuon)
        assert set(groups) == {"muon", "adamw_decay", "adamw_no_decay"}
        assert _ids(groups["muon"]["params"]) == _ids([m.proj.weight, m.experts.w])
        assert _ids(groups["adamw_decay"]["params"]) == _ids([m.emb.weight, m.router.weight,
                                                             m.router.noise.weight])
        muon = groups["muon"]
        assert (muon["use_muon"], muon["lr"], muon["momentum"], muon["weight_decay"]) == (True, 0.02, 0.9, 0.05)
        assert not groups["adamw_decay"]["use_muon"] and not groups["adamw_no_decay"]["use_muon"]
        assert group_lrs(opt) == {"muon": 0.02, "adamw_decay": 1e-3, "adamw_no_decay": 1e-3}
    else:
        assert type(opt) is torch.optim.AdamW
        assert set(groups) == {"adamw_decay", "adamw_no_decay"}
        assert _ids(groups["adamw_decay"]["params"]) == _ids(matrices)
        assert group_lrs(opt) == {"adamw_decay": 1e-3, "adamw_no_decay": 1e-3}
    assert _ids(groups["adamw_no_decay"]["params"]) == _ids(vectors)
    assert groups["adamw_no_decay"]["weight_decay"] == 0.0
    assert groups["adamw_decay"]["weight_decay"] == 0.05
    assert groups["adamw_decay"]["betas"] == groups["adamw_no_decay"]["betas"] == (0.8, 0.97)
    listed = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(listed) == len(set(listed)) == len(matrices) + len(vectors)  # tied once, frozen out


def test_build_optimizer_leaves_out_empty_groups():
    opt = build_optimizer(nn.Linear(4, 4, bias=False), LMConfig(optimizer="muon"))
    assert [g["name"] for g in opt.param_groups] == ["muon"]


def _train(model, opt, sched, steps, start):
    x = torch.arange(24).reshape(2, 12) % 11
    for s in range(start, start + steps):
        x_s = (x * (s + 1)) % 11
        loss = nn.functional.cross_entropy(model(x_s).flatten(0, 1), ((x_s + 1) % 11).flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_from_state_dict_continues_bit_exactly(optimizer):
    cfg = LMConfig(optimizer=optimizer, max_steps=8, warmup_steps=2, schedule="cosine", lr=1e-2)

    def fresh(seed):
        torch.manual_seed(seed)
        model = TinyMoE()
        opt = build_optimizer(model, cfg)
        return model, opt, build_scheduler(opt, cfg)

    model, opt, sched = fresh(0)
    _train(model, opt, sched, 6, 0)

    model, opt, sched = fresh(0)
    _train(model, opt, sched, 3, 0)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed, r_opt, r_sched = fresh(1)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(ckpt["model"])
    r_opt.load_state_dict(ckpt["opt"])
    r_sched.load_state_dict(ckpt["sched"])
    _train(resumed, r_opt, r_sched, 3, 3)

    model, opt, sched = fresh(0)
    _train(model, opt, sched, 6, 0)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert group_lrs(r_opt) == group_lrs(opt)

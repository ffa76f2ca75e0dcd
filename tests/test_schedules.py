"""LR factors against their closed forms, and LambdaLR driving a real optimizer with them."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from blueberry.config import LMConfig
from blueberry.optim import schedules
from blueberry.optim.build import build_optimizer
from blueberry.optim.schedules import build_scheduler, lr_factor

M = 0.1


def cfg(schedule, **kw):
    return LMConfig(**{"schedule": schedule, "max_steps": 101, "warmup_steps": 10, "min_lr_ratio": M,
                       "wsd_decay_frac": 0.2, **kw})


def test_warmup_is_shared_by_all_schedules():
    for name in ("cosine", "linear", "constant", "wsd"):
        c = cfg(name)
        assert lr_factor(0, c) == pytest.approx(1 / 10)
        assert lr_factor(4, c) == pytest.approx(5 / 10)
        assert lr_factor(9, c) == 1.0  # warmup ends at the peak


@pytest.mark.parametrize("name, mid, last", [
    ("cosine", M + (1 - M) * 0.5 * (1 + math.cos(math.pi * 0.5)), M),
    ("linear", 1 - (1 - M) * 0.5, M),
    ("constant", 1.0, 1.0),
])
def test_decay_after_warmup(name, mid, last):
    c = cfg(name)  # decay spans steps 10..100: the midpoint is step 55
    assert lr_factor(10, c) == pytest.approx(1.0)
    assert lr_factor(55, c) == pytest.approx(mid)
    assert lr_factor(100, c) == pytest.approx(last)
    assert lr_factor(150, c) == pytest.approx(last)  # clamped past the end
    if name == "cosine":
        assert lr_factor(30, c) == pytest.approx(M + (1 - M) * 0.5 * (1 + math.cos(math.pi * 20 / 90)))


def test_wsd_is_flat_then_linear_to_min():
    c = cfg("wsd")  # round(0.2 * 101) = 20 decay steps: 81..100
    assert lr_factor(10, c) == 1.0
    assert lr_factor(80, c) == 1.0
    assert lr_factor(81, c) == pytest.approx(1 - (1 - M) * 1 / 20)
    assert lr_factor(90, c) == pytest.approx(1 - (1 - M) * 10 / 20)
    assert lr_factor(100, c) == pytest.approx(M)


def test_last_step_gets_min_even_with_one_step_after_warmup():
    for name in ("cosine", "linear", "wsd"):
        assert lr_factor(4, cfg(name, max_steps=5, warmup_steps=4)) == pytest.approx(M)
        assert lr_factor(0, cfg(name, max_steps=1, warmup_steps=0)) == pytest.approx(M)


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="schedule='nope'"):
        lr_factor(50, cfg("nope"))


def test_a_registered_schedule_is_used(monkeypatch):
    monkeypatch.setitem(schedules.SCHEDULES, "half", lambda step, c: 0.5)
    assert lr_factor(3, cfg("half")) == pytest.approx(0.4)
    assert lr_factor(50, cfg("half")) == 0.5


@pytest.mark.parametrize("name", ["cosine", "linear", "constant", "wsd"])
def test_scheduler_sets_peak_times_factor_every_step(name):
    c = cfg(name, max_steps=30, warmup_steps=5, optimizer="muon", lr=2e-3, muon_lr=0.03)
    model = nn.Sequential(nn.Embedding(7, 4), nn.Linear(4, 4))
    opt = build_optimizer(model, c)
    sched = build_scheduler(opt, c)
    peaks = {"muon": 0.03, "adamw_decay": 2e-3, "adamw_no_decay": 2e-3}
    for s in range(c.max_steps):
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(peaks[g["name"]] * lr_factor(s, c), rel=1e-12)
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.03 * (1.0 if name == "constant" else M))


def _plateau_cfg(**kw):
    from blueberry.config import LMConfig
    return dataclasses.replace(LMConfig(), **{"schedule": "plateau", "warmup_steps": 4, "warmup_init_ratio": 0.01,
                                              "plateau_factor": 0.5, "plateau_patience": 1, "max_steps": 100, **kw})


def test_warmup_starts_from_warmup_init_ratio():
    cfg = _plateau_cfg()
    assert lr_factor(0, cfg) == pytest.approx(0.01 + 0.99 / 4)
    assert lr_factor(3, cfg) == pytest.approx(1.0)
    assert lr_factor(0, dataclasses.replace(cfg, warmup_init_ratio=0.0)) == pytest.approx(0.25)


def test_plateau_warms_up_then_halves_the_lr_when_the_metric_stalls():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, _plateau_cfg(), mode="min")
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1 * (0.01 + 0.99 / 4)) and lrs[3] == pytest.approx(0.1)
    assert lrs[4:] == pytest.approx([0.1, 0.1])          # no decay after warmup by itself
    for value in (1.0, 0.9, 0.95, 0.95):                  # improves, then stalls for 2 > patience evals
        sched.observe(value)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    for _ in range(3):                                    # stepping never undoes the reduction
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    state = sched.state_dict()
    fresh_opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    fresh = build_scheduler(fresh_opt, _plateau_cfg(), mode="min")
    fresh.load_state_dict(state)
    assert fresh.plateau.best == sched.plateau.best and fresh.warmup.last_epoch == sched.warmup.last_epoch


def test_plateau_in_max_mode_waits_for_a_rising_metric():
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    sched = build_scheduler(opt, _plateau_cfg(warmup_steps=0), mode="max")
    for value in (0.5, 0.6, 0.7, 0.8):                    # keeps improving upward: no reduction
        sched.observe(value)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)

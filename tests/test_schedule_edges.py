"""Edges of the LR schedules that mutation testing (benchmarks/mutation.py) showed no test held."""

import pytest
import torch

from blueberry.config import LMConfig
from blueberry.optim.schedules import SCHEDULES, build_scheduler, lr_factor


def cfg(schedule, **kw):
    return LMConfig(**{"schedule": schedule, "min_lr_ratio": 0.1, **kw})


def test_two_steps_after_warmup_go_from_the_peak_to_the_minimum():
    for name in ("cosine", "linear"):
        c = cfg(name, max_steps=6, warmup_steps=4)
        assert [lr_factor(s, c) for s in (3, 4, 5)] == pytest.approx([1.0, 1.0, 0.1])


def test_wsd_decays_at_least_the_last_step():
    c = cfg("wsd", max_steps=4, warmup_steps=0, wsd_decay_frac=0.2)   # round(0.8) = 1 step decays
    assert [lr_factor(s, c) for s in range(4)] == pytest.approx([1.0, 1.0, 1.0, 0.1])


def test_an_unknown_schedule_is_refused_with_the_list_of_schedules():
    message = f"^schedule='nope': must be one of {', '.join(SCHEDULES)}$"
    with pytest.raises(ValueError, match=message):
        lr_factor(50, cfg("nope", max_steps=100))
    with pytest.raises(ValueError, match=message):
        build_scheduler(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1), cfg("nope"))


def test_plateau_keeps_a_reduction_made_as_warmup_ends_and_watches_a_minimum_by_default():
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    sched = build_scheduler(opt, cfg("plateau", warmup_steps=1, plateau_patience=0, plateau_factor=0.5))
    opt.step()
    sched.step()                                   # warmup is over
    for value in (1.0, 2.0):                       # a rising metric stalls a minimum
        sched.observe(value)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    opt.step()
    sched.step()                                   # the finished warmup must not restore the peak
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)

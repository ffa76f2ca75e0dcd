"""The trainer's small decisions, one at a time and without training: epoch budgets in optimizer
steps, which metric value counts as a new best, and which data fingerprint changes a resume refuses."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from blueberry.config import LMConfig, resolve
from blueberry.errors import UserError
from blueberry.train.trainer import BestMetric, _check_fingerprint, budget_in_steps


def data_with(steps_per_epoch: float):
    """A train split whose one epoch is `steps_per_epoch` optimizer steps at grad_accum 1."""
    return SimpleNamespace(epochs_at=lambda micro_batches: micro_batches / steps_per_epoch)


def cfg(**values) -> LMConfig:
    return resolve(LMConfig, file_values={"max_steps": 50, "warmup_steps": 5, "eval_every": 10}, cli_values=values)


def test_an_epoch_budget_rounds_max_steps_up_and_warmup_to_the_nearest_step():
    c = budget_in_steps(cfg(epochs=1.5, warmup_epochs=0.25), data_with(10.0))
    assert (c.max_steps, c.warmup_steps, c.eval_every) == (15, round(2.5), 10)   # 1.5 x 10; 0.25 x 10 = 2.5 -> 2
    c = budget_in_steps(cfg(epochs=1.01, warmup_epochs=0.27), data_with(10.0))
    assert (c.max_steps, c.warmup_steps) == (11, 3)                              # ceil(10.1); round(2.7)


def test_an_epoch_budget_counts_grad_accum_micro_batches_per_step():
    c = budget_in_steps(cfg(epochs=1.0, grad_accum=4), data_with(40.0))
    assert c.max_steps == 10                      # 40 micro-batches an epoch, 4 per step


def test_a_tiny_epoch_budget_is_still_one_step():
    c = budget_in_steps(cfg(epochs=1e-6, warmup_epochs=1e-6), data_with(10.0))
    assert (c.max_steps, c.warmup_steps) == (1, 1)


def test_eval_every_zero_means_once_an_epoch():
    assert budget_in_steps(cfg(eval_every=0), data_with(7.6)).eval_every == 8    # rounded, not cut
    assert budget_in_steps(cfg(eval_every=0), data_with(0.2)).eval_every == 1    # an epoch shorter than a step
    assert budget_in_steps(cfg(eval_every=3), data_with(7.4)).eval_every == 3


def test_a_step_budget_passes_through_unchanged():
    c = cfg()
    assert budget_in_steps(c, data_with(10.0)) is c


@pytest.mark.parametrize("name, mode", [("val/loss", "min"), ("val/perplexity", "min"), ("val/error", "min"),
                                        ("val/accuracy", "max"), ("val/balanced_accuracy", "max")])
def test_best_mode_auto_follows_the_metric_name(name, mode):
    task = SimpleNamespace(best_metric="val/loss")
    assert BestMetric.of(cfg(best_metric=name), task) == BestMetric(name, mode)
    flipped = "max" if mode == "min" else "min"
    assert BestMetric.of(cfg(best_metric=name, best_mode=flipped), task).mode == flipped


def test_without_best_metric_the_tasks_default_is_used():
    assert BestMetric.of(cfg(), SimpleNamespace(best_metric="val/accuracy")) == BestMetric("val/accuracy", "max")


def test_a_new_best_must_beat_the_old_by_more_than_min_delta():
    low, high = BestMetric("val/loss", "min"), BestMetric("val/accuracy", "max")
    assert low.improves(2.0, None, 0.1) and high.improves(0.1, None, 0.1)       # the first finite value
    assert low.improves(1.89, 2.0, 0.1) and not low.improves(1.9, 2.0, 0.1) and not low.improves(2.1, 2.0, 0.0)
    assert high.improves(0.61, 0.5, 0.1) and not high.improves(0.6, 0.5, 0.1) and not high.improves(0.4, 0.5, 0.0)
    assert low.improves(1.99, 2.0, 0.0) and high.improves(0.51, 0.5, 0.0)
    for bad in (math.nan, math.inf, -math.inf):
        assert not low.improves(bad, None, 0.0) and not high.improves(bad, 2.0, 0.0)


def test_a_changed_fingerprint_is_refused_unless_named_in_allow_changed(capsys):
    saved = {"data": "aaa", "tokenizer": "t1"}
    ckpt = Path("/runs/r/checkpoints/step-0000010")
    _check_fingerprint(saved, dict(saved), ckpt, {})                         # unchanged: silent
    _check_fingerprint(saved, {"other": "x"}, ckpt, {})                      # an old checkpoint's keys only
    assert capsys.readouterr().err == ""
    with pytest.raises(UserError) as e:
        _check_fingerprint(saved, {"data": "bbb", "tokenizer": "t2"}, ckpt, {"data": ["x", "y"]})
    message = str(e.value)
    assert "the tokenizer differ" in message and "tokenizer t1 -> t2" in message and "data aaa" not in message
    assert message.endswith("--allow-changed tokenizer to continue on purpose") and str(ckpt) in message
    with pytest.raises(UserError, match=r"the data and tokenizer differ .*data aaa -> bbb, tokenizer t1 -> t2.*"
                                        r"--allow-changed data,tokenizer to"):
        _check_fingerprint(saved, {"data": "bbb", "tokenizer": "t2"}, ckpt, {})
    _check_fingerprint(saved, {"data": "bbb", "tokenizer": "t1"}, ckpt, {"data": ["x", "y"]})
    assert "the data differ from what step-0000010 trained on (allowed)" in capsys.readouterr().err

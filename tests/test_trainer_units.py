"""The trainer's small decisions, one at a time and without training: epoch budgets in optimizer
steps, which metric value counts as a new best, which data fingerprint changes a resume refuses, and
what one optimizer step of grad_accum micro-batches does."""

import contextlib
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from blueberry.config import LMConfig, resolve
from blueberry.errors import UserError
from blueberry.train.trainer import BestMetric, _check_fingerprint, budget_in_steps, optimizer_step


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
    import dataclasses

    task = SimpleNamespace(best_metric="val/loss")   # the naming rule alone: any task's metric names
    assert BestMetric.of(dataclasses.replace(cfg(), best_metric=name), task) == BestMetric(name, mode)
    flipped = "max" if mode == "min" else "min"
    assert BestMetric.of(dataclasses.replace(cfg(), best_metric=name, best_mode=flipped), task).mode == flipped


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


def test_a_changed_fingerprint_is_refused_unless_a_field_behind_it_is_allowed(capsys):
    saved = {"corpus": "aaa", "split": "s1", "tokenizer": "t1"}
    ckpt = Path("/runs/r/checkpoints/step-0000010")
    check = lambda current, allowed: _check_fingerprint(saved, current, ckpt, allowed, LMConfig)   # noqa: E731
    check(dict(saved), {})                                                    # unchanged: silent
    check({"other": "x"}, {})                                                 # an old checkpoint's keys only
    assert capsys.readouterr().err == ""
    # A new corpus: the split follows it and is not named; the tokenizer must be named on its own.
    with pytest.raises(UserError) as e:
        check({"corpus": "bbb", "split": "s2", "tokenizer": "t2"}, {"data": ["x", "y"]})
    message = str(e.value)
    assert "the tokenizer differs from what it trained on: the tokenizer's vocabulary" in message
    assert "tokenizer t1 -> t2" in message and "corpus aaa" not in message and "split" not in message.split(":")[1]
    assert message.endswith("--allow-changed data,tokenizer to continue on purpose") and str(ckpt) in message
    with pytest.raises(UserError, match=r"the corpus and tokenizer differ .*corpus aaa -> bbb, tokenizer t1 -> t2.*"
                                        r"--allow-changed data,tokenizer to"):
        check({"corpus": "bbb", "split": "s2", "tokenizer": "t2"}, {})
    # A new split alone (val_fraction): named as the split, excused by any field behind it.
    with pytest.raises(UserError, match=r": the split differs .*other documents are held out.*--allow-changed "
                                        r"val_fraction to"):
        check({"corpus": "aaa", "split": "s2", "tokenizer": "t1"}, {})
    check({"corpus": "aaa", "split": "s2", "tokenizer": "t1"}, {"data_seed": [0, 1]})
    assert "the split differs from what step-0000010 trained on (allowed)" in capsys.readouterr().err
    check({"corpus": "bbb", "split": "s2", "tokenizer": "t1"}, {"data": ["x", "y"]})
    assert "the corpus differs from what step-0000010 trained on (allowed)" in capsys.readouterr().err
    # An allowed field of another fingerprint excuses nothing here.
    with pytest.raises(UserError, match=r"--allow-changed tokenizer,val_fraction to"):
        check({"corpus": "aaa", "split": "s2", "tokenizer": "t1"}, {"tokenizer": ["a", "a"]})


class _Accelerator:
    """What optimizer_step asks of Accelerate, on one process; records, for each backward, whether it
    ran inside no_sync (DDP skips the gradient all-reduce there) and for which model."""

    def __init__(self):
        self.synced: list[bool] = []
        self.no_sync_models: list = []
        self._inside = False

    def backward(self, loss):
        self.synced.append(not self._inside)
        loss.backward()

    @contextlib.contextmanager
    def no_sync(self, model):
        self.no_sync_models.append(model)
        self._inside = True
        try:
            yield
        finally:
            self._inside = False

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


def test_an_optimizer_step_averages_its_micro_batches_syncs_once_and_leaves_no_gradient():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    w0 = model.weight.detach().clone()
    micro = [(torch.randn(2, 3), torch.randn(2, 1)) for _ in range(3)]

    def loss_of(w, x, y):
        return ((x @ w.T - y) ** 2).mean()

    seen, after = [], []

    def train_loss(m, batch, cfg):
        seen.append((m, cfg))
        loss = loss_of(m.weight, *batch)
        return loss, {"loss": loss}

    task = SimpleNamespace(train_loss=train_loss, after_optimizer_step=lambda *args: after.append(args))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    acc, parts, cfg = _Accelerator(), {}, SimpleNamespace(grad_accum=3, grad_clip=100.0)
    norm, items = optimizer_step(cfg, task, acc, model, optimizer, scheduler, iter(micro), parts)
    w = w0.clone().requires_grad_()
    mean_grad = torch.autograd.grad(sum(loss_of(w, x, y) for x, y in micro) / 3, w)[0]
    torch.testing.assert_close(model.weight.detach(), w0 - mean_grad)                  # lr 1: one mean step
    assert norm.item() == pytest.approx(mean_grad.norm().item(), rel=1e-5)             # the norm before clipping
    assert items == 6                                                                   # 3 x 2 targets
    assert acc.synced == [False, False, True] and acc.no_sync_models == [model, model]  # only the last syncs
    assert seen == [(model, cfg)] * 3 and after == [(model, cfg, acc)]
    assert parts["loss"].item() == pytest.approx(sum(loss_of(w0, x, y) for x, y in micro).item() / 3, rel=1e-6)
    assert model.weight.grad is None                                                    # none left for the next
    assert optimizer.param_groups[0]["lr"] == 0.5                                       # the schedule stepped


@pytest.mark.parametrize("grad_clip", [0.0, 0.5])
def test_grad_clip_zero_leaves_the_step_alone_and_a_positive_one_clips_it(grad_clip):
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 1, bias=False)
    w0 = model.weight.detach().clone()
    x, y = torch.randn(8, 4), torch.randn(8, 1) + 5.0              # a gradient norm far above 0.5
    task = SimpleNamespace(train_loss=lambda m, batch, cfg: (((batch[0] @ m.weight.T - batch[1]) ** 2).mean(), {}),
                           after_optimizer_step=lambda m, cfg, acc: None)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    norm, _ = optimizer_step(SimpleNamespace(grad_accum=1, grad_clip=grad_clip), task, _Accelerator(), model,
                             optimizer, scheduler, iter([(x, y)]), {})
    w = w0.clone().requires_grad_()
    g = torch.autograd.grad(((x @ w.T - y) ** 2).mean(), w)[0]
    assert g.norm() > 1.0
    if grad_clip == 0:
        assert norm is None
        torch.testing.assert_close(model.weight.detach(), w0 - g)
    else:
        assert norm.item() == pytest.approx(g.norm().item(), rel=1e-5)
        torch.testing.assert_close(model.weight.detach(), w0 - g * (0.5 / g.norm()), rtol=1e-4, atol=1e-6)

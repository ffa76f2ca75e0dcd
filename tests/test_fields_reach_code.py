"""Every LMConfig field changes behaviour (DESIGN habit): each has a probe below, or names the test
that proves it end to end. A new field without either fails `test_every_field_is_covered`."""

import dataclasses

import pytest
import torch

from blueberry import rundir
from blueberry.config import LMConfig, field_map, resolve
from blueberry.data.token_cache import build_text_data, token_key
from blueberry.models.lm import Decoder
from blueberry.optim.build import build_optimizer
from blueberry.optim.schedules import lr_factor
from blueberry.tasks.lm import LMTask
from conftest import TINY

TINY_VALUES = dict(arg[2:].split("=", 1) for arg in TINY)
VOCAB = 64


def cfg_with(**changes) -> LMConfig:
    return resolve(LMConfig, cli_values={**TINY_VALUES, **changes})


# --- model --------------------------------------------------------------------------------------

def _forward(cfg, train=False):
    torch.manual_seed(0)
    model = Decoder(cfg, VOCAB).train(train)
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    logits, aux = model(x)
    return model, logits.detach(), aux


MODEL_CHANGES = {
    "d_model": {"d_model": 48}, "n_layers": {"n_layers": 2}, "n_heads": {"n_heads": 4},
    "d_ff": {"n_experts": 0, "d_ff": 96}, "rope_theta": {"rope_theta": 50.0}, "attention": {"attention": "mla"},
    "mla_kv_rank": {"attention": "mla", "mla_kv_rank": 8}, "mla_q_rank": {"attention": "mla", "mla_q_rank": 16},
    "mla_rope_dim": {"attention": "mla", "mla_rope_dim": 4}, "n_experts": {"n_experts": 8},
    "top_k": {"top_k": 1}, "expert_d_ff": {"expert_d_ff": 32}, "n_shared_experts": {"n_shared_experts": 1},
    "router": {"router": "sigmoid"}, "router_renorm": {"router_renorm": False},
}


@pytest.mark.parametrize("field", MODEL_CHANGES)
def test_model_fields_change_the_model(field):
    changes = MODEL_CHANGES[field]
    base = cfg_with(**{k: v for k, v in changes.items() if k != field})
    _, before, _ = _forward(base)
    model, after, _ = _forward(dataclasses.replace(base, **{field: changes[field]}))
    assert before.shape != after.shape or not torch.allclose(before, after)


def test_dropout_changes_training_forwards():
    _, a, _ = _forward(cfg_with(dropout=0.0), train=True)
    _, b, _ = _forward(cfg_with(dropout=0.3), train=True)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("field, aux", [("lb_weight", "lb_loss"), ("z_loss_weight", "z_loss")])
def test_aux_loss_weights_reach_the_loss_and_the_router_gradient(field, aux):
    """The weight multiplies the aux loss inside the loss that is backpropagated."""
    grads, totals = [], []
    for weight in (0.0, 0.5):
        cfg = cfg_with(**{"lb_weight": 0.0, "z_loss_weight": 0.0, field: weight})
        torch.manual_seed(0)
        model = Decoder(cfg, VOCAB)
        x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
        loss, parts = LMTask().train_loss(model, (x, x), cfg)
        loss.backward()
        assert loss.item() == pytest.approx(parts["loss"].item() + weight * parts[aux].item(), rel=1e-6)
        assert parts["aux_loss"].item() == pytest.approx(weight * parts[aux].item(), rel=1e-6)
        totals.append(loss.item())
        grads.append(model.blocks[0].ffn.router.weight.grad.clone())
    assert totals[1] > totals[0]
    assert not torch.allclose(grads[0], grads[1])


def test_bias_update_rate_moves_the_router_bias():
    model, _, _ = _forward(cfg_with(bias_update_rate=0.1))
    model.update_router_bias(model.take_expert_load())
    assert model.blocks[0].ffn.router.bias.abs().sum() > 0
    still, _, _ = _forward(cfg_with(bias_update_rate=0.0))
    still.update_router_bias(still.take_expert_load())
    assert still.blocks[0].ffn.router.bias.abs().sum() == 0


# --- optimizer and schedule ----------------------------------------------------------------------

OPTIM_CHANGES = {"optimizer": ({}, {"optimizer": "muon"}), "lr": ({}, {"lr": 0.1}),
                 "muon_lr": ({"optimizer": "muon"}, {"muon_lr": 0.5}),
                 "muon_momentum": ({"optimizer": "muon"}, {"muon_momentum": 0.5}),
                 "weight_decay": ({"lr": 0.5}, {"weight_decay": 0.9}),
                 "beta1": ({}, {"beta1": 0.5}), "beta2": ({}, {"beta2": 0.5})}


def _params_after_two_steps(cfg):
    torch.manual_seed(0)
    model = Decoder(cfg, VOCAB)
    opt = build_optimizer(model, cfg)
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        loss, _ = LMTask().train_loss(model, (x, x), cfg)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("field", OPTIM_CHANGES)
def test_optimizer_fields_change_the_update(field):
    base, change = OPTIM_CHANGES[field]
    a = _params_after_two_steps(cfg_with(**base))
    b = _params_after_two_steps(cfg_with(**base, **change))
    assert not torch.allclose(a, b)


SCHEDULE_CHANGES = {"schedule": ({}, {"schedule": "linear"}), "warmup_steps": ({}, {"warmup_steps": 7}),
                    "min_lr_ratio": ({}, {"min_lr_ratio": 0.5}), "max_steps": ({}, {"max_steps": 90}),
                    "wsd_decay_frac": ({"schedule": "wsd"}, {"wsd_decay_frac": 0.5}),
                    "warmup_init_ratio": ({}, {"warmup_init_ratio": 0.5})}


@pytest.mark.parametrize("field", SCHEDULE_CHANGES)
def test_schedule_fields_change_the_lr(field):
    base, change = SCHEDULE_CHANGES[field]
    a, b = cfg_with(**{"max_steps": 60, **base}), cfg_with(**{"max_steps": 60, **base, **change})
    assert [lr_factor(s, a) for s in range(60)] != [lr_factor(s, b) for s in range(60)]


# --- data ----------------------------------------------------------------------------------------

DATA_KEY_CHANGES = {"data": {"data": "hf:x/y", "max_docs": 5}, "data_subset": {"data_subset": "other"},
                    "data_split": {"data_split": "validation"}, "max_docs": {"max_docs": 100},
                    "synthetic_docs": {"synthetic_docs": 301}, "val_fraction": {"val_fraction": 0.2},
                    "data_seed": {"data_seed": 1}, "tokenizer": {"tokenizer": "bpe:400"},
                    "text_field": {"text_field": "body"}}


@pytest.mark.parametrize("field", DATA_KEY_CHANGES)
def test_data_fields_change_the_token_cache_key(field):
    assert token_key(cfg_with()) != token_key(cfg_with(**DATA_KEY_CHANGES[field]))


def test_hub_fields_reach_the_hub_call(monkeypatch):
    """The hub is unreachable here: check the call up to the network (name, subset, split, streaming)."""
    import datasets

    from blueberry.data import sources

    calls = []
    monkeypatch.setattr(sources, "require_hub", lambda what: None)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or
                        iter([{"body": f"doc {i}"} for i in range(9)]))
    ds = sources.load_documents(cfg_with(data="hf:org/corpus", data_subset="sub", data_split="validation",
                                         text_field="body", max_docs=4))
    assert calls == [(("org/corpus", "sub"), {"split": "validation", "streaming": True})]
    assert ds["text"] == [f"doc {i}" for i in range(4)]


def test_cache_dir_seq_len_and_leak_ngram_reach_the_data(tmp_path):
    cfg = cfg_with(cache_dir=str(tmp_path / "c"), leak_ngram=8, synthetic_docs=200)
    text = build_text_data(cfg)
    assert str(tmp_path / "c") in text.stats["cache_path"] and text.stats["leak_ngram"] == 8
    assert build_text_data(dataclasses.replace(cfg, leak_ngram=4)).stats["leak_fraction"] >= \
        text.stats["leak_fraction"]
    from blueberry.data.packing import Windows
    assert len(Windows(text.train, 16)) > len(Windows(text.train, 32))


# --- trainer (in-process runs) --------------------------------------------------------------------

def train_inprocess(tmp_path, base=None, **changes):
    """Train in this process: the tiny LM, or `base` (a config of any task) with `changes`."""
    from accelerate.state import AcceleratorState, GradientState

    from blueberry.tasks import load_task
    from blueberry.train.trainer import train

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    changes = {"out_dir": str(tmp_path / "runs"), "wandb_mode": "disabled", "max_steps": 4, "eval_every": 2,
               **changes}
    cfg = dataclasses.replace(base, **changes) if base is not None else cfg_with(**changes)
    run_dir, code = train(cfg, load_task(cfg.task))
    assert code == 0
    return run_dir


def _rows(run_dir, key):
    return {r["step"]: r[key] for r in rundir.read_metrics(run_dir) if key in r}


def test_trainer_fields_reach_the_run(tmp_path, capsys):
    base = train_inprocess(tmp_path / "a")
    knobs = train_inprocess(tmp_path / "b", out_dir=str(tmp_path / "elsewhere"), name="knobs", log_every=3,
                            save_every=1, keep_last=3, save_best=False, batch_size=2, grad_accum=3,
                            eval_batches=1, leak_warn=0.0, leak_ngram=4)
    assert knobs.parent == tmp_path / "elsewhere" and knobs.name.startswith("knobs-")
    assert sorted(_rows(knobs, "train/loss")) == [3, 4]                      # log_every (and the last step)
    assert sorted(_rows(knobs, "val/loss")) == [0, 2, 4]                     # eval_every
    assert _rows(knobs, "tokens_seen")[4] == 4 * 3 * 2 * 32                  # batch_size, grad_accum
    ckpts = sorted(p.name for p in (knobs / "checkpoints").iterdir())
    assert ckpts == ["step-0000002", "step-0000003", "step-0000004"]         # save_every, keep_last, no best
    assert _rows(knobs, "val/loss")[0] != _rows(base, "val/loss")[0]         # eval_batches: other windows
    assert "share a 4-token span with train" in capsys.readouterr().err     # leak_warn


@pytest.mark.parametrize("field, value, key, step", [("seed", 1, "train/loss", 1),
                                                      ("grad_clip", 1e-6, "train/loss", 2),
                                                      ("mixed_precision", "bf16", "val/loss", 0)])
def test_numeric_trainer_fields_change_the_numbers(tmp_path, field, value, key, step):
    a = _rows(train_inprocess(tmp_path / "a"), key)[step]
    b = _rows(train_inprocess(tmp_path / "b", **{field: value}), key)[step]
    assert a != b


def test_epoch_budgets_become_steps(tmp_path):
    import math

    import yaml

    run = train_inprocess(tmp_path, epochs=0.05, warmup_epochs=0.02, eval_every=0, batch_size=4, grad_accum=1)
    windows = rundir.read_summary(run)["data"]["train_windows"]
    per_step = 4 / windows                                       # epochs per optimizer step
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["max_steps"] == math.ceil(0.05 / per_step)
    assert saved["warmup_steps"] == round(0.02 / per_step)
    assert saved["eval_every"] == round(1 / per_step)
    assert max(_rows(run, "train/loss")) == saved["max_steps"]


def test_stop_at_step_is_checked_against_the_epoch_budget():
    from types import SimpleNamespace

    from blueberry.errors import UserError
    from blueberry.train.trainer import budget_in_steps

    data = SimpleNamespace(epochs_at=lambda micro_batches: micro_batches / 100)   # 100 steps per epoch
    assert budget_in_steps(cfg_with(epochs=1, stop_at_step=60), data).max_steps == 100
    with pytest.raises(UserError, match=r"stop_at_step=5000: must be <= max_steps \(100\)"):
        budget_in_steps(cfg_with(epochs=1, stop_at_step=5000), data)


def test_plateau_and_best_metric_and_mode_drive_the_run(tmp_path):
    # best_mode=max on val/loss: every falling loss counts as "no improvement", so with patience 0
    # the plateau schedule halves the LR at each evaluation after warmup.
    run = train_inprocess(tmp_path, schedule="plateau", warmup_steps=1, plateau_patience=0, plateau_factor=0.5,
                          eval_every=1, best_metric="val/loss", best_mode="max", lr=1e-2)
    lrs = _rows(run, "lr")
    # The eval after step 1 sets the plateau's reference; each later eval halves the next step's LR.
    assert [lrs[s] for s in (1, 2, 3, 4)] == pytest.approx([1e-2, 1e-2, 5e-3, 2.5e-3])
    best = rundir.read_summary(run)["best"]
    assert best["mode"] == "max" and best["value"] == max(_rows(run, "val/loss").values())
    accuracy = rundir.read_summary(train_inprocess(tmp_path / "acc", best_metric="val/accuracy"))["best"]
    assert accuracy["metric"] == "val/accuracy" and accuracy["mode"] == "max"


# --- the register -------------------------------------------------------------------------------

PROVEN_END_TO_END = {
    "preset": "test_config.py::test_resolution_order_defaults_preset_file_cli",
    "resume": "test_train_lm.py::test_resume_continues_exactly_like_an_uninterrupted_run",
    "stop_at_step": "test_train_lm.py::test_resume_continues_exactly_like_an_uninterrupted_run",
    "early_stop_patience": "test_train_lm.py::test_early_stopping_stops_and_says_so",
    "early_stop_min_delta": "test_train_lm.py::test_early_stopping_stops_and_says_so",
    "wandb_project": "test_train_lm.py::test_train_writes_run_dir_metrics_checkpoints_and_offline_wandb",
    "wandb_tags": "test_train_lm.py::test_train_writes_run_dir_metrics_checkpoints_and_offline_wandb",
    "wandb_group": "test_fields_reach_code.py::test_wandb_group_and_entity_reach_the_wandb_run",
    "wandb_entity": "test_fields_reach_code.py::test_wandb_group_and_entity_reach_the_wandb_run",
    "wandb_mode": "test_train_lm.py::test_wandb_disabled_still_writes_the_run_dir",
    "compile": "test_compile.py::test_compile_true_compiles_the_model_and_trains_like_eager",
}
PROBED_HERE = {*MODEL_CHANGES, "dropout", "lb_weight", "z_loss_weight", "bias_update_rate", *OPTIM_CHANGES,
               *SCHEDULE_CHANGES, *DATA_KEY_CHANGES, "cache_dir", "seq_len", "leak_ngram", "leak_warn",
               "out_dir", "name", "log_every", "eval_every", "save_every", "keep_last", "save_best",
               "batch_size", "grad_accum", "eval_batches", "seed", "grad_clip", "mixed_precision",
               "epochs", "warmup_epochs", "plateau_factor", "plateau_patience", "best_metric", "best_mode"}


def test_wandb_group_and_entity_reach_the_wandb_run(cli):
    from conftest import run_dirs, wandb_offline_run

    res = cli("train", "lm", *TINY, "--max_steps=1", "--eval_every=1", "--warmup_steps=1",
              "--wandb_group=study-7", "--wandb_entity=lab")
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    summary, _ = wandb_offline_run(run)
    assert summary["entity"] == "lab"
    assert summary["run_group"] == "study-7"


def test_every_field_is_covered():
    import pathlib

    fields = set(field_map(LMConfig))
    assert fields == PROBED_HERE | set(PROVEN_END_TO_END), sorted(fields ^ (PROBED_HERE | set(PROVEN_END_TO_END)))
    for where in PROVEN_END_TO_END.values():
        module, test = where.split("::")
        assert f"def {test}(" in (pathlib.Path(__file__).parent / module).read_text(), where

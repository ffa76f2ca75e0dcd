"""Every config field changes behaviour (DESIGN habit). The probes of the shared and LM fields are
here; each is declared with @probes (tests/probes.py) and `test_every_field_is_probed` fails on any
field of any task that no test in the suite probes."""

import dataclasses
import math

import pytest
import torch

from blueberry import rundir
from blueberry.config import TASK_CONFIGS, LMConfig, RunConfig, coerce, field_map, load_preset, resolve
from blueberry.data.token_cache import build_text_data, token_key
from blueberry.models.lm import Decoder
from blueberry.optim.build import build_optimizer
from blueberry.optim.schedules import lr_factor
from blueberry.tasks.lm import LMTask
from conftest import TINY
from probes import collect, probes

TINY_VALUES = dict(arg[2:].split("=", 1) for arg in TINY)
VOCAB = 64


def cfg_with(**changes) -> LMConfig:
    values = {**TINY_VALUES, **changes}
    if changes.get("warmup_epochs"):      # one warmup budget: TINY's warmup_steps gives way
        values.pop("warmup_steps")
    return resolve(LMConfig, cli_values=values)


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


@probes(*MODEL_CHANGES)
@pytest.mark.parametrize("field", MODEL_CHANGES)
def test_model_fields_change_the_model(field):
    changes = MODEL_CHANGES[field]
    base = cfg_with(**{k: v for k, v in changes.items() if k != field})
    _, before, _ = _forward(base)
    model, after, _ = _forward(dataclasses.replace(base, **{field: changes[field]}))
    assert before.shape != after.shape or not torch.allclose(before, after)


@probes("dropout")
def test_dropout_changes_training_forwards():
    _, a, _ = _forward(cfg_with(dropout=0.0), train=True)
    _, b, _ = _forward(cfg_with(dropout=0.3), train=True)
    assert not torch.allclose(a, b)


@probes("lb_weight", "z_loss_weight")
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


@probes("bias_update_rate")
def test_bias_update_rate_moves_the_router_bias_after_a_step():
    """Through the task's after_optimizer_step, as the trainer calls it: DeepSeek-V3's sign step."""
    from accelerate import Accelerator

    for rate in (0.1, 0.0):
        cfg = cfg_with(bias_update_rate=rate, router="sigmoid")
        model, _, _ = _forward(cfg)
        layer = model.blocks[0].ffn
        load = layer.load.clone()
        assert load.sum() > 0
        LMTask().after_optimizer_step(model, cfg, Accelerator(cpu=True))
        torch.testing.assert_close(layer.router.bias, rate * torch.sign(load.mean() - load))
        assert (layer.router.bias != 0).any() == (rate > 0)


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


@probes(*OPTIM_CHANGES)
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


@probes(*SCHEDULE_CHANGES)
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
    """Not a probe (the key is not the data): a field that shapes the tokens must also name a new
    cache entry, or a changed value would silently reuse the old tokens."""
    assert token_key(cfg_with()) != token_key(cfg_with(**DATA_KEY_CHANGES[field]))


def _text(tmp_path, **changes):
    return build_text_data(cfg_with(**{"cache_dir": str(tmp_path / "cache"), "synthetic_docs": 200, **changes}))


@probes("val_fraction", "max_docs", "synthetic_docs")
def test_document_counts_follow_the_fields(tmp_path):
    """The split holds out ceil(val_fraction * n) of the n = min(max_docs, synthetic_docs) documents."""
    for changes, n, n_val in [({}, 200, 10), ({"val_fraction": 0.2}, 200, 40), ({"max_docs": 50}, 50, 3),
                              ({"synthetic_docs": 120}, 120, 6)]:
        stats = _text(tmp_path, **changes).stats
        assert (stats["train_docs"] + stats["val_docs"], stats["val_docs"]) == (n, n_val), changes


@probes("tokenizer")
def test_tokenizer_sets_the_vocabulary(tmp_path):
    assert [_text(tmp_path, tokenizer=f"bpe:{n}").vocab_size for n in (300, 400)] == [300, 400]


@pytest.fixture
def corpus_file(tmp_path):
    """A local jsonl corpus: lower-case documents under "text", the same upper-cased under "body"."""
    import json

    from blueberry.data.synthetic_text import generate_documents

    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d.lower(), "body": d.upper()}) + "\n" for d in generate_documents(40, 5)))
    return path


@probes("data", "data_seed", "text_field")
def test_local_corpus_split_and_column(tmp_path, corpus_file):
    base = _text(tmp_path, data=str(corpus_file))
    assert base.stats["train_docs"] + base.stats["val_docs"] == 40           # data: the file, not 200 synthetic
    text = base.tokenizer.decode(base.val[:400].tolist())
    assert text.lower() == text and any(c.isalpha() for c in text)
    body = _text(tmp_path, data=str(corpus_file), text_field="body")
    text = body.tokenizer.decode(body.val[:400].tolist())
    assert text.upper() == text and any(c.isalpha() for c in text)             # text_field: the other column
    # data_seed picks which documents are held out (the file itself is the same)
    reseeded = _text(tmp_path, data=str(corpus_file), data_seed=1)
    assert base.tokenizer.decode(base.val.tolist()) != reseeded.tokenizer.decode(reseeded.val.tolist())


@probes("data_seed")
def test_data_seed_generates_another_synthetic_corpus():
    from blueberry.data.sources import load_documents

    a, b = (load_documents(cfg_with(synthetic_docs=5, data_seed=seed))["text"] for seed in (0, 1))
    assert len(a) == len(b) == 5 and not set(a) & set(b)


@probes("data", "data_subset", "data_split", "text_field", "max_docs")
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


@probes("cache_dir")
def test_cache_dir_holds_the_tokens(tmp_path):
    text = build_text_data(cfg_with(cache_dir=str(tmp_path / "c"), synthetic_docs=200))
    assert text.stats["cache_path"].startswith(str(tmp_path / "c"))
    assert (tmp_path / "c" / "tokens").is_dir()


@probes("leak_ngram")
def test_leak_ngram_sets_the_span_of_the_overlap_check(tmp_path):
    from blueberry.data.leakage import leak_fraction

    # short spans recur between any two texts of this corpus; long ones far less often
    short, long = (_text(tmp_path, leak_ngram=n) for n in (8, 16))
    assert short.stats["leak_fraction"] == leak_fraction(short.train, short.val, 32, 8)
    assert long.stats["leak_fraction"] == leak_fraction(long.train, long.val, 32, 16)
    assert short.stats["leak_fraction"] > long.stats["leak_fraction"] + 0.2


def _lm_data(tmp_path, **changes):
    from accelerate import Accelerator

    cfg = cfg_with(**{"cache_dir": str(tmp_path / "cache"), "synthetic_docs": 200, **changes})
    return cfg, LMTask().build_data(cfg, Accelerator(cpu=True))


@probes("seq_len", "batch_size")
def test_seq_len_and_batch_size_shape_the_train_batches(tmp_path):
    for changes, shape in [({}, (4, 32)), ({"seq_len": 16}, (4, 16)), ({"batch_size": 3}, (3, 32))]:
        cfg, data = _lm_data(tmp_path, **changes)
        x, y = next(data.train_batches(0))
        assert x.shape == y.shape == shape, changes
        assert torch.equal(x[:, 1:], y[:, :-1])                                 # y is x shifted by one
    _, short = _lm_data(tmp_path, seq_len=16, leak_ngram=32)
    _, long = _lm_data(tmp_path, seq_len=32, leak_ngram=32)
    assert short.stats["leak_fraction"] > long.stats["leak_fraction"]       # windows of 17 tokens leak whole


@probes("leak_warn")
def test_leak_warn_is_the_warning_threshold(tmp_path, capsys):
    _, data = _lm_data(tmp_path, leak_ngram=8, leak_warn=1.0)
    leak = data.stats["leak_fraction"]
    assert leak > 0.2 and "-token span with train" not in capsys.readouterr().err
    _lm_data(tmp_path, leak_ngram=8, leak_warn=leak)                          # warns above the threshold only
    assert "-token span with train" not in capsys.readouterr().err
    _lm_data(tmp_path, leak_ngram=8, leak_warn=leak / 2)
    assert f"share a 8-token span with train (leak_warn={leak / 2})" in capsys.readouterr().err


@probes("eval_batches")
def test_eval_batches_is_how_much_of_val_an_evaluation_reads(tmp_path):
    import torch.nn.functional as F
    from accelerate import Accelerator

    cfg, data = _lm_data(tmp_path, n_experts=0)                               # (no expert-load figure to draw)
    torch.manual_seed(0)
    model = Decoder(cfg, data.payload["vocab_size"])
    losses = {}
    for n in (1, 3):
        metrics, _ = LMTask().evaluate(model, data, dataclasses.replace(cfg, eval_batches=n), Accelerator(cpu=True))
        x, y = data.payload["val"].batch(range(n * cfg.batch_size))            # the first n micro-batches
        with torch.no_grad():
            expected = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()
        assert metrics["val/loss"] == pytest.approx(expected, rel=1e-5)
        losses[n] = metrics["val/loss"]
    assert losses[1] != losses[3]


# --- trainer (in-process runs) --------------------------------------------------------------------

class CountingTask:
    """The real task, counting the targets (tokens or samples) its train stream hands the trainer."""

    def __init__(self, task):
        self.task, self.yielded = task, 0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def build_data(self, cfg, accelerator):
        data = self.task.build_data(cfg, accelerator)
        stream = data.train_batches

        def counted(start):
            for batch in stream(start):
                self.yielded += batch[1].numel()
                yield batch
        return dataclasses.replace(data, train_batches=counted)


def train_inprocess(tmp_path, base=None, task=None, **changes):
    """Train in this process: the tiny LM, or `base` (a config of any task) with `changes`."""
    from accelerate.state import AcceleratorState, GradientState

    from blueberry.tasks import load_task
    from blueberry.train.trainer import train

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    budget = {} if "epochs" in changes else {"max_steps": 4}     # one budget: steps or epochs
    changes = {"out_dir": str(tmp_path / "runs"), "wandb_mode": "disabled", "eval_every": 2, **budget, **changes}
    cfg = dataclasses.replace(base, **changes) if base is not None else cfg_with(**changes)
    run_dir, code = train(cfg, task or load_task(cfg.task))
    assert code == 0
    return run_dir


def _rows(run_dir, key):
    return {r["step"]: r[key] for r in rundir.read_metrics(run_dir) if key in r}


@probes("out_dir", "name", "log_every", "eval_every", "save_every", "keep_last", "save_best")
def test_trainer_fields_reach_the_run(tmp_path):
    """Each assertion is one field's doing: the base run (defaults) shows the other value."""
    base = train_inprocess(tmp_path / "a")
    knobs = train_inprocess(tmp_path / "b", out_dir=str(tmp_path / "elsewhere"), name="knobs", log_every=3,
                            eval_every=3, save_every=1, keep_last=3, save_best=False)
    assert base.parent == tmp_path / "a" / "runs" and not base.name.startswith("knobs-")
    assert knobs.parent == tmp_path / "elsewhere" and knobs.name.startswith("knobs-")
    assert sorted(_rows(base, "train/loss")) == [1, 2, 3, 4]
    assert sorted(_rows(knobs, "train/loss")) == [3, 4]                      # log_every (and the last step)
    assert sorted(_rows(base, "val/loss")) == [0, 2, 4]
    assert sorted(_rows(knobs, "val/loss")) == [0, 3, 4]                     # eval_every (and the last step)
    assert {p.name for p in (base / "checkpoints").iterdir()} >= {"best", "step-0000004"}
    ckpts = sorted(p.name for p in (knobs / "checkpoints").iterdir())
    assert ckpts == ["step-0000002", "step-0000003", "step-0000004"]         # save_every, keep_last, no best


@probes("grad_accum", "batch_size")
def test_grad_accum_is_a_larger_batch_and_tokens_seen_counts_the_batches(tmp_path):
    """Two micro-batches of 2 windows make the same steps as one of 4 (the sampler deals the same
    windows; no dropout, no load-balancing term). tokens_seen counts what the batches held."""
    runs = {}
    for batch_size, grad_accum in [(2, 2), (4, 1), (2, 1)]:
        counting = CountingTask(LMTask())
        run = train_inprocess(tmp_path / f"b{batch_size}a{grad_accum}", task=counting, batch_size=batch_size,
                              grad_accum=grad_accum, lb_weight=0.0, eval_every=4)
        assert _rows(run, "tokens_seen")[4] == counting.yielded
        runs[batch_size, grad_accum] = run
    accumulated, large, small = (_rows(runs[k], "train/loss") for k in [(2, 2), (4, 1), (2, 1)])
    assert accumulated == pytest.approx(large, rel=1e-4)
    assert small[4] != pytest.approx(large[4], rel=1e-4)
    tokens = {k: _rows(run, "tokens_seen")[4] for k, run in runs.items()}
    assert tokens[2, 2] == tokens[4, 1] == 2 * tokens[2, 1]
    # the micro-batches' gradients are averaged, not summed: the norm is that of the batch of 4
    # (AdamW's step hides a factor 2; the norm, grad_clip and eps do not)
    norms = {k: _rows(run, "train/grad_norm") for k, run in runs.items()}
    assert norms[2, 2] and norms[2, 2] == pytest.approx(norms[4, 1], rel=1e-4)


@probes("seed", "grad_clip", "mixed_precision")
@pytest.mark.parametrize("field, value, key, step", [("seed", 1, "train/loss", 1),
                                                      ("grad_clip", 1e-6, "train/loss", 2),
                                                      ("mixed_precision", "bf16", "val/loss", 0)])
def test_numeric_trainer_fields_change_the_numbers(tmp_path, field, value, key, step):
    a = _rows(train_inprocess(tmp_path / "a"), key)[step]
    b = _rows(train_inprocess(tmp_path / "b", **{field: value}), key)[step]
    assert a != b


@probes("epochs", "warmup_epochs", "eval_every")
def test_epoch_budgets_become_steps(tmp_path):
    import yaml

    run = train_inprocess(tmp_path, epochs=0.05, warmup_epochs=0.02, eval_every=0, batch_size=4, grad_accum=1)
    windows = rundir.read_summary(run)["data"]["train_windows"]
    per_step = 4 / windows                                       # epochs per optimizer step
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["max_steps"] == math.ceil(0.05 / per_step)
    assert saved["warmup_steps"] == round(0.02 / per_step)
    assert saved["eval_every"] == round(1 / per_step)
    assert max(_rows(run, "train/loss")) == saved["max_steps"]


@probes("stop_at_step")
def test_stop_at_step_is_checked_against_the_epoch_budget():
    from types import SimpleNamespace

    from blueberry.errors import UserError
    from blueberry.train.trainer import budget_in_steps

    data = SimpleNamespace(epochs_at=lambda micro_batches: micro_batches / 100)   # 100 steps per epoch
    assert budget_in_steps(cfg_with(epochs=1, stop_at_step=60), data).max_steps == 100
    with pytest.raises(UserError, match=r"stop_at_step=5000: must be <= max_steps \(100\)"):
        budget_in_steps(cfg_with(epochs=1, stop_at_step=5000), data)


@probes("schedule", "plateau_patience", "plateau_factor", "best_metric", "best_mode")
def test_plateau_and_best_metric_and_mode_drive_the_run(tmp_path):
    # best_mode=max on val/loss: every falling loss counts as "no improvement", so with patience 0
    # the plateau schedule multiplies the LR by plateau_factor at each evaluation after warmup.
    run = train_inprocess(tmp_path, schedule="plateau", warmup_steps=1, plateau_patience=0, plateau_factor=0.25,
                          eval_every=1, best_metric="val/loss", best_mode="max", lr=1e-2)
    lrs = _rows(run, "lr")
    # The eval after step 1 sets the plateau's reference; each later eval cuts the next step's LR.
    assert [lrs[s] for s in (1, 2, 3, 4)] == pytest.approx([1e-2, 1e-2, 2.5e-3, 6.25e-4])
    best = rundir.read_summary(run)["best"]
    assert best["mode"] == "max" and best["value"] == max(_rows(run, "val/loss").values())
    accuracy = rundir.read_summary(train_inprocess(tmp_path / "acc", best_metric="val/accuracy"))["best"]
    assert accuracy["metric"] == "val/accuracy" and accuracy["mode"] == "max"


@probes("preset")
def test_preset_sets_the_fields_it_names():
    for name in ("lm-tiny", "moe-exp3"):
        cfg = resolve(LMConfig, preset=name)
        values = {k: coerce(LMConfig, k, v) for k, v in load_preset(name, LMConfig).items()}
        assert cfg.preset == name and {k: getattr(cfg, k) for k in values} == values
    assert resolve(LMConfig, preset="lm-tiny") != resolve(LMConfig, preset="moe-exp3")


@probes("wandb_group", "wandb_entity")
def test_wandb_group_and_entity_reach_the_wandb_run(cli):
    from conftest import run_dirs, wandb_offline_run

    res = cli("train", "lm", *TINY, "--max_steps=1", "--eval_every=1", "--warmup_steps=1",
              "--wandb_group=study-7", "--wandb_entity=lab")
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    summary, _ = wandb_offline_run(run)
    assert summary["entity"] == "lab"
    assert summary["run_group"] == "study-7"


# --- the register -------------------------------------------------------------------------------

def test_every_field_is_probed():
    """Every field of every task's config has a probe somewhere in the suite (see tests/probes.py)."""
    probed = collect()
    shared = set(field_map(RunConfig))
    missing, unknown = [], []
    for task, cls in TASK_CONFIGS.items():
        for name in field_map(cls):
            if (task, name) not in probed and not (name in shared and any(f == name for _, f in probed)):
                missing.append(f"{task}.{name}")
    known = {(task, name) for task, cls in TASK_CONFIGS.items() for name in field_map(cls)}
    unknown = [f"{task}.{name} ({', '.join(tests)})" for (task, name), tests in probed.items()
               if (task, name) not in known]
    assert not missing, (f"fields no test probes: {', '.join(missing)}. Declare @probes('FIELD') (tests/probes.py) "
                         f"on a test that runs the code consuming the field with two values and asserts the difference")
    assert not unknown, f"probes name fields the config does not have: {', '.join(unknown)}"

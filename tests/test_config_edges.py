"""Edges of config resolution and validation that mutation testing (benchmarks/mutation.py) showed
no test held: every spelling of a bool, the message of each bad value, each bound, the budget rule."""

import re

import pytest

from blueberry.config import LMConfig, resolve
from blueberry.errors import UserError


def refused(message, **kw):
    with pytest.raises(UserError, match="^" + re.escape(message) + "$"):
        resolve(LMConfig, **kw)


def test_every_spelling_of_a_bool():
    for text, value in [("true", True), (" Yes ", True), ("1", True), ("ON", True),
                        ("false", False), ("No", False), ("0", False), ("off", False)]:
        assert resolve(LMConfig, cli_values={"save_best": text}).save_best is value, text
    refused("option: save_best='maybe': must be true or false", cli_values={"save_best": "maybe"})


def test_a_bad_value_names_its_layer_field_and_type():
    refused("option: seed='x': must be an integer", cli_values={"seed": "x"})
    refused("recipe: lr='fast': must be a number", recipe={"lr": "fast"})
    refused("config: name={'a': 1}: must be a string", file_values={"name": {"a": 1}})
    refused("run.yaml: dropout=True: must be a number", file_values={"dropout": True}, source="run.yaml")
    refused("preset: top_k=1.5: must be an integer", base={"top_k": 1.5})
    assert resolve(LMConfig, file_values={"wandb_group": None, "task": "lm"}).wandb_group == ""


def test_bounds_are_inclusive_unless_marked_exclusive():
    assert resolve(LMConfig, cli_values={"dropout": 1.0, "seed": 0}).dropout == 1.0
    refused("dropout=1.5: must be <= 1", cli_values={"dropout": 1.5})
    refused("seed=-1: must be >= 0", cli_values={"seed": -1})
    refused("lr=0.0: must be > 0", cli_values={"lr": 0})


def test_lm_relations():
    assert resolve(LMConfig, cli_values={"n_experts": 2, "top_k": 2}).top_k == 2
    refused("top_k=3: must be <= n_experts (2)", cli_values={"n_experts": 2, "top_k": 3})
    assert resolve(LMConfig, cli_values={"attention": "mha", "mla_rope_dim": 5}).mla_rope_dim == 5
    refused("mla_rope_dim=5: must be even", cli_values={"attention": "mla", "mla_rope_dim": 5})
    refused("n_heads=4: head dim d_model/n_heads must be even for RoPE", cli_values={"d_model": 20, "n_heads": 4})
    refused("tokenizer='bpe:x1': use bpe:N (e.g. bpe:8192) or a Hugging Face tokenizer name",
            cli_values={"tokenizer": "bpe:x1"})
    refused("max_docs=0: hub datasets are streamed; set max_docs (e.g. --max_docs 20000)", cli_values={"data": "hf:a/b"})


def test_a_step_budget_from_a_higher_layer_replaces_an_epoch_budget():
    cfg = resolve(LMConfig, file_values={"epochs": 2.0, "warmup_epochs": 0.5}, cli_values={"max_steps": 7})
    assert (cfg.max_steps, cfg.epochs, cfg.warmup_epochs) == (7, 0.0, 0.5)
    cfg = resolve(LMConfig, file_values={"max_steps": 7}, cli_values={"epochs": 2.0})
    assert cfg.epochs == 2.0
    assert resolve(LMConfig, file_values={"max_steps": 7, "epochs": 2.0}).epochs == 2.0   # one file: epochs count
    refused("option: max_steps=7 and epochs=2.0 both set the budget; give one (epochs=0 to count in steps)",
            cli_values={"max_steps": 7, "epochs": 2.0})
    assert resolve(LMConfig, cli_values={"max_steps": 7, "epochs": 0}).max_steps == 7

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


def test_stop_at_step_may_equal_max_steps_but_not_pass_it():
    assert resolve(LMConfig, cli_values={"max_steps": 10, "stop_at_step": 10}).stop_at_step == 10
    refused("stop_at_step=11: must be <= max_steps (10) or 0", cli_values={"max_steps": 10, "stop_at_step": 11})


def test_an_even_mla_rope_dim_is_accepted():
    assert resolve(LMConfig, cli_values={"attention": "mla", "mla_rope_dim": 16}).mla_rope_dim == 16
    assert resolve(LMConfig, cli_values={"attention": "mla", "mla_rope_dim": 4}).mla_rope_dim == 4


def test_an_epoch_budget_stays_when_no_layer_names_a_step_count():
    # `base` (a resumed run's saved config) sets epochs and no max_steps: nothing overrides the epochs.
    assert resolve(LMConfig, base={"epochs": 2.0}).epochs == 2.0


def test_presets_unknown_or_of_another_task_name_the_allowed_ones():
    from blueberry.config import ScanlineConfig, preset_names, preset_task

    lm = [n for n in preset_names() if preset_task(n) == "lm"]
    scan = [n for n in preset_names() if preset_task(n) == "scanline"]
    assert "lm-tiny" in lm and "scanline-tiny" in scan
    refused(f"preset='nope': unknown; allowed: {', '.join(preset_names())}", preset="nope")
    with pytest.raises(UserError, match="^" + re.escape(
            f"preset='lm-tiny': is a lm preset, not scanline; allowed: {', '.join(scan)}") + "$"):
        resolve(ScanlineConfig, preset="lm-tiny")


def test_a_preset_without_a_task_key_belongs_to_the_task_that_loads_it(tmp_path, monkeypatch):
    import blueberry.config as config

    (tmp_path / "bare.yaml").write_text("max_steps: 3\n")
    (tmp_path / "broken.yaml").write_text("task: lm\nmax_steps: [3\n")
    real = config.resources.files
    monkeypatch.setattr(config.resources, "files",
                        lambda pkg: tmp_path if pkg == "blueberry.presets" else real(pkg))
    assert config.preset_task("bare") == ""
    assert resolve(LMConfig, preset="bare").max_steps == 3
    with pytest.raises(UserError, match=r"^preset broken: not valid YAML \(line 3, column 1: "):
        resolve(LMConfig, preset="broken")


def test_config_files_that_cannot_be_used_say_why(tmp_path):
    from blueberry.config import read_config_file

    (tmp_path / "bad.yaml").write_text("lr: 1\n  x: : 2\n")
    with pytest.raises(UserError, match=r"^.*bad\.yaml: not valid YAML \(line 2, column \d+: .+\)$"):
        read_config_file(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- lr\n- 1\n")
    with pytest.raises(UserError, match=r"^.*list\.yaml: must be a mapping of field: value$"):
        read_config_file(tmp_path / "list.yaml")
    (tmp_path / "binary.yaml").write_bytes(b"lr: \xff\xfe\n")
    with pytest.raises(UserError, match=r"^.*binary\.yaml: cannot be read \('utf-8' codec can't decode"):
        read_config_file(tmp_path / "binary.yaml")
    from blueberry.config import _read_yaml
    with pytest.raises(UserError, match=r"^dir: cannot be read \(Is a directory\)$"):   # strerror, not the repr
        _read_yaml(tmp_path, "dir")


def test_an_unknown_field_gets_the_alias_a_near_spelling_or_the_help():
    from blueberry.config import coerce, field_hint

    assert field_hint(LMConfig, "--learning-rate") == " (blueberry calls it lr)"
    assert field_hint(LMConfig, "Learning_Rate") == " (blueberry calls it lr)"
    assert field_hint(LMConfig, "num-layers") == " (blueberry calls it n_layers)"
    assert field_hint(LMConfig, "n_layer_s") == " (did you mean n_layers?)"
    assert field_hint(LMConfig, "zzzzqqq") == "; see `blueberry train lm --help`"
    with pytest.raises(UserError, match=r"^config: unknown field 'learning_rate' \(blueberry calls it lr\)$"):
        coerce(LMConfig, "learning_rate", 0.1)


def test_yaml_problems_say_what_and_where_in_one_line():
    import yaml

    from blueberry.config import yaml_problem

    with pytest.raises(yaml.YAMLError) as e:
        yaml.safe_load("a: b: c\n")
    assert yaml_problem(e.value) == "line 1, column 5: mapping values are not allowed here"
    # a mark from the context alone, and an error with neither mark nor problem (its first line)
    context_only = yaml.MarkedYAMLError(context="while parsing", context_mark=yaml.Mark("f", 0, 2, 4, None, None),
                                        problem="unclosed flow sequence")
    assert yaml_problem(context_only) == "line 3, column 5: unclosed flow sequence"
    assert yaml_problem(yaml.YAMLError("first line\nsecond line")) == "first line"
    with pytest.raises(yaml.YAMLError) as e:
        yaml.safe_load("a: \x00\n")                  # a reader error: no mark, no problem attribute
    assert yaml_problem(e.value) == "unacceptable character #x0000: special characters are not allowed"


def test_only_bpe_colon_digits_is_a_bpe_size_and_a_missing_config_file_is_named(tmp_path):
    from blueberry.config import bpe_size, read_config_file

    assert bpe_size("bpe:512") == 512
    assert bpe_size("gpt2") is None and bpe_size("abcd12") is None and bpe_size("bpe:") is None
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'no.yaml'))}: config file not found$"):
        read_config_file(tmp_path / "no.yaml")

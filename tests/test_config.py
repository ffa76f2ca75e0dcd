"""The run config: presets, resolution order, coercion, validation, and the CLI generated from it."""

import subprocess
import sys

import pytest
import yaml

from blueberry.config import TASK_CONFIGS, LMConfig, coerce, field_map, load_preset, preset_names, preset_task, resolve
from blueberry.errors import UserError


def test_every_preset_resolves_and_validates():
    names = preset_names()
    assert {"lm-tiny", "moe-exp8", "moe-exp3", "dense-cs336", "scanline-tiny", "scanline-vit", "scanline-seq",
            "scanline-cnn-lstm"} <= set(names)
    for name in names:
        cfg = resolve(TASK_CONFIGS[preset_task(name)], preset=name)
        assert cfg.preset == name and cfg.name == name and cfg.task == preset_task(name)


def test_a_preset_of_another_task_is_refused():
    with pytest.raises(UserError, match="is a scanline preset, not lm"):
        resolve(LMConfig, preset="scanline-tiny")


def test_presets_hold_the_studied_architectures():
    exp8 = resolve(LMConfig, preset="moe-exp8")
    assert (exp8.n_experts, exp8.top_k, exp8.d_model, exp8.n_heads, exp8.n_layers, exp8.expert_d_ff,
            exp8.seq_len, exp8.batch_size, exp8.grad_accum, exp8.schedule, exp8.lb_weight, exp8.dropout,
            exp8.weight_decay) == (8, 2, 384, 8, 6, 1536, 512, 24, 4, "cosine", 0.01, 0.1, 0.1)
    exp3 = resolve(LMConfig, preset="moe-exp3")
    assert (exp3.d_model, exp3.n_heads, exp3.n_layers, exp3.expert_d_ff, exp3.n_experts, exp3.top_k,
            exp3.seq_len, exp3.batch_size, exp3.lr) == (256, 8, 6, 512, 4, 2, 128, 16, 3e-3)
    cs336 = resolve(LMConfig, preset="dense-cs336")
    assert (cs336.d_model, cs336.n_layers, cs336.n_heads, cs336.d_ff, cs336.seq_len, cs336.n_experts) == \
        (512, 4, 16, 1344, 256, 0)


def test_resolution_order_defaults_preset_file_cli():
    cfg = resolve(LMConfig, preset="moe-exp3", file_values={"lr": 1e-4, "seed": 5}, cli_values={"seed": 7})
    assert cfg.n_layers == 6          # preset over field default (4)
    assert cfg.lr == 1e-4             # file over preset (3e-3)
    assert cfg.seed == 7              # option over file
    assert resolve(LMConfig).preset == "lm-tiny"


def test_file_may_name_its_preset_and_option_wins():
    assert resolve(LMConfig, file_values={"preset": "moe-exp3"}).n_layers == 6
    assert resolve(LMConfig, file_values={"preset": "moe-exp3"}, cli_values={"preset": "lm-tiny"}).n_layers == 4


def test_coercion_accepts_yaml_spellings_and_rejects_the_rest():
    assert coerce(LMConfig, "lr", "3e-3") == 3e-3          # YAML 1.1 reads 3e-3 as a string
    assert coerce(LMConfig, "save_best", "False") is False  # as `wandb agent` renders booleans
    assert coerce(LMConfig, "max_steps", 10.0) == 10
    for key, bad in [("max_steps", 2.5), ("lr", "fast"), ("save_best", "maybe"), ("lr", True), ("name", [1])]:
        with pytest.raises(UserError, match=key):
            coerce(LMConfig, key, bad)


def test_validation_names_the_field_and_what_is_allowed():
    cases = [({"optimizer": "sgd"}, "optimizer='sgd': must be one of adamw, muon"),
             ({"lr": 0.0}, "lr=0.0: must be > 0"),
             ({"dropout": 1.5}, "dropout=1.5: must be <= 1"),
             ({"top_k": 5}, "top_k=5: must be <= n_experts"),
             ({"n_heads": 3}, "n_heads=3: must divide d_model"),
             ({"stop_at_step": 500}, "stop_at_step=500: must be <= max_steps"),
             ({"tokenizer": "bpe:lots"}, "tokenizer='bpe:lots'"),
             ({"data": "hf:x/y"}, "max_docs=0"),
             ({"lrr": 1}, "unknown field 'lrr' (did you mean lr?)")]
    for values, message in cases:
        with pytest.raises(UserError) as err:
            resolve(LMConfig, cli_values=values)
        assert message in str(err.value)
        assert "\n" not in str(err.value)


def test_every_field_has_help_and_presets_only_name_real_fields():
    for cls in TASK_CONFIGS.values():
        for f in field_map(cls).values():
            assert f.metadata.get("help"), f.name
    for name in preset_names():
        cls = TASK_CONFIGS[preset_task(name)]
        assert set(load_preset(name, cls)) <= set(field_map(cls))


def test_cli_options_are_generated_from_every_field(cli):
    out = cli("train", "lm", "--help").stdout
    for name in field_map(LMConfig):
        assert f"--{name} " in out, name


def test_cli_takes_both_option_spellings_and_bool_values(cli):
    res = cli("train", "lm", "--lr=3e-4", "--seed", "3", "--save_best=false", "--router_renorm", "False",
              "--print-config")
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert (cfg["lr"], cfg["seed"], cfg["save_best"], cfg["router_renorm"], cfg["task"]) == (3e-4, 3, False, False, "lm")


def test_cli_config_file_sits_between_preset_and_options(cli):
    (cli.cwd / "exp.yaml").write_text("preset: moe-exp3\nlr: 1e-4\nseed: 4\n")
    cfg = yaml.safe_load(cli("train", "lm", "--config", "exp.yaml", "--seed=9", "--print-config").stdout)
    assert (cfg["n_layers"], cfg["lr"], cfg["seed"]) == (6, 1e-4, 9)


@pytest.mark.parametrize("args, expected", [
    (["--lrr=1"], "No such option '--lrr'"),
    (["--lr=abc"], "'--lr': 'abc' is not a valid float"),
    (["--optimizer=sgd"], "'--optimizer': 'sgd' is not one of 'adamw', 'muon'"),
    (["--save_best=maybe"], "'--save_best': 'maybe' is not a valid boolean"),
    (["--top_k=9"], "top_k=9: must be <= n_experts (4)"),
    (["--config=missing.yaml"], "missing.yaml: config file not found"),
    (["--resume=nowhere"], "resume=nowhere: no checkpoint there"),
])
def test_bad_input_is_one_line_and_exit_code_2(cli, args, expected):
    res = cli("train", "lm", *args, "--print-config")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.stderr


def test_bad_yaml_file_names_the_file_and_field(cli):
    (cli.cwd / "bad.yaml").write_text("lr: [1, 2\n")
    res = cli("train", "lm", "--config=bad.yaml")
    assert res.returncode == 2 and "bad.yaml: not valid YAML" in res.stderr
    (cli.cwd / "typo.yaml").write_text("n_expert: 8\n")
    res = cli("train", "lm", "--config=typo.yaml")
    assert res.returncode == 2 and "typo.yaml: unknown field 'n_expert' (did you mean n_experts?)" in res.stderr


def test_help_does_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from blueberry.cli import main;"
            "r = CliRunner().invoke(main, ['train', 'lm', '--help']); assert r.exit_code == 0, r.output;"
            "print(sorted(m for m in ('torch', 'wandb', 'datasets', 'transformers', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_recipe_sits_between_the_config_file_and_the_options():
    cfg = resolve(LMConfig, file_values={"lr": 1e-4, "seed": 2}, recipe={"lr": 5e-4, "name": "adam_low", "seed": 3},
                  cli_values={"seed": 9})
    assert (cfg.lr, cfg.name, cfg.seed) == (5e-4, "adam_low", 9)
    assert resolve(LMConfig, recipe={"preset": "moe-exp3"}).n_layers == 6


def test_recipe_takes_the_python_repr_wandb_agent_renders(cli):
    # `wandb agent` renders a dict-valued parameter value as Python repr: --recipe={'k': v, ...}
    res = cli("train", "lm", "--recipe={'optimizer': 'muon', 'muon_lr': 0.01, 'schedule': 'constant'}",
              "--print-config")
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert (cfg["optimizer"], cfg["muon_lr"], cfg["schedule"]) == ("muon", 0.01, "constant")
    bad = cli("train", "lm", "--recipe={'optimzer': 'muon'}")
    assert bad.returncode == 2 and "recipe: unknown field 'optimzer' (did you mean optimizer?)" in bad.stderr

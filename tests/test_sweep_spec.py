"""Sweep YAML validation: W&B's spec, then the blueberry command and its options; every problem is
one line starting with its YAML path."""

import subprocess
import sys
import textwrap

import pytest

from blueberry.errors import UserError
from blueberry.sweep.spec import load_sweep, sweep_warnings, validate_sweep
from blueberry.sweep.trial_options import sweep_options

GOOD = {
    "grid-lm": """
        method: grid
        metric: {name: val/loss, goal: minimize}
        command: [blueberry, train, lm, "${args}"]
        parameters:
          lr: {values: [0.001, 0.003]}
          optimizer: {values: [adamw, muon]}
          n_layers: {min: 2, max: 4}
          d_model: {distribution: q_uniform, min: 64, max: 256, q: 64}
          save_best: {values: [true, false]}
          preset: {value: lm-tiny}
        early_terminate: {type: hyperband, min_iter: 3}
    """,
    "random-scanline": """
        method: random
        run_cap: 20
        command: ["${env}", "${interpreter}", -m, blueberry.cli, train, scanline, "${args}"]
        parameters:
          lr: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-2}
          dropout: {distribution: uniform, min: 0.0, max: 0.3}
          model: {values: [vit, sequential, cnn_lstm], probabilities: [0.5, 0.25, 0.25]}
          weight_decay: {distribution: log_uniform, min: -9.2, max: -2.3}
          config: {value: base.yaml}
    """,
    "bayes-accelerate": """
        method: bayes
        metric: {name: val/loss, goal: minimize, target: 2.5}
        command: [accelerate, launch, --config_file, launch/1gpu.yaml, -m, blueberry.cli, train, lm, "${args}"]
        parameters:
          muon_lr: {distribution: q_log_uniform_values, min: 0.001, max: 0.1, q: 0.001}
          beta2: {distribution: uniform, min: 0.9, max: 0.999}
    """,
    "program": """
        program: blueberry/cli.py
        command: ["${env}", "${interpreter}", "${program}", train, lm, "${args_no_equals}"]
        method: random
        parameters:
          seed: {distribution: int_uniform, min: 0, max: 100}
    """,
}


def _write(tmp_path, text, name="x.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_sweeps_validate_clean(tmp_path, name):
    path = _write(tmp_path, GOOD[name])
    assert validate_sweep(load_sweep(path), source=str(path)) == []


BASE = 'command: [blueberry, train, lm, "${args}"]\n'
BAD = {   # yaml (method etc.), the YAML path reported, a piece of the message
    "unknown method": ("method: grd\nparameters: {lr: {value: 0.1}}", "method", "'grd' is not one of"),
    "missing method": ("parameters: {lr: {value: 0.1}}", "method", "required"),
    "grid continuous": ("method: grid\nparameters: {lr: {distribution: uniform, min: 0.1, max: 0.2}}",
                        "parameters.lr", "cannot enumerate distribution 'uniform'"),
    "grid probabilities": ("method: grid\nparameters: {model: {values: [a, b], probabilities: [0.5, 0.5]}}",
                           "parameters.model.probabilities", "no probabilities"),
    "probabilities sum": ("method: random\nparameters: {optimizer: {values: [adamw, muon], probabilities: [0.5, 0.4]}}",
                          "parameters.optimizer.probabilities", "sum to 0.9, not 1"),
    "probabilities length": ("method: random\nparameters: {optimizer: {values: [adamw, muon], probabilities: [1.0]}}",
                             "parameters.optimizer.probabilities", "1 probabilities for 2 values"),
    "min >= max": ("method: random\nparameters: {lr: {distribution: uniform, min: 0.5, max: 0.5}}",
                   "parameters.lr", "min 0.5 is not less than max 0.5"),
    "int_uniform floats": ("method: random\nparameters: {n_layers: {distribution: int_uniform, min: 1.5, max: 4}}",
                           "parameters.n_layers.min", "is not an integer"),
    "ambiguous bounds": ("method: random\nparameters: {n_layers: {min: 1, max: 4.0}}",
                         "parameters.n_layers", "ambiguous"),
    "log values min": ("method: random\nparameters: {lr: {distribution: log_uniform_values, min: 0.0, max: 0.1}}",
                       "parameters.lr.min", "is not a number > 0"),
    "yaml string number": ("method: random\nparameters: {lr: {distribution: log_uniform_values, min: 1e-5, max: 0.1}}",
                           "parameters.lr.min", "write 1.0e-5"),
    "bayes no metric": ("method: bayes\nparameters: {lr: {distribution: uniform, min: 0.1, max: 0.2}}",
                        "metric", "required by method bayes"),
    "unknown distribution": ("method: random\nparameters: {lr: {distribution: loguniform, min: 0.1, max: 0.2}}",
                             "parameters.lr.distribution", "'loguniform' is not one of"),
    "unknown parameter key": ("method: random\nparameters: {lr: {distribution: uniform, mn: 0.1, max: 0.2}}",
                              "parameters.lr.mn", "unknown key for distribution 'uniform' (did you mean min?)"),
    "value and values": ("method: grid\nparameters: {lr: {value: 0.1, values: [0.1]}}", "parameters.lr",
                         "both value and values"),
    "not an option": ("method: grid\nparameters: {lrr: {values: [0.1]}}", "parameters.lrr",
                      "not an option of 'blueberry train lm' (did you mean lr?)"),
    "invalid categorical": ("method: grid\nparameters: {optimizer: {values: [adamw, sgd]}}",
                            "parameters.optimizer.values[1]", "optimizer='sgd': must be one of adamw, muon"),
    "preset of other task": ("method: grid\nparameters: {preset: {values: [lm-tiny, scanline-tiny]}}",
                             "parameters.preset.values[1]", "is a scanline preset, not lm"),
    "unknown preset": ("method: grid\nparameters: {preset: {value: nope}}", "parameters.preset.value", "unknown"),
    "out of bounds": ("method: grid\nparameters: {dropout: {values: [0.1, 1.5]}}", "parameters.dropout.values[1]",
                      "must be <= 1"),
    "out of bounds distribution": ("method: random\nparameters: {beta1: {distribution: uniform, min: 0.5, max: 1.5}}",
                                   "parameters.beta1 (max)", "must be <= 1"),
    "int option non-integer": ("method: random\nparameters: {n_layers: {distribution: uniform, min: 1.0, max: 4.0}}",
                               "parameters.n_layers", "takes an integer"),
    "wrong type": ("method: grid\nparameters: {max_steps: {values: [100, many]}}", "parameters.max_steps.values[1]",
                   "must be an integer"),
    "nested block": ("method: grid\nparameters: {weight_decay: {parameters: {wd: {values: [0.1]}}}}",
                     "parameters.weight_decay", "nested parameters: block is passed as one dict option"),
    "nested bad inner": ("method: grid\nparameters: {reg: {parameters: {wd: {distribution: uniform, min: 0.1, max: 0.2}}}}",
                         "parameters.reg.parameters.wd", "cannot enumerate"),
    "unknown top-level key": ("method: grid\nparameter: {lr: {value: 0.1}}\nparameters: {lr: {value: 0.1}}",
                              "parameter", "unknown key (did you mean parameters?)"),
    "hyperband keys": ("method: grid\nmetric: {name: val/loss}\nparameters: {lr: {value: 0.1}}\n"
                       "early_terminate: {type: hyperband, eta: 1}", "early_terminate", "needs min_iter"),
    "hyperband no metric": ("method: grid\nparameters: {lr: {value: 0.1}}\nearly_terminate: {type: hyperband, min_iter: 2}",
                            "metric", "required by early_terminate"),
    "metric goal": ("method: bayes\nmetric: {name: val/loss, goal: min}\nparameters: {lr: {value: 0.1}}",
                    "metric.goal", "'min' is not one of minimize, maximize"),
    "args json": ("method: grid\ncommand: [blueberry, train, lm, '${args_json}']\nparameters: {lr: {value: 0.1}}",
                  "command[3]", "use ${args}"),
    "no args": ("method: grid\ncommand: [blueberry, train, lm]\nparameters: {lr: {value: 0.1}}", "command",
                "has no ${args}"),
    "no task": ("method: grid\ncommand: [blueberry, train, '${args}']\nparameters: {lr: {value: 0.1}}", "command",
                "not 'train TASK'"),
    "no program": ("method: grid\nparameters: {lr: {value: 0.1}}", "program", "required"),
    "bad macro": ("method: grid\ncommand: [blueberry, train, lm, '${argz}']\nparameters: {lr: {value: 0.1}}",
                  "command[3]", "not a W&B macro (did you mean args?)"),
    "boolean flags": ("method: grid\ncommand: [blueberry, train, lm, '${args_no_boolean_flags}']\n"
                      "parameters: {save_best: {values: [true, false]}}", "command[3]", "bare --flag"),
    "json file not a config": ("method: grid\ncommand: [blueberry, train, lm, '${args_json_file}']\n"
                               "parameters: {lr: {value: 0.1}}", "command[3]", "as --config ${args_json_file}"),
    "recipe in a json file": ("method: grid\ncommand: [blueberry, train, lm, --config, '${args_json_file}']\n"
                              "parameters: {recipe: {value: {lr: 0.1}}}", "parameters.recipe", "takes fields only"),
    "nested block in a json file": ("method: grid\ncommand: [blueberry, train, lm, --config, '${args_json_file}']\n"
                                    "parameters: {name: {parameters: {a: {value: 1}}}}", "parameters.name",
                                    "arrives as a mapping"),
    "yaml text number": ("method: grid\nparameters: {warmup_steps: {values: [1e3]}}", "parameters.warmup_steps.values[0]",
                         "write 1000"),
    "yaml text float": ("method: grid\nparameters: {weight_decay: {values: [1e3]}}", "parameters.weight_decay.values[0]",
                        "write 1.0e+3"),
    "null value": ("method: grid\nparameters: {data: {value: null}}", "parameters.data.value", "null reaches"),
    "nested recipe field": ("method: grid\nparameters: {recipe: {parameters: {lrr: {value: 0.1}}}}",
                            "parameters.recipe.parameters.lrr", "not a field (did you mean lr?)"),
    "nested recipe value": ("method: grid\nparameters: {recipe: {parameters: {dropout: {values: [0.1, 2.0]}}}}",
                            "parameters.recipe.parameters.dropout.values[1]", "must be <= 1"),
    "metric not logged": ("method: grid\nmetric: {name: val/los}\nparameters: {lr: {value: 0.1}}", "metric.name",
                          "(did you mean val/loss?)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_reports_its_path(tmp_path, case):
    text, path, message = BAD[case]
    if "command:" not in text and case != "no program":
        text = BASE + text
    file = _write(tmp_path, text)
    problems = validate_sweep(load_sweep(file), source="x.yaml")
    assert any(p.startswith(f"x.yaml: {path}: ") and message in p for p in problems), problems


def test_every_problem_of_one_file_is_reported(tmp_path):
    file = _write(tmp_path, """
        method: grid
        command: [blueberry, train, lm, "${args}"]
        parameters:
          lr: {distribution: uniform, min: 0.1, max: 0.01}
          lrr: {values: [0.1]}
          optimizer: {values: [sgd]}
          dropout: {values: [0.1, 0.2], probabilities: [0.5, 0.6]}
          beta1: {value: 0.9, mx: 1}
    """)
    problems = validate_sweep(load_sweep(file), source="x.yaml")
    paths = [p.split(": ")[1] for p in problems]
    assert paths == ["parameters.lr", "parameters.dropout.probabilities", "parameters.beta1.mx",
                     "parameters.lrr", "parameters.optimizer.values[0]"], problems


def test_sweep_options_finds_the_command():
    forms = {
        "lm": {"command": ["blueberry", "train", "lm", "${args}"]},
        "scanline": {"command": ["${env}", "${interpreter}", "-m", "blueberry.cli", "train", "scanline", "${args}"]},
        "lm ": {"command": ["accelerate", "launch", "--num_processes", "2", "-m", "blueberry.cli", "train", "lm",
                            "${args}"]},
        "lm  ": {"program": "blueberry/cli.py", "command": ["${env}", "${interpreter}", "${program}", "train", "lm",
                                                            "${args}"]},
        "scanline ": {"command": ["/opt/venv/bin/blueberry", "train", "scanline", "--config", "base.yaml", "${args}"]},
    }
    for task, config in forms.items():
        found, options = sweep_options(config)
        assert found == task.strip()
        assert {"config", "lr", "preset", "seed"} <= options and "task" not in options
    assert "n_experts" in sweep_options(forms["lm"])[1] and "n_experts" not in sweep_options(forms["scanline"])[1]
    assert sweep_options({"program": "train.py"}) is None
    assert sweep_options({"command": ["blueberry", "evaluate", "${args}"]}) is None


def test_other_programs_get_only_the_wandb_checks():
    config = {"method": "random", "program": "train.py", "parameters": {"anything": {"values": [1, 2]}}}
    assert validate_sweep(config, source="x.yaml") == []


def test_deprecated_log_distributions_warn_as_wandb():
    config = {"method": "random", "program": "train.py",
              "parameters": {"lr": {"distribution": "log_uniform", "min": -9.0, "max": -2.0},
                             "wd": {"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1}}}
    assert sweep_warnings(config, source="x.yaml") == [
        "x.yaml: parameters.lr: uses log_uniform, where min/max specify base-e exponents. "
        "Use log_uniform_values to specify limit values."]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match=r"x\.yaml: not valid YAML at line 2"):
        load_sweep(_write(tmp_path, "method: grid\n  parameters: [\n"))
    with pytest.raises(UserError, match="nope.yaml: sweep file not found"):
        load_sweep(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="x.yaml: must be a mapping"):
        load_sweep(_write(tmp_path, "- method\n"))


def test_sweep_modules_import_no_torch_wandb_or_optuna():
    code = ("import sys, blueberry.sweep.spec, blueberry.sweep.command, blueberry.sweep.engine, "
            "blueberry.sweep.hyperband; print(sorted(m for m in ('torch', 'wandb', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_sweep_modules_form_no_import_circle():
    """Every import between blueberry.sweep modules, at module level or inside a function, points one way."""
    import ast
    from pathlib import Path

    import blueberry.sweep

    folder = Path(blueberry.sweep.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("blueberry.sweep."):
                found.add(node.module.rsplit(".", 1)[1])
        graph[path.stem] = found

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph.get(start, ()))

    circles = sorted(m for m in graph if reaches(m, m))
    assert circles == []
    assert len(graph) >= 10 and "params" in graph["hyperband"] and "hyperband" in graph["wandb_spec"]


def test_text_options_take_dict_values_as_rendered():
    # the agent passes a dict as its repr text (--name={'a': 1}): a text option accepts it, a number does not
    config = {"method": "grid", "command": ["blueberry", "train", "lm", "${args}"],
              "parameters": {"wandb_group": {"parameters": {"study": {"value": "lr"}}},
                             "name": {"values": [{"a": 1}, [1, 2]]},
                             "lr": {"values": [{"a": 1}]}}}
    assert validate_sweep(config, source="x.yaml") == [
        "x.yaml: parameters.lr.values[0]: lr=\"{'a': 1}\": must be a number"]

"""Load a W&B sweep YAML and list every problem in it, each as one line starting with its YAML path.

Two layers. First W&B's sweep spec: the rules of W&B's JSON schema (wandb/sweeps
src/sweeps/config/schema.json) and of its `schema_violations_from_proposed_config`, `grid_search_next_runs`,
`bayes_search_next_runs` and the `wandb sweep` CLI; jsonschema is not a dependency, so the schema is the
table below. Then blueberry: the trial must run `blueberry train TASK` with `${args}`, every swept
parameter must be one of that command's options, and values the option provably rejects are reported
through `blueberry.config` (coerce, the field bounds, the presets).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from blueberry.config import EXTRA_TRAIN_OPTIONS, TASK_CONFIGS, check_bounds, coerce, field_map, load_preset
from blueberry.errors import UserError
from blueberry.sweep.command import ARG_MACROS, ENVVAR, MACROS, as_delivered, sweep_command

METHODS = ("grid", "random", "bayes", "custom")
TOP_LEVEL_KEYS = ("program", "command", "method", "metric", "metrics", "parameters", "early_terminate",
                  "run_cap", "name", "description", "project", "entity", "controller", "scheduler", "job",
                  "image_uri", "apiVersion", "kind")
_STRING_KEYS = ("program", "name", "description", "project", "entity", "job", "image_uri", "apiVersion")
METRIC_KEYS = ("name", "goal", "target", "impute", "impute_while_running")
HYPERBAND_KEYS = ("type", "min_iter", "max_iter", "s", "eta", "strict")
_ENGINE_METHODS = {"wandb": ("grid", "bayes", "random"), "optuna": ("custom",), "ax": ("custom",)}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")

# distribution -> (required keys, optional keys), each key with its kind (see _KINDS)
DISTRIBUTIONS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "constant": ({"value": "any"}, {}),
    "categorical": ({"values": "values"}, {}),
    "categorical_w_probabilities": ({"values": "values", "probabilities": "probs"}, {}),
    "int_uniform": ({"min": "int", "max": "int"}, {}),
    "uniform": ({"min": "number", "max": "number"}, {}),
    "q_uniform": ({"min": "number", "max": "number"}, {"q": "pos"}),
    "log_uniform": ({"min": "number", "max": "number"}, {}),
    "log_uniform_values": ({"min": "pos", "max": "number"}, {}),
    "q_log_uniform": ({"min": "number", "max": "number"}, {"q": "pos"}),
    "q_log_uniform_values": ({"min": "pos", "max": "number"}, {"q": "pos"}),
    "inv_log_uniform": ({"min": "number", "max": "number"}, {}),
    "inv_log_uniform_values": ({"min": "pos", "max": "number"}, {}),
    "normal": ({}, {"mu": "number", "sigma": "nonneg"}),
    "q_normal": ({}, {"mu": "number", "sigma": "nonneg", "q": "pos"}),
    "log_normal": ({}, {"mu": "number", "sigma": "nonneg"}),
    "q_log_normal": ({}, {"mu": "number", "sigma": "nonneg", "q": "pos"}),
    "beta": ({}, {"a": "nonneg", "b": "nonneg"}),
    "q_beta": ({}, {"a": "nonneg", "b": "nonneg", "q": "pos"}),
}
DEFAULTS = {"q": 1.0, "mu": 0.0, "sigma": 1.0, "a": 1, "b": 1}   # the schema's defaults
GRIDDABLE = ("constant", "categorical", "int_uniform", "q_uniform")   # grid_search_next_runs
DEPRECATED = ("log_uniform", "inv_log_uniform", "q_log_uniform")     # params.PARAM_DEPRECATION_MAP


def is_finite_number(v: Any) -> bool:
    """A real number (not a bool), finite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "any": (lambda v: True, "anything"),
    "number": (is_finite_number, "a number"),
    "int": (_is_int, "an integer"),
    "pos": (lambda v: is_finite_number(v) and v > 0, "a number > 0"),
    "nonneg": (lambda v: is_finite_number(v) and v >= 0, "a number >= 0"),
    "values": (lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list"),
    "probs": (lambda v: isinstance(v, list) and len(v) > 0 and all(is_finite_number(p) and p >= 0 for p in v),
              "a list of numbers >= 0"),
}


def load_sweep(path: str | Path) -> dict[str, Any]:
    """The sweep YAML as a dict (read with yaml.safe_load, as `wandb sweep` reads it)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: sweep file not found")
    try:
        config = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not config:
        raise UserError(f"{path}: empty sweep file")
    if not isinstance(config, dict):
        raise UserError(f"{path}: must be a mapping of sweep keys (method:, parameters:, command:, ...)")
    return config


def distribution_of(spec: dict[str, Any]) -> str:
    """The distribution W&B gives a parameter spec; "parameters" for a nested block."""
    if "parameters" in spec:
        return "parameters"
    if spec.get("distribution"):
        return spec["distribution"]
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical_w_probabilities" if "probabilities" in spec else "categorical"
    return "int_uniform" if _is_int(spec.get("min")) and _is_int(spec.get("max")) else "uniform"


def setting(spec: dict[str, Any], key: str) -> Any:
    return spec.get(key, DEFAULTS.get(key))


def quantize(x: float, q: float) -> int | float:
    """round(x / q) * q, an int when q is an int (W&B's HyperParameter.ppf)."""
    k = round(x / q)
    return int(k * q) if _is_int(q) else float(k * q)


def validate_sweep(config: dict[str, Any], *, source: str) -> list[str]:
    """Every problem of a sweep config, one line each: `SOURCE: YAML.PATH: what is wrong`."""
    problems: list[str] = []

    def add(path: str, message: str) -> None:
        problems.append(f"{source}: {path}: {message}" if path else f"{source}: {message}")

    if not isinstance(config, dict):
        add("", "must be a mapping of sweep keys (method:, parameters:, command:, ...)")
        return problems
    for key in config:
        if key not in TOP_LEVEL_KEYS:
            add(str(key), f"unknown key{_did_you_mean(key, TOP_LEVEL_KEYS)}; allowed: {', '.join(TOP_LEVEL_KEYS)}")
    for key in _STRING_KEYS:
        if key in config and not isinstance(config[key], str):
            add(key, f"{config[key]!r} is not a string")
    if "kind" in config and config["kind"] != "sweep":
        add("kind", f"{config['kind']!r} is not one of sweep")
    if "command" in config and not isinstance(config["command"], list):
        add("command", "must be a list such as [blueberry, train, lm, ${args}]")

    method = config.get("method")
    if method is None:
        add("method", f"required: one of {', '.join(METHODS[:3])}")
    elif method not in METHODS:
        add("method", f"{method!r} is not one of {', '.join(METHODS)}{_did_you_mean(method, METHODS)}")
    if "run_cap" in config and not (_is_int(config["run_cap"]) and config["run_cap"] > 0):
        add("run_cap", f"{config['run_cap']!r} is not an integer > 0")

    if "metric" in config:
        _check_metric("metric", config["metric"], add)
    _check_metrics(config, method, add)
    scheduler = config.get("scheduler")
    _check_scheduler(config, method, add)
    if "controller" in config:
        controller = config["controller"]
        if not isinstance(controller, dict) or controller.get("type") not in ("local", "cloud"):
            add("controller", "must be {type: local} or {type: cloud}")

    top: dict[str, str | None] = {}
    leaves: list[tuple[str, str]] = []
    if "parameters" in config:
        top = _check_parameters("parameters", config["parameters"], add, leaves)
    elif not (isinstance(scheduler, dict) and scheduler.get("search_space")):
        add("parameters", "required: the parameters to sweep")

    if method == "grid":
        for path, dist in leaves:
            if dist == "categorical_w_probabilities":
                add(f"{path}.probabilities", "method grid takes no probabilities: it runs every value once")
            elif dist not in GRIDDABLE:
                add(path, f"method grid cannot enumerate distribution '{dist}': "
                          "use values, value, int_uniform or q_uniform, or method random or bayes")
    if method == "bayes" and "metric" not in config:
        add("metric", "required by method bayes: {name: val/loss, goal: minimize}")
    if method == "custom" and not isinstance(scheduler, dict):
        add("method", "custom needs a scheduler: block (engine optuna or ax)")
    if "early_terminate" in config:
        _check_early_terminate(config["early_terminate"], add)
        if "metric" not in config:
            add("metric", "required by early_terminate: hyperband compares runs on it")
    _check_program(config, top, add)
    return problems


def sweep_warnings(config: dict[str, Any], *, source: str) -> list[str]:
    """Notes that do not make a sweep invalid: W&B's deprecation of the v1 log distributions (their
    min/max are natural-log exponents), and distributions the local bayes engine cannot map."""
    out = []
    leaves: list[tuple[str, str]] = []
    if isinstance(config.get("parameters"), dict):
        _check_parameters("parameters", config["parameters"], lambda path, message: None, leaves)
    for path, dist in leaves:
        if dist in DEPRECATED:
            out.append(f"{source}: {path}: uses {dist}, where min/max specify base-e exponents. "
                       f"Use {dist}_values to specify limit values.")
        if dist in ("beta", "q_beta") and config.get("method") == "bayes":
            out.append(f"{source}: {path}: the local bayes engine (Optuna) has no mapping for {dist}; "
                       "W&B's own bayes and method random do")
    return out


# --- W&B's spec ---------------------------------------------------------------------------------

def _check_metric(path: str, metric: Any, add: Callable[[str, str], None]) -> bool:
    if not isinstance(metric, dict):
        add(path, "must be a mapping {name: val/loss, goal: minimize}")
        return False
    for key in metric:
        if key not in METRIC_KEYS:
            add(f"{path}.{key}", f"unknown key{_did_you_mean(key, METRIC_KEYS)}; allowed: {', '.join(METRIC_KEYS)}")
    if not isinstance(metric.get("name"), str):
        add(f"{path}.name", "required: the logged metric to optimise, e.g. val/loss")
    enums = {"goal": ("minimize", "maximize"), "impute": ("latest", "best", "worst"),
             "impute_while_running": ("latest", "best", "worst", "false")}
    for key, allowed in enums.items():
        if key in metric and metric[key] not in allowed:
            add(f"{path}.{key}", f"{metric[key]!r} is not one of {', '.join(allowed)}")
    if "target" in metric and not is_finite_number(metric["target"]):
        add(f"{path}.target", f"{metric['target']!r} is not a number{_yaml_number_hint(metric['target'])}")
    return True


def _check_metrics(config: dict, method: Any, add: Callable[[str, str], None]) -> None:
    if "metrics" not in config:
        return
    metrics = config["metrics"]
    if not isinstance(metrics, list) or len(metrics) < 2:
        add("metrics", "must be a list of at least 2 metrics (one objective goes in metric:)")
    else:
        for i, metric in enumerate(metrics):
            _check_metric(f"metrics[{i}]", metric, add)
    if "metric" in config:
        add("metrics", "metric and metrics cannot both be set")
    elif method is not None and method != "custom":
        add("metrics", f"requires method custom (got {method})")


def _check_scheduler(config: dict, method: Any, add: Callable[[str, str], None]) -> None:
    if "scheduler" not in config:
        return
    scheduler = config["scheduler"]
    if not isinstance(scheduler, dict):
        add("scheduler", "must be a mapping {engine: optuna|ax|wandb, source: ..., ...}")
        return
    for key in scheduler:
        if key not in ("engine", "source", "optimizer", "search_space"):
            add(f"scheduler.{key}", "unknown key; allowed: engine, source, optimizer, search_space")
        elif key != "engine" and not isinstance(scheduler[key], str):
            add(f"scheduler.{key}", f"{scheduler[key]!r} is not a string")
    engine = scheduler.get("engine")
    if engine not in _ENGINE_METHODS:
        add("scheduler.engine", f"{engine!r} is not one of {', '.join(_ENGINE_METHODS)}")
    elif method not in _ENGINE_METHODS[engine]:
        add("scheduler.engine", f"{engine} does not support method {method}; it takes "
                                f"{', '.join(_ENGINE_METHODS[engine])}")
    for key in ("optimizer", "search_space"):
        if key in scheduler and "source" not in scheduler:
            add(f"scheduler.{key}", "needs scheduler.source (the file that defines it)")
    if "early_terminate" in config:
        add("early_terminate", "cannot be used together with scheduler")
    controller = config.get("controller")
    if isinstance(controller, dict) and controller.get("type") == "local":
        add("controller", "type local cannot be used together with scheduler")


def _check_early_terminate(et: Any, add: Callable[[str, str], None]) -> None:
    from blueberry.sweep.hyperband import hyperband_bands

    if not isinstance(et, dict):
        add("early_terminate", "must be a mapping {type: hyperband, min_iter: 3}")
        return
    for key in et:
        if key not in HYPERBAND_KEYS:
            add(f"early_terminate.{key}", f"unknown key{_did_you_mean(key, HYPERBAND_KEYS)}; "
                                          f"allowed: {', '.join(HYPERBAND_KEYS)}")
    if "type" not in et:
        add("early_terminate.type", "required: hyperband")
    elif et["type"] != "hyperband":
        add("early_terminate.type", f"{et['type']!r} is not one of hyperband")
    checks = {"max_iter": (_is_int, "an integer"), "min_iter": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
              # the schema says number, but W&B runs range(s)
              "s": (_is_int, "an integer"), "eta": (lambda v: is_finite_number(v) and v > 1, "a number > 1"),
              "strict": (lambda v: isinstance(v, bool), "true or false")}
    bad = False
    for key, (ok, what) in checks.items():
        if key in et and not ok(et[key]):
            add(f"early_terminate.{key}", f"{et[key]!r} is not {what}{_yaml_number_hint(et[key])}")
            bad = True
    if "min_iter" not in et and not ("max_iter" in et and "s" in et):
        add("early_terminate", "hyperband needs min_iter, or max_iter and s")
    elif not bad and not hyperband_bands(et):
        add("early_terminate", "max_iter, s and eta give no band >= 1: raise max_iter or lower eta")


def _check_parameters(path: str, parameters: Any, add: Callable[[str, str], None],
                      leaves: list[tuple[str, str]]) -> dict[str, str | None]:
    """Check a parameters block; returns each top-level name's distribution (None when malformed)
    and appends (path, distribution) of every well-formed leaf to `leaves`."""
    if not isinstance(parameters, dict) or not parameters:
        add(path, "must be a non-empty mapping of name: {values: [...]} | {distribution: ...} | ...")
        return {}
    out: dict[str, str | None] = {}
    for name, spec in parameters.items():
        where = f"{path}.{name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            add(where, "a parameter name starts with a letter or _ and holds only letters, digits, _ . -")
        out[name] = dist = _check_parameter(where, spec, add, leaves)
        if dist is not None and dist != "parameters":
            leaves.append((where, dist))
    return out


def _check_parameter(path: str, spec: Any, add: Callable[[str, str], None],
                     leaves: list[tuple[str, str]]) -> str | None:
    if not isinstance(spec, dict):
        add(path, "must be a mapping: {value: V}, {values: [...]}, {distribution: D, min: A, max: B} "
                  "or {parameters: {...}}")
        return None
    if "parameters" in spec:
        for key in spec:
            if key != "parameters":
                add(f"{path}.{key}", "unknown key beside a nested parameters: block (it takes only parameters:)")
        _check_parameters(f"{path}.parameters", spec["parameters"], add, leaves)
        return "parameters"
    dist = spec.get("distribution")
    if dist is None:
        if "value" in spec and "values" in spec:
            add(path, "has both value and values: give one")
            return None
        if "min" in spec and "max" in spec and is_finite_number(spec["min"]) and is_finite_number(spec["max"]) \
                and isinstance(spec["min"], int) != isinstance(spec["max"], int):
            # `wandb sweep` refuses these (_validate_config_and_fill_distribution)
            add(path, f"min {spec['min']!r} and max {spec['max']!r} are ambiguous: give both as integers "
                      "(int_uniform) or both as floats (uniform), or name a distribution")
            return None
        if not {"value", "values", "min", "max"} & spec.keys():
            add(path, "needs value, values, min and max, a distribution, or a nested parameters: block")
            return None
        dist = distribution_of(spec)
    elif not isinstance(dist, str) or dist not in DISTRIBUTIONS:
        add(f"{path}.distribution", f"{dist!r} is not one of {', '.join(DISTRIBUTIONS)}"
                                    f"{_did_you_mean(str(dist), DISTRIBUTIONS)}")
        return None
    required, optional = DISTRIBUTIONS[dist]
    allowed = ["distribution", *required, *optional]
    bad = False
    for key in spec:
        if key in allowed:
            continue
        bad = True
        if key == "probabilities" and dist == "categorical":
            add(f"{path}.probabilities", "go with values and no distribution: key "
                                         "(W&B's categorical_w_probabilities)")
        elif key in ("value", "values") and {"value", "values"} <= spec.keys():
            add(path, "has both value and values: give one")
        else:
            add(f"{path}.{key}", f"unknown key for distribution '{dist}'{_did_you_mean(key, allowed)}; "
                                 f"allowed: {', '.join(allowed)}")
    missing = [k for k in required if k not in spec]
    if missing:
        add(path, f"distribution '{dist}' needs {' and '.join(missing)}")
        bad = True
    for key, kind in {**required, **optional}.items():
        ok, what = _KINDS[kind]
        if key in spec and not ok(spec[key]):
            add(f"{path}.{key}", f"{spec[key]!r} is not {what}{_yaml_number_hint(spec[key])}")
            bad = True
    if bad:
        return None
    if "min" in spec and "max" in spec and spec["min"] >= spec["max"]:
        add(path, f"min {spec['min']!r} is not less than max {spec['max']!r}")
        return None
    if dist == "categorical_w_probabilities":
        values, probabilities = spec["values"], spec["probabilities"]
        if len(values) != len(probabilities):
            add(f"{path}.probabilities", f"{len(probabilities)} probabilities for {len(values)} values: "
                                         "give one per value")
            return None
        total = sum(probabilities)
        if abs(total - 1.0) > 1e-8 + 1e-5:   # np.isclose, as W&B's validate_categorical_prob
            add(f"{path}.probabilities", f"sum to {total:g}, not 1")
            return None
    return dist


def _yaml_number_hint(value: Any) -> str:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return " (YAML reads a number like 1e-5 without a dot as a string: write 1.0e-5)"
    return ""


def _did_you_mean(word: Any, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


# --- blueberry: the trial command and its options ------------------------------------------------

def sweep_options(config: dict[str, Any]) -> tuple[str, set[str]] | None:
    """(task, option names) of the `blueberry train TASK` the trial runs; None when it runs no
    blueberry train command. The options are the config's fields plus `config`."""
    found = _find_blueberry(config)
    if found is None or found[0] is None:
        return None
    task = found[0]
    return task, set(field_map(TASK_CONFIGS[task])) | set(EXTRA_TRAIN_OPTIONS)


def _template_tokens(config: dict[str, Any]) -> list[str]:
    """The command template with one token per item: macros that name a program filled in, the
    ${args...} macros kept, everything the agent would drop left empty."""
    program = config.get("program")
    fill = {"env": "/usr/bin/env", "interpreter": "python", "program": program if isinstance(program, str) else ""}
    tokens = []
    for chunk in sweep_command(config):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}") and not ENVVAR.fullmatch(chunk):
            name = chunk[2:-1]
            tokens.append(fill.get(name, chunk if name in ARG_MACROS else ""))
        else:
            tokens.append(chunk)
    return tokens


def _find_blueberry(config: dict[str, Any]) -> tuple[str | None, str, int] | None:
    """(task or None, why not, token index of the task) for the blueberry CLI in the template."""
    tokens = _template_tokens(config)
    for i, token in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token == "-m" and nxt == "blueberry":
            return None, "'-m blueberry' has no __main__: run '-m blueberry.cli train TASK'", i
        if token == "-m" and nxt == "blueberry.cli":
            start = i + 2
        elif os.path.basename(token) == "blueberry" or token.replace("\\", "/").endswith("blueberry/cli.py"):
            start = i + 1
        else:
            continue
        rest = tokens[start:start + 2]
        if len(rest) == 2 and rest[0] == "train" and rest[1] in TASK_CONFIGS:
            return rest[1], "", start + 1
        return None, (f"runs the blueberry CLI but not 'train TASK' (TASK: {', '.join(TASK_CONFIGS)}); "
                      f"e.g. command: [blueberry, train, lm, ${{args}}]"), i
    return None


def _check_program(config: dict[str, Any], top: dict[str, str | None], add: Callable[[str, str], None]) -> None:
    template = sweep_command(config)
    for i, chunk in enumerate(template):
        chunk = str(chunk)
        if not (chunk.startswith("${") and chunk.endswith("}")):
            continue
        name = chunk[2:-1]
        if name.startswith("envvar:"):
            if not ENVVAR.fullmatch(chunk):
                add(f"command[{i}]", f"{chunk!r}: ${{envvar:NAME}} takes names of A-Z, 0-9 and _; "
                                     "wandb agent drops this item")
        elif name not in MACROS:
            add(f"command[{i}]", f"{chunk!r} is not a W&B macro{_did_you_mean(name, MACROS)}; wandb agent drops it")
    if "${program}" in (str(c) for c in template) and not isinstance(config.get("program"), str):
        add("program", "required: the command runs ${program}" +
            ("" if "command" in config else " (the default command is ${env} ${interpreter} ${program} ${args})"))

    found = _find_blueberry(config)
    if found is None:
        return   # another program: its options are its own business
    task, why, task_at = found
    where = "command" if isinstance(config.get("command"), list) and config["command"] else "program"
    if task is None:
        add(where, why)
        return
    command = f"blueberry train {task}"
    tokens = _template_tokens(config)
    arg_items = [(i, t[2:-1]) for i, t in enumerate(tokens) if t.startswith("${") and t[2:-1] in ARG_MACROS]
    if not arg_items:
        add(where, f"has no ${{args}}: the swept values never reach '{command}'")
    for i, name in arg_items:
        if name not in ("args", "args_no_equals", "args_no_boolean_flags"):
            add(f"command[{i}]", f"'${{{name}}}' does not pass --key=value options to '{command}': use ${{args}}")
        elif i < task_at:
            add(f"command[{i}]", f"'${{{name}}}' comes before '{command}': put it after the task")
        elif name == "args_no_boolean_flags" and _sweeps_booleans(config):
            add(f"command[{i}]", "renders true as a bare --flag and drops false, but blueberry's boolean "
                                 "options take a value (--save_best=false): use ${args}")

    cls = TASK_CONFIGS[task]
    fields = field_map(cls)
    options = set(fields) | set(EXTRA_TRAIN_OPTIONS)
    for name, dist in top.items():
        path = f"parameters.{name}"
        if not isinstance(name, str) or name not in options:
            add(path, f"not an option of '{command}'{_did_you_mean(name, options)}")
        elif name == "recipe" and dist is not None:
            _check_recipes(cls, path, config["parameters"][name], dist, add)
        elif dist is not None and name != "config":
            _check_values(cls, fields[name], path, config["parameters"][name], dist, add)


def _check_recipes(cls: type, path: str, spec: dict, dist: str, add: Callable[[str, str], None]) -> None:
    """Each recipe is a mapping of field overrides; every field must exist and take its value."""
    if dist == "constant":
        recipes = [(f"{path}.value", spec["value"])]
    elif dist in ("categorical", "categorical_w_probabilities"):
        recipes = [(f"{path}.values[{i}]", v) for i, v in enumerate(spec["values"])]
    else:
        add(path, "a recipe is a mapping of field overrides: list them with values: [{field: value, ...}, ...]")
        return
    fields = field_map(cls)
    for where, recipe in recipes:
        if not isinstance(recipe, dict):
            add(where, "must be a mapping of field: value, e.g. {optimizer: muon, lr: 0.001}")
            continue
        for key, value in recipe.items():
            try:
                check_bounds(fields[key], coerce(cls, key, value, "recipe")) if key in fields else \
                    coerce(cls, key, value, "recipe")
                if key == "preset":
                    load_preset(value, cls)
            except UserError as e:
                add(f"{where}.{key}", str(e))


def _sweeps_booleans(config: dict[str, Any]) -> bool:
    def has_bool(spec: Any) -> bool:
        if not isinstance(spec, dict):
            return False
        if isinstance(spec.get("parameters"), dict):
            return any(has_bool(s) for s in spec["parameters"].values())
        values = spec.get("values") if isinstance(spec.get("values"), list) else [spec.get("value")]
        return any(isinstance(v, bool) for v in values)
    parameters = config.get("parameters")
    return isinstance(parameters, dict) and any(has_bool(s) for s in parameters.values())


def _check_values(cls: type, f: Any, path: str, spec: dict, dist: str, add: Callable[[str, str], None]) -> None:
    """Report the values of a swept option that the option rejects."""
    if dist == "parameters":
        # the agent renders the block as one option, --name={'key': value}: only text options take it
        if f.type != "str" or f.metadata.get("choices") or f.name == "preset":
            add(path, f"a nested parameters: block is passed as one dict option (--{f.name}={{...}}); "
                      f"'{f.name}' takes a single {_TYPE_WORDS.get(f.type, 'value')}")
        return
    if dist == "constant":
        candidates = [(f"{path}.value", spec["value"])]
    elif dist in ("categorical", "categorical_w_probabilities"):
        candidates = [(f"{path}.values[{i}]", v) for i, v in enumerate(spec["values"])]
    else:
        problem = _distribution_problem(f, dist, spec)
        if problem:
            add(path, problem)
            return
        candidates = [(f"{path} ({which})", v) for which, v in _attained_bounds(dist, spec)]
    for where, value in candidates:
        try:
            # the option parses the text the agent renders: f"--{name}={value}"
            v = coerce(cls, f.name, str(as_delivered(value)), where)
        except UserError as e:
            add("", str(e))
            continue
        try:
            check_bounds(f, v)
            if f.name == "preset":
                load_preset(v, cls)
        except UserError as e:
            add(where, str(e))


_TYPE_WORDS = {"int": "integer", "float": "number", "bool": "true or false", "str": "name"}


def _distribution_problem(f: Any, dist: str, spec: dict) -> str | None:
    if f.type == "bool":
        return f"a distribution cannot sample '{f.name}' (true or false): use values: [true, false]"
    if f.type == "str":
        if f.metadata.get("choices") or f.name == "preset":
            return f"'{f.name}' takes a name, not a number from distribution '{dist}': list names with values:"
        return None
    if f.type == "int" and not _samples_integers(dist, spec):
        return (f"distribution '{dist}' samples non-integer values; '{f.name}' takes an integer "
                "(use int_uniform, or a q_ distribution with an integer q)")
    low, high = f.metadata.get("min"), f.metadata.get("max")
    below, above = _unbounded(dist)
    if below and low is not None and not (dist == "log_normal" and low <= 0):
        return f"distribution '{dist}' is unbounded below, but '{f.name}' must be >= {low}"
    if above and high is not None:
        return f"distribution '{dist}' is unbounded above, but '{f.name}' must be <= {high}"
    return None


def _samples_integers(dist: str, spec: dict) -> bool:
    if dist == "int_uniform":
        return True
    # q_* give multiples of q; integer-valued floats reach the trial as ints (as_delivered)
    q = setting(spec, "q")
    return dist.startswith("q_") and float(q).is_integer()


def _unbounded(dist: str) -> tuple[bool, bool]:
    if dist in ("normal", "q_normal"):
        return True, True
    if dist in ("log_normal", "q_log_normal"):
        return dist == "log_normal", True   # log_normal only approaches 0 from above
    return False, False


def _attained_bounds(dist: str, spec: dict) -> list[tuple[str, Any]]:
    """The finite extreme values a distribution can produce, per W&B's HyperParameter.ppf."""
    lo, hi, q = spec.get("min"), spec.get("max"), setting(spec, "q")

    def exp(x: float) -> float:
        try:
            return math.exp(x)
        except OverflowError:
            return math.inf

    ranges = {
        "int_uniform": (lo, hi), "uniform": (lo, hi),
        "q_uniform": (quantize(lo, q), quantize(hi, q)) if lo is not None else None,
        "log_uniform": (exp(lo), exp(hi)) if lo is not None else None,
        "q_log_uniform": (quantize(exp(lo), q), quantize(exp(hi), q)) if lo is not None and exp(hi) < math.inf else None,
        "log_uniform_values": (lo, hi), "inv_log_uniform_values": (lo, hi),
        "q_log_uniform_values": (quantize(lo, q), quantize(hi, q)) if lo is not None else None,
        "inv_log_uniform": (exp(-hi), exp(-lo)) if lo is not None else None,
        "beta": (0.0, 1.0), "q_beta": (quantize(0.0, q), quantize(1.0, q)),
        "q_log_normal": (quantize(0.0, q), None),
    }
    pair = ranges.get(dist)
    if not pair:
        return []
    return [(which, v) for which, v in zip(("min", "max"), pair) if v is not None]

"""W&B's own sweep spec: every problem a sweep config has under W&B's rules, one line each.

The rules of W&B's JSON schema (wandb/sweeps src/sweeps/config/schema.json) and of its
`schema_violations_from_proposed_config`, `grid_search_next_runs`, `bayes_search_next_runs` and the
`wandb sweep` CLI; jsonschema is not a dependency, so the schema is the tables here and in params.
Whatever command the trial runs, these hold.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Callable

from blueberry.sweep.command import MACROS, sweep_command
from blueberry.sweep.hyperband import hyperband_bands
from blueberry.sweep.params import DISTRIBUTIONS, GRIDDABLE, distribution_of, is_finite_number, is_int

Add = Callable[[str, str], None]

METHODS = ("grid", "random", "bayes", "custom")
TOP_LEVEL_KEYS = ("program", "command", "method", "metric", "metrics", "parameters", "early_terminate",
                  "run_cap", "name", "description", "project", "entity", "controller", "scheduler", "job",
                  "image_uri", "apiVersion", "kind")
_STRING_KEYS = ("program", "name", "description", "project", "entity", "job", "image_uri", "apiVersion")
METRIC_KEYS = ("name", "goal", "target", "impute", "impute_while_running")
HYPERBAND_KEYS = ("type", "min_iter", "max_iter", "s", "eta", "strict")
_ENGINE_METHODS = {"wandb": ("grid", "bayes", "random"), "optuna": ("custom",), "ax": ("custom",)}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")

KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "any": (lambda v: True, "anything"),
    "number": (is_finite_number, "a number"),
    "int": (is_int, "an integer"),
    "pos": (lambda v: is_finite_number(v) and v > 0, "a number > 0"),
    "nonneg": (lambda v: is_finite_number(v) and v >= 0, "a number >= 0"),
    "values": (lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list"),
    "probs": (lambda v: isinstance(v, list) and len(v) > 0 and all(is_finite_number(p) and p >= 0 for p in v),
              "a list of numbers >= 0"),
}


def check_wandb_spec(config: dict[str, Any], add: Add) -> dict[str, str | None]:
    """Report (through `add(yaml_path, message)`) every break of W&B's rules; returns the distribution of
    each top-level parameter (None where malformed, "parameters" for a nested block)."""
    for key in config:
        if key not in TOP_LEVEL_KEYS:
            add(str(key), f"unknown key{did_you_mean(key, TOP_LEVEL_KEYS)}; allowed: {', '.join(TOP_LEVEL_KEYS)}")
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
        add("method", f"{method!r} is not one of {', '.join(METHODS)}{did_you_mean(method, METHODS)}")
    if "run_cap" in config and not (is_int(config["run_cap"]) and config["run_cap"] > 0):
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
    _check_command(config, add)
    return top


def parameter_leaves(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(YAML path, distribution) of every well-formed non-nested parameter."""
    leaves: list[tuple[str, str]] = []
    if isinstance(config.get("parameters"), dict):
        _check_parameters("parameters", config["parameters"], lambda path, message: None, leaves)
    return leaves


def _check_metric(path: str, metric: Any, add: Add) -> bool:
    if not isinstance(metric, dict):
        add(path, "must be a mapping {name: val/loss, goal: minimize}")
        return False
    for key in metric:
        if key not in METRIC_KEYS:
            add(f"{path}.{key}", f"unknown key{did_you_mean(key, METRIC_KEYS)}; allowed: {', '.join(METRIC_KEYS)}")
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


def _check_metrics(config: dict, method: Any, add: Add) -> None:
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


def _check_scheduler(config: dict, method: Any, add: Add) -> None:
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


def _check_early_terminate(et: Any, add: Add) -> None:
    if not isinstance(et, dict):
        add("early_terminate", "must be a mapping {type: hyperband, min_iter: 3}")
        return
    for key in et:
        if key not in HYPERBAND_KEYS:
            add(f"early_terminate.{key}", f"unknown key{did_you_mean(key, HYPERBAND_KEYS)}; "
                                          f"allowed: {', '.join(HYPERBAND_KEYS)}")
    if "type" not in et:
        add("early_terminate.type", "required: hyperband")
    elif et["type"] != "hyperband":
        add("early_terminate.type", f"{et['type']!r} is not one of hyperband")
    checks = {"max_iter": (is_int, "an integer"), "min_iter": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
              # the schema says number, but W&B runs range(s)
              "s": (is_int, "an integer"), "eta": (lambda v: is_finite_number(v) and v > 1, "a number > 1"),
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


def _check_parameters(path: str, parameters: Any, add: Add,
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
        out[name] = dist = check_parameter(where, spec, add, leaves)
        if dist is not None and dist != "parameters":
            leaves.append((where, dist))
    return out


def check_parameter(path: str, spec: Any, add: Add,
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
                                    f"{did_you_mean(str(dist), DISTRIBUTIONS)}")
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
            add(f"{path}.{key}", f"unknown key for distribution '{dist}'{did_you_mean(key, allowed)}; "
                                 f"allowed: {', '.join(allowed)}")
    missing = [k for k in required if k not in spec]
    if missing:
        add(path, f"distribution '{dist}' needs {' and '.join(missing)}")
        bad = True
    for key, kind in {**required, **optional}.items():
        ok, what = KINDS[kind]
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


def did_you_mean(word: Any, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_command(config: dict[str, Any], add: Add) -> None:
    """The macros of the command template, as `wandb agent` substitutes them."""
    template = sweep_command(config)
    for i, chunk in enumerate(template):
        chunk = str(chunk)
        if not (chunk.startswith("${") and chunk.endswith("}")):
            continue
        name = chunk[2:-1]
        if name not in MACROS and not name.startswith("envvar:"):   # envvars: see spec.sweep_warnings
            add(f"command[{i}]", f"{chunk!r} is not a W&B macro{did_you_mean(name, MACROS)}; wandb agent drops it")
    if "${program}" in (str(c) for c in template) and not isinstance(config.get("program"), str):
        add("program", "required: the command runs ${program}" +
            ("" if "command" in config else " (the default command is ${env} ${interpreter} ${program} ${args})"))

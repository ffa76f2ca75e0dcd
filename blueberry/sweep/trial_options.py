"""The blueberry side of a sweep: the trial runs `blueberry train TASK`, and every swept value reaches
one of its options as the option reads it.

Values travel as `wandb agent` passes them: `${args}` renders `--key=value` text (a dict as its
Python repr), `--config ${args_json_file}` a JSON file of field: value. Each value is checked
through `blueberry.config` (coerce, the field bounds, the presets), and values that would change
meaning on the way (a YAML string that looks like a number, a null) are refused.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

from blueberry.config import (EXTRA_TRAIN_OPTIONS, TASK_CONFIGS, check_bounds, coerce, field_hint, field_map,
                              load_preset)
from blueberry.errors import UserError
from blueberry.sweep.command import ARG_MACROS, ENVVAR, apply_overrides, as_delivered, sweep_command
from blueberry.sweep.params import listed_values, quantize, setting
from blueberry.sweep.wandb_spec import check_parameter, did_you_mean

Add = Callable[[str, str], None]
TEXT_ARGS = ("args", "args_no_equals", "args_no_boolean_flags")   # the ${args...} that give --key value options


def sweep_options(config: dict[str, Any]) -> tuple[str, set[str]] | None:
    """(task, option names) of the `blueberry train TASK` the trial runs; None when it runs no
    blueberry train command."""
    found = _find_blueberry(_template_tokens(config))
    if found is None or found[0] is None:
        return None
    return found[0], train_options(found[0])


def train_options(task: str) -> set[str]:
    """The options of `blueberry train TASK`: the config's fields plus `config` and `recipe`."""
    return set(field_map(TASK_CONFIGS[task])) | set(EXTRA_TRAIN_OPTIONS)


def option_hint(task: str, name: Any) -> str:
    """For a name that is no option of `blueberry train TASK`: ' (blueberry calls it lr)' for a name
    users know from elsewhere (the trainer's own hint), else the closest option, as the trainer says it."""
    return did_you_mean(name, EXTRA_TRAIN_OPTIONS) or field_hint(TASK_CONFIGS[task], str(name))


def _template_tokens(config: dict[str, Any]) -> list[str]:
    """The command template with one token per item: macros that name a program filled in, the
    ${args...} and ${args_json_file} macros kept, everything the agent would drop left empty."""
    program = config.get("program")
    fill = {"env": "/usr/bin/env", "interpreter": "python", "program": program if isinstance(program, str) else ""}
    tokens = []
    for chunk in sweep_command(config):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}") and not ENVVAR.fullmatch(chunk):
            name = chunk[2:-1]
            tokens.append(fill.get(name, chunk if name in (*ARG_MACROS, "args_json_file") else ""))
        else:
            tokens.append(chunk)
    return tokens


def _find_blueberry(tokens: list[str]) -> tuple[str | None, str, int] | None:
    """(task or None, why not, token index of the task) for the blueberry CLI in the template tokens."""
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


# Launchers whose own process exits 1 (torchrun's SignalException) when `wandb agent` SIGTERMs it, though
# the ranks checkpoint and exit 75: W&B records a crash and never re-queues the trial (blueberry/launch.py).
PLAIN_LAUNCHERS = {"accelerate": "launch", "accelerate-launch": None, "torchrun": None}
PLAIN_LAUNCHER_MODULES = ("accelerate.commands.launch", "torch.distributed.run", "torch.distributed.launch")


def plain_launchers(config: dict[str, Any]) -> list[tuple[int, str]]:
    """(index in the command, what it starts) of each launcher in the command that `wandb agent` cannot
    stop cleanly; `python -m blueberry.launch` takes `accelerate launch`'s arguments and can."""
    tokens = _template_tokens(config)
    found = []
    for i, token in enumerate(tokens):
        name, nxt = os.path.basename(token), tokens[i + 1] if i + 1 < len(tokens) else ""
        if name in PLAIN_LAUNCHERS and PLAIN_LAUNCHERS[name] in (None, nxt):
            found.append((i, f"{name} {nxt}" if PLAIN_LAUNCHERS[name] else name))
        elif token == "-m" and nxt in PLAIN_LAUNCHER_MODULES:
            found.append((i, f"-m {nxt}"))
    return found


def check_trial_command(config: dict[str, Any], top: dict[str, str | None], add: Add) -> str | None:
    """Report what breaks between the sweep and `blueberry train TASK` (nothing for another program);
    returns TASK, or None when the trial runs no blueberry train command. `top` is the distribution
    of each top-level parameter, as wandb_spec.check_wandb_spec returns it."""
    tokens = _template_tokens(config)
    found = _find_blueberry(tokens)
    if found is None:
        return None   # another program: its options are its own business
    task, why, task_at = found
    where = "command" if isinstance(config.get("command"), list) and config["command"] else "program"
    if task is None:
        add(where, why)
        return None
    command = f"blueberry train {task}"
    arg_items = [(i, t[2:-1]) for i, t in enumerate(tokens) if t.startswith("${") and t[2:-1] in ARG_MACROS]
    json_file = False
    for i, token in enumerate(tokens):
        if token != "${args_json_file}":
            continue
        if i < task_at or tokens[i - 1] != "--config":
            add(f"command[{i}]", "'${args_json_file}' is the path of a JSON file of the swept values: "
                                 "pass it after the task as --config ${args_json_file}")
        else:
            json_file = True
    if not arg_items and not json_file:
        add(where, f"has no ${{args}} (or --config ${{args_json_file}}): the swept values never reach '{command}'")
    for i, name in arg_items:
        if name not in TEXT_ARGS:
            add(f"command[{i}]", f"'${{{name}}}' does not pass --key=value options to '{command}': use ${{args}}")
        elif i < task_at:
            add(f"command[{i}]", f"'${{{name}}}' comes before '{command}': put it after the task")
        elif name == "args_no_boolean_flags" and _sweeps_booleans(config):
            add(f"command[{i}]", "renders true as a bare --flag and drops false, but blueberry's boolean "
                                 "options take a value (--save_best=false): use ${args}")

    as_text = bool(arg_items)   # else the values arrive as JSON in the --config file
    cls = TASK_CONFIGS[task]
    fields = field_map(cls)
    options = train_options(task)
    for name, dist in top.items():
        path = f"parameters.{name}"
        spec = config["parameters"][name]
        if not isinstance(name, str) or name not in options:
            add(path, f"not an option of '{command}'{option_hint(task, name)}")
        elif not as_text and name in EXTRA_TRAIN_OPTIONS:
            add(path, f"'{name}' is an option, not a field: the --config file takes fields only; pass it with ${{args}}")
        elif name == "recipe" and dist is not None:
            _check_recipes(cls, path, spec, dist, add)
        elif dist is not None and name != "config":
            _check_values(cls, fields[name], path, spec, dist, add, as_text=as_text)
    return task


def _check_recipes(cls: type, path: str, spec: dict, dist: str, add: Add) -> None:
    """Each recipe is a mapping of field overrides; every field must exist and take its value.
    The trainer reads the mapping back exactly (config.parse_recipe), so values keep their types."""
    fields = field_map(cls)
    if dist == "parameters":   # the agent renders the block as one mapping: each inner parameter is a field
        for key, inner in spec["parameters"].items():
            inner_dist = parameter_distribution(inner)
            where = f"{path}.parameters.{key}"
            if inner_dist is None:
                continue   # wandb_spec reported it
            if key not in fields:
                add(where, f"not a field{field_hint(cls, str(key))}; a recipe is a mapping of field: value")
            elif inner_dist == "parameters":
                add(where, f"a nested block inside a recipe gives {key} a mapping; '{key}' takes one value")
            else:
                _check_values(cls, fields[key], where, inner, inner_dist, add, as_text=False)
        return
    recipes = _listed(path, spec, dist)
    if recipes is None:
        add(path, "a recipe is a mapping of field overrides: list them with values: [{field: value, ...}, ...] "
                  "or build one with a nested parameters: block")
        return
    for where, recipe in recipes:
        if not isinstance(recipe, dict):
            add(where, "must be a mapping of field: value, e.g. {optimizer: muon, lr: 0.001}")
            continue
        for key, value in recipe.items():
            problem = changed_meaning(fields.get(key), value)
            if problem:
                add(f"{where}.{key}", problem)
                continue
            try:
                check_bounds(fields[key], coerce(cls, key, value, "recipe")) if key in fields else \
                    coerce(cls, key, value, "recipe")
                if key == "preset":
                    load_preset(value, cls)
            except UserError as e:
                add(f"{where}.{key}", str(e))


def _listed(path: str, spec: dict, dist: str) -> list[tuple[str, Any]] | None:
    """(YAML path, value) of each value a constant or categorical parameter lists; None for a distribution."""
    if dist == "constant":
        return [(f"{path}.value", spec["value"])]
    if dist in ("categorical", "categorical_w_probabilities"):
        return [(f"{path}.values[{i}]", v) for i, v in enumerate(spec["values"])]
    return None


def parameter_distribution(spec: Any) -> str | None:
    """The distribution of a well-formed parameter spec; None when W&B's rules refuse it."""
    return check_parameter("", spec, lambda path, message: None, [])


def changed_meaning(f: Any, value: Any) -> str | None:
    """Why a value would reach W&B or the trainer as something else than the YAML seems to say."""
    if _has_null(value):
        return ("null reaches the trainer as the text 'None' (wandb agent renders Python's repr): "
                "give a value or leave the key out")
    if f is not None and f.type in ("int", "float") and isinstance(value, str) and _is_number_text(value):
        return (f"{value!r} is text to YAML (PyYAML reads a number like 1e-3 with no dot as a string), so W&B "
                f"would log {f.name} as text while {float(value):g} trains: write "
                f"{int(float(value)) if f.type == 'int' and float(value).is_integer() else _as_yaml_float(value)}")
    return None


def _has_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, dict):
        return any(_has_null(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_null(v) for v in value)
    return False


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity")


def _as_yaml_float(text: str) -> str:
    """'1e-3' -> '1.0e-3': the spelling YAML 1.1 (PyYAML) reads as a float."""
    mantissa, e, exponent = text.strip().lower().partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    if e and exponent[:1] not in "+-":
        exponent = "+" + exponent
    return mantissa + e + exponent


def _sweeps_booleans(config: dict[str, Any]) -> bool:
    def has_bool(spec: Any) -> bool:
        if not isinstance(spec, dict):
            return False
        if isinstance(spec.get("parameters"), dict):
            return any(has_bool(s) for s in spec["parameters"].values())
        return any(isinstance(v, bool) for v in listed_values(spec))
    parameters = config.get("parameters")
    return isinstance(parameters, dict) and any(has_bool(s) for s in parameters.values())


def _check_values(cls: type, f: Any, path: str, spec: dict, dist: str, add: Add, *, as_text: bool) -> None:
    """Report the values of a swept option that the option rejects. `as_text`: the value arrives as the
    text of --name=value (${args}); else as the JSON value itself (--config file, recipe mapping)."""
    if dist == "parameters":
        # the agent renders the block as one option, --name={'key': value}: only text options take it
        if not as_text:
            add(path, f"a nested parameters: block arrives as a mapping, which '{f.name}' does not take: "
                      "pass it with ${args}, or sweep the fields themselves")
        elif f.type != "str" or f.metadata.get("choices") or f.name == "preset":
            add(path, f"a nested parameters: block is passed as one dict option (--{f.name}={{...}}); "
                      f"'{f.name}' takes a single {_TYPE_WORDS.get(f.type, 'value')}")
        else:
            for where, value in _nested_constants(path, spec):
                if _has_null(value):
                    add(where, changed_meaning(f, value))
        return
    candidates = _listed(path, spec, dist)
    if candidates is None:
        problem = _distribution_problem(f, dist, spec)
        if problem:
            add(path, problem)
            return
        candidates = [(f"{path} ({which})", v) for which, v in _attained_bounds(dist, spec)]
    for where, value in candidates:
        problem = changed_meaning(f, value)
        if problem:
            add(where, problem)
            continue
        try:
            # the option parses the text the agent renders, f"--{name}={value}", or the JSON value itself
            delivered = as_delivered(value)
            v = coerce(cls, f.name, str(delivered) if as_text else delivered, where)
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


def _nested_constants(path: str, spec: dict) -> list[tuple[str, Any]]:
    """(YAML path, value) of every listed value inside a nested parameters: block."""
    out = []
    for key, inner in (spec.get("parameters") or {}).items():
        where = f"{path}.parameters.{key}"
        dist = parameter_distribution(inner)
        if dist == "parameters":
            out += _nested_constants(where, inner)
        elif dist is not None:
            out += _listed(where, inner, dist) or []
    return out


# Options `sweep local` sets on every blueberry trial itself (state lives in the sweep dir).
RUNNER_OPTIONS = {"out_dir": "sweep local keeps each trial's run dirs in SWEEP_DIR/trials/tNNNN/runs (choose "
                             "the sweep dir with --dir)",
                  "resume": "sweep local resumes interrupted trials itself (--resume=auto)"}


def check_overrides(config: dict[str, Any], overrides: list[str]) -> None:
    """Refuse an --override the trial command would reject (UserError, one line), before any trial runs.
    Trials of another program get the key=value form checked only."""
    from blueberry.config import parse_recipe, read_config_file

    apply_overrides([], overrides)   # the KEY=VALUE form, as the runner applies them
    pairs = [item.partition("=")[::2] for item in overrides]
    found = _find_blueberry(_template_tokens(config))
    if found is None or found[0] is None:
        return
    task = found[0]
    cls, fields = TASK_CONFIGS[task], field_map(TASK_CONFIGS[task])
    options = train_options(task)
    for key, value in pairs:
        label = f"--override {key}={value}"
        if key in RUNNER_OPTIONS:
            raise UserError(f"{label}: {RUNNER_OPTIONS[key]}")
        if key not in options:
            raise UserError(f"{label}: not an option of 'blueberry train {task}'{option_hint(task, key)}")
        try:
            if key == "recipe":
                for k, v in parse_recipe(value).items():
                    check_bounds(fields[k], coerce(cls, k, v, "recipe")) if k in fields else coerce(cls, k, v, "recipe")
            elif key == "config":
                read_config_file(value)
            else:
                check_bounds(fields[key], coerce(cls, key, value, "--override"))
                if key == "preset":
                    load_preset(value, cls)
        except UserError as e:
            raise UserError(str(e) if str(e).startswith("--override") else f"--override {e}") from None

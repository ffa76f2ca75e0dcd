"""Load a W&B sweep YAML and list every problem in it, each as one line starting with its YAML path.

Three layers: W&B's own sweep spec (wandb_spec), then blueberry's trial command and the options its
values reach (trial_options), then the metric: the trial must log it (objective). Warnings are what
does not make a sweep invalid but behaves differently from what the file seems to say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from blueberry.errors import UserError
from blueberry.sweep.command import ENVVAR, sweep_command
from blueberry.sweep.objective import metric_problem, running_best_base
from blueberry.sweep.params import DEPRECATED
from blueberry.sweep.trial_options import check_trial_command, plain_launchers, sweep_options
from blueberry.sweep.wandb_spec import check_wandb_spec, parameter_leaves

__all__ = ["load_sweep", "load_valid_sweep", "validate_sweep", "sweep_warnings"]


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


def load_valid_sweep(path: str | Path) -> dict[str, Any]:
    """The sweep YAML, or UserError with its first problem (and how many more) in one line: what every
    command that runs or reads a sweep file refuses before it starts."""
    config = load_sweep(path)
    problems = validate_sweep(config, source=str(path))
    if problems:
        raise UserError(problems[0] + (f" (and {len(problems) - 1} more: blueberry sweep validate {path})"
                                       if len(problems) > 1 else ""))
    return config


def validate_sweep(config: dict[str, Any], *, source: str) -> list[str]:
    """Every problem of a sweep config, one line each: `SOURCE: YAML.PATH: what is wrong`."""
    problems: list[str] = []

    def add(path: str, message: str) -> None:
        problems.append(f"{source}: {path}: {message}" if path else f"{source}: {message}")

    if not isinstance(config, dict):
        add("", "must be a mapping of sweep keys (method:, parameters:, command:, ...)")
        return problems
    top = check_wandb_spec(config, add)
    task = check_trial_command(config, top, add)
    metric = config.get("metric")
    if task and isinstance(metric, dict) and isinstance(metric.get("name"), str):
        problem = metric_problem(task, metric["name"], config)
        if problem:
            add("metric.name", problem)
    return problems


def sweep_warnings(config: dict[str, Any], *, source: str) -> list[str]:
    """Notes that do not make a sweep invalid: W&B's deprecation of the v1 log distributions (their
    min/max are natural-log exponents), distributions the local bayes engine cannot map, `${envvar:...}`
    items the agent drops, a launcher the agent cannot stop cleanly, a hyperband sweep on a running best,
    and a sweep that names no W&B project."""
    out = []
    for path, dist in parameter_leaves(config):
        if dist in DEPRECATED:
            out.append(f"{source}: {path}: uses {dist}, where min/max specify base-e exponents. "
                       f"Use {dist}_values to specify limit values.")
        if dist in ("beta", "q_beta") and config.get("method") == "bayes":
            out.append(f"{source}: {path}: the local bayes engine (Optuna) has no mapping for {dist}; "
                       "W&B's own bayes and method random do")
    for i, chunk in enumerate(sweep_command(config)):
        chunk = str(chunk)
        if "${envvar:" in chunk and not ENVVAR.search(chunk):
            dropped = chunk.startswith("${") and chunk.endswith("}")
            out.append(f"{source}: command[{i}]: {chunk!r}: wandb agent substitutes only ${{envvar:NAME}} with "
                       "NAME in A-Z, 0-9 and _, so it " + ("drops this item" if dropped else "passes it literally"))
    for i, launcher in plain_launchers(config):
        out.append(f"{source}: command[{i}]: `{launcher}` exits 1 with a traceback when `wandb agent` stops the "
                   "trial (SIGTERM), so W&B records a crash and never re-queues it: start it with "
                   '"${interpreter}", "-m", "blueberry.launch" and accelerate launch\'s arguments')
    base = running_best_base(config)
    if base and isinstance(config.get("early_terminate"), dict):
        out.append(f"{source}: metric.name: {config['metric']['name']} is a running best, so hyperband compares runs "
                   f"on their best so far and stops another set of runs than on what they log now; name {base}: "
                   f"W&B's controller already judges each run by its best {base}")
    if "project" not in config and sweep_options(config):
        out.append(f"{source}: project: not set, so `wandb sweep` without --project puts the sweep and its runs "
                   "in your default W&B project, not the trainer's wandb_project (blueberry): add project: blueberry")
    return out

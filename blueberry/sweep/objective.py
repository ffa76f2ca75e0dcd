"""Which value a sweep optimises, and whether the trial logs a metric of that name at all.

What W&B's controller reads (wandb/sweeps, the engine behind W&B's server): bayes judges each finished
run by `SweepRun.metric_extremum(metric.name)`, the best (min or max by goal) of the run's HISTORY
values and its SUMMARY value (bayes_search._construct_gp_data; `impute` decides failed runs), and
hyperband (hyperband_stopping) reads every HISTORY value in order. `sweep local` reads the same from
each trial's metrics.jsonl (value: the best of the history; hyperband: the history).

So a sweep names the metric itself (`val/loss`), as the shipped ones do: bayes and the best run are
judged on each run's best value anyway, hyperband compares what the runs log now, as it is designed
to, and W&B's summary and parallel-coordinates panel show the final value, late regressions included.
blueberry also logs `<best_metric>_best`, the running best; naming it leaves bayes unchanged (the
best of a running best is the best) but makes hyperband compare runs on their best so far, which
stops another set of runs (benchmarks/sweep_target.py: 55 of 400 simulated noisy sweeps), and shows
the best in place of the final value. Both names are accepted.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from blueberry.config import TASK_CONFIGS
from blueberry.sweep.params import is_finite_number, listed_values
from blueberry.sweep.trial_options import sweep_options
from blueberry.sweep.wandb_spec import did_you_mean

# The metric names each task's run logs (config.RunConfig.logged_metrics); `*` stands for a class,
# layer or expert. tests/test_sweep_fidelity.py checks them against real runs of each task.
LOGGED: dict[str, tuple[str, ...]] = {task: cls.logged_metrics for task, cls in TASK_CONFIGS.items()}
DEFAULT_BEST = {task: cls.default_best_metric for task, cls in TASK_CONFIGS.items()}   # the tasks' best_metric
BEST_SUFFIX = "_best"


def best_metrics(task: str, config: dict[str, Any]) -> set[str]:
    """The metrics the trials name as best_metric: the task's default and the swept values."""
    names = {DEFAULT_BEST[task]}
    spec = (config.get("parameters") or {}).get("best_metric")
    if isinstance(spec, dict):
        names |= {v for v in listed_values(spec) if isinstance(v, str) and v}
    return names


def metric_problem(task: str, name: str, config: dict[str, Any]) -> str | None:
    """Why `blueberry train TASK` never logs a metric called `name`; None when it does."""
    patterns = LOGGED[task]
    bests = best_metrics(task, config)
    if any(fnmatchcase(name, p) for p in patterns) or name in {b + BEST_SUFFIX for b in bests}:
        return None
    if name.endswith(BEST_SUFFIX) and any(fnmatchcase(name[:-len(BEST_SUFFIX)], p) for p in patterns):
        return (f"{name!r} is logged only when best_metric={name[:-len(BEST_SUFFIX)]} (the {task} default is "
                f"{DEFAULT_BEST[task]}): set best_metric, or name {DEFAULT_BEST[task]}{BEST_SUFFIX}")
    known = [p for p in patterns if "*" not in p] + sorted(b + BEST_SUFFIX for b in bests)
    return (f"{name!r} is not a metric 'blueberry train {task}' logs{did_you_mean(name, known)}; "
            f"it logs {', '.join(known)}")


def objective_line(config: dict[str, Any]) -> str | None:
    """What both engines optimise, in words, for validate's output; None without a metric."""
    metric = config.get("metric")
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        return None
    name, goal = metric["name"], metric.get("goal", "minimize")
    best = "lowest" if goal == "minimize" else "highest"
    line = f"optimises each run's {best} {name} over its history (W&B's controller and sweep local alike)"
    if isinstance(config.get("early_terminate"), dict):
        line += f"; hyperband compares the {name} runs log at each evaluation"
    return line


def running_best_base(config: dict[str, Any]) -> str | None:
    """X when the sweep names blueberry's running best X_best of a metric X its trials log; else None."""
    metric = config.get("metric")
    name = metric.get("name") if isinstance(metric, dict) else None
    found = sweep_options(config)
    if not (found and isinstance(name, str) and name.endswith(BEST_SUFFIX)):
        return None
    base = name[:-len(BEST_SUFFIX)]
    return base if metric_problem(found[0], base, config) is None else None


def run_value(history: list[float], goal: str) -> float | None:
    """A run's value as W&B's controller takes it (SweepRun.metric_extremum): its best logged value."""
    finite = [v for v in history if is_finite_number(v)]
    if not finite:
        return None
    return max(finite) if goal == "maximize" else min(finite)

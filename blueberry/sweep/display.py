"""What a running local sweep shows: a live table on a terminal, one line per change elsewhere
(SLURM logs), and the final ranking."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from blueberry.sweep.objective import BEST_SUFFIX
from blueberry.sweep.state import Trial


def ranked(trials: list[Trial], goal: str) -> list[Trial]:
    """Trials with a value, best first; the rest after them in id order."""
    valued = [t for t in trials if t.value is not None]
    valued.sort(key=lambda t: t.value, reverse=goal == "maximize")
    return valued + [t for t in trials if t.value is None]


def params_text(params: dict[str, Any], keys: list[str] | None = None) -> str:
    return " ".join(f"{k}={params[k]}" for k in (keys if keys is not None else params) if k in params)


def effective_params(params: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The swept values as the trial trains them: an --override of a swept key wins (the last one)."""
    out = dict(params)
    for item in overrides:
        key, _, value = item.partition("=")
        if key in out:
            out[key] = value
    return out


def varying(trials: list[Trial]) -> list[str] | None:
    """The parameters whose values differ between trials (all of them when only one trial ran)."""
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    differ = [k for k in keys if len({repr(t.params.get(k)) for t in trials}) > 1]
    return differ if differ else None


def value_label(metric: str) -> str:
    """What a trial's value is: the best of its logged `metric` (W&B's controller takes that), not its last."""
    return metric if metric.endswith(BEST_SUFFIX) else f"best {metric}"


def trial_table(trials: list[Trial], metric: str, goal: str, title: str, overrides: list[str] = ()) -> Table:
    table = Table(title=title)
    label = value_label(metric)
    for column in ("#", "trial", "status", "evals", label, "params"):
        table.add_column(column, justify="right" if column in ("#", "evals", label) else "left")
    keys = varying(trials)
    for rank, t in enumerate(ranked(trials, goal), 1):
        value = "" if t.value is None else f"{t.value:.4g}"
        table.add_row(str(rank) if t.value is not None else "", t.id, t.status, str(len(t.history)), value,
                      params_text(effective_params(t.params, list(overrides)), keys))
    return table


class SweepDisplay:
    """Call with (trials, running ids) after each poll; `close()` prints the final ranking."""

    def __init__(self, name: str, metric: str, goal: str, overrides: list[str] = ()):
        self.name, self.metric, self.goal = name, metric or "metric", goal
        self.overrides = list(overrides)
        self.console = Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=1) if sys.stderr.isatty() else None
        self.seen: dict[str, str] = {}
        if self.live:
            self.live.start()

    def __call__(self, trials: list[Trial]) -> None:
        if self.live:
            self.live.update(trial_table(trials, self.metric, self.goal, f"sweep {self.name}", self.overrides))
            return
        for t in trials:
            if self.seen.get(t.id) != t.status:
                self.seen[t.id] = t.status
                value = "" if t.value is None else f" {value_label(self.metric)}={t.value:.4g}"
                shown = params_text(effective_params(t.params, self.overrides))
                # one line per change, however long: a log reader (SLURM, grep) wants it whole
                self.console.print(f"[{self.name}] {t.id} {t.status}{value}  {shown}", soft_wrap=True, markup=False,
                                   highlight=False)

    def close(self, trials: list[Trial]) -> None:
        if self.live:
            self.live.stop()
        Console().print(trial_table(trials, self.metric, self.goal, f"sweep {self.name}: ranking", self.overrides))
        Console().print(noise_caveat(trials), highlight=False)


def noise_caveat(trials: list[Trial]) -> str:
    """The warning the report carries: without seed repeats a ranking cannot be told from noise."""
    configs = [repr(sorted((k, repr(v)) for k, v in t.params.items() if k != "seed")) for t in trials
               if t.value is not None]
    if any(configs.count(c) > 1 for c in configs):
        return ("noise: trials that differ only in seed are repeats; the report's verdicts (t-tests, p-values) "
                "tell which differences exceed seed noise")
    return ("noise: no seed repeats: differences between trials cannot be told from noise; give the sweep "
            "seed: {values: [0, 1]} (or rerun the top configs with more seeds)")

"""What a running local sweep shows: a live table on a terminal, one line per change elsewhere
(SLURM logs), and the final ranking."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from blueberry.sweep.state import Trial


def ranked(trials: list[Trial], goal: str) -> list[Trial]:
    """Trials with a value, best first; the rest after them in id order."""
    valued = [t for t in trials if t.value is not None]
    valued.sort(key=lambda t: t.value, reverse=goal == "maximize")
    return valued + [t for t in trials if t.value is None]


def params_text(params: dict[str, Any], keys: list[str] | None = None) -> str:
    return " ".join(f"{k}={params[k]}" for k in (keys if keys is not None else params) if k in params)


def varying(trials: list[Trial]) -> list[str] | None:
    """The parameters whose values differ between trials (all of them when only one trial ran)."""
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    differ = [k for k in keys if len({repr(t.params.get(k)) for t in trials}) > 1]
    return differ if differ else None


def trial_table(trials: list[Trial], metric: str, goal: str, title: str) -> Table:
    table = Table(title=title)
    for column in ("#", "trial", "status", "evals", metric, "params"):
        table.add_column(column, justify="right" if column in ("#", "evals", metric) else "left")
    keys = varying(trials)
    for rank, t in enumerate(ranked(trials, goal), 1):
        value = "" if t.value is None else f"{t.value:.4g}"
        table.add_row(str(rank) if t.value is not None else "", t.id, t.status, str(len(t.history)), value,
                      params_text(t.params, keys))
    return table


class SweepDisplay:
    """Call with (trials, running ids) after each poll; `close()` prints the final ranking."""

    def __init__(self, name: str, metric: str, goal: str):
        self.name, self.metric, self.goal = name, metric or "metric", goal
        self.console = Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=1) if sys.stderr.isatty() else None
        self.seen: dict[str, str] = {}
        if self.live:
            self.live.start()

    def __call__(self, trials: list[Trial]) -> None:
        if self.live:
            self.live.update(trial_table(trials, self.metric, self.goal, f"sweep {self.name}"))
            return
        for t in trials:
            if self.seen.get(t.id) != t.status:
                self.seen[t.id] = t.status
                value = "" if t.value is None else f" {self.metric}={t.value:.4g}"
                self.console.print(f"[{self.name}] {t.id} {t.status}{value}  {params_text(t.params)}")

    def close(self, trials: list[Trial]) -> None:
        if self.live:
            self.live.stop()
        Console().print(trial_table(trials, self.metric, self.goal, f"sweep {self.name}: ranking"))

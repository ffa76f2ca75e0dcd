"""Figures a task returns at evaluation land in RUN_DIR/plots/<name>.png (latest) for people and W&B;
the task's other media (tasks.media Tables and Confusions) pass through to W&B as they are."""

from __future__ import annotations

import os
from pathlib import Path


def save_figures(run_dir: Path, figures: dict) -> dict:
    """Save each matplotlib figure atomically as plots/<name with / as __>.png and close it; returns
    name -> PNG path, and the non-figure media unchanged (for the tracker). Figures are
    matplotlib.figure.Figure objects (no pyplot), so nothing needs closing."""
    folder = Path(run_dir) / "plots"
    folder.mkdir(exist_ok=True)
    saved = {}
    for name, fig in figures.items():
        if not hasattr(fig, "savefig"):
            saved[name] = fig
            continue
        path = folder / (name.replace("/", "__") + ".png")
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
        os.replace(tmp, path)
        saved[name] = path
    return saved

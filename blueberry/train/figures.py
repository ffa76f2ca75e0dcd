"""Figures a task returns at evaluation land in RUN_DIR/plots/<name>.png (latest) for people and W&B."""

from __future__ import annotations

import os
from pathlib import Path


def save_figures(run_dir: Path, figures: dict) -> dict[str, Path]:
    """Save each matplotlib figure atomically as plots/<name with / as __>.png and close it."""
    import matplotlib.pyplot as plt

    folder = Path(run_dir) / "plots"
    folder.mkdir(exist_ok=True)
    saved = {}
    for name, fig in figures.items():
        path = folder / (name.replace("/", "__") + ".png")
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
        os.replace(tmp, path)
        plt.close(fig)
        saved[name] = path
    return saved

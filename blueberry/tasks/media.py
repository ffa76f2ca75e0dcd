"""What a task's evaluation shows besides numbers and PNG figures, as plain data (no W&B import):
the tracker turns a Table into a wandb.Table and a Confusion into W&B's interactive confusion
matrix; the run dir keeps the PNGs and the numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence]


@dataclass(frozen=True)
class Confusion:
    """Per-sample true and predicted class indices (W&B counts them itself)."""

    targets: Sequence[int]
    predictions: Sequence[int]
    class_names: Sequence[str]

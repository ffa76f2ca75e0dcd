"""The task protocol (DESIGN contract 2): what the one training loop needs from a task.

A task builds its data and model, computes the training loss with named parts, evaluates to a
dict of metrics and names the metric that decides "best". The trainer owns everything else:
devices, precision, accumulation, optimizer, schedule, checkpoints, tracking, early stopping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class TaskData:
    """What the trainer needs to know about a task's data."""

    train_batches: Any            # callable(start_micro_batch: int) -> Iterator of batches (this rank's shard)
    items_per_batch: int          # tokens (lm) or samples per micro-batch on one process
    unit: str                     # "tokens" or "samples": names the throughput metrics
    epochs_at: Any                # callable(global_micro_batches: int) -> passes over the train split
    stats: dict[str, Any] = field(default_factory=dict)   # logged once to the summary and W&B
    payload: Any = None           # whatever the task keeps for building the model / evaluating
    # digests of the data (and tokenizer) trained on: stored in checkpoints, checked on resume
    fingerprint: dict[str, str] = field(default_factory=dict)


class Task(Protocol):
    name: str
    best_metric: str              # e.g. "val/loss"; its direction follows from its name (BestMetric)
    splits: tuple[str, ...]       # what `blueberry evaluate --split` accepts, e.g. ("val",)

    def build_data(self, cfg, accelerator) -> TaskData: ...

    def build_model(self, cfg, data: TaskData): ...

    def describe_model(self, model) -> dict[str, int]:
        """Parameter counts to log, e.g. {"total": ..., "active": ...}."""

    def train_loss(self, model, batch, cfg) -> tuple[Any, dict[str, Any]]:
        """(loss to backpropagate, named detached parts to log as train/<name>)."""

    def evaluate(self, model, data: TaskData, cfg, accelerator, split: str = "val",
                 in_training: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
        """(scalar metrics named like "<split>/loss", figures by name: matplotlib figures (saved as PNGs
        and shown in W&B) or tasks.media Tables / Confusions (W&B only)). Same on every rank.
        in_training: the trainer's periodic evaluation, which may add training diagnostics."""

    def after_optimizer_step(self, model, cfg, accelerator) -> None:
        """Per-step bookkeeping that is not gradient descent (e.g. MoE router bias updates)."""


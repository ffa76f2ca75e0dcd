"""LR schedules as a multiplier of the peak LR per optimizer step, applied through LambdaLR.

To add a schedule, write `def _name(step, cfg) -> float` for the steps after warmup and register it
in SCHEDULES (and in the `schedule` choices of blueberry/config.py); warmup is applied here for all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:   # torch only where a scheduler is built: lr_factor serves torch-free reports too
    import torch


def _progress(step: int, cfg: Any) -> float:
    """0 at the first step after warmup, 1 at the last step (max_steps - 1), clamped."""
    span = cfg.max_steps - 1 - cfg.warmup_steps
    if span <= 0:  # one step after warmup: it is the last one, so it gets the final LR
        return 1.0
    return min(1.0, max(0.0, (step - cfg.warmup_steps) / span))


def _cosine(step: int, cfg: Any) -> float:
    m = cfg.min_lr_ratio
    return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * _progress(step, cfg)))


def _linear(step: int, cfg: Any) -> float:
    return 1 - (1 - cfg.min_lr_ratio) * _progress(step, cfg)


def _constant(step: int, cfg: Any) -> float:
    return 1.0


def _wsd(step: int, cfg: Any) -> float:
    """Warmup–stable–decay (Hu et al. 2024, MiniCPM, arXiv:2404.06395): flat, then a linear tail.

    The last `round(wsd_decay_frac * max_steps)` steps (at least 1) decay; the first of them is
    already below 1 and the last one is exactly min_lr_ratio.
    """
    n_decay = max(1, round(cfg.wsd_decay_frac * cfg.max_steps))
    start = cfg.max_steps - n_decay
    if step < start:
        return 1.0
    done = min(1.0, (step - start + 1) / n_decay)
    return 1 - (1 - cfg.min_lr_ratio) * done


SCHEDULES: dict[str, Callable[[int, Any], float]] = {
    "cosine": _cosine,
    "linear": _linear,
    "constant": _constant,
    "wsd": _wsd,
    "plateau": _constant,   # after warmup the LR is the peak until WarmupThenPlateau lowers it
}


def lr_factor(step: int, cfg: Any) -> float:
    """Multiplier of the peak LR for the update of optimizer step `step` (0-based).

    Linear warmup from warmup_init_ratio: r + (1 - r) * (step + 1) / warmup_steps, so step 0
    already moves and step warmup_steps - 1 is at the peak; then `cfg.schedule`.
    """
    if step < cfg.warmup_steps:
        r = cfg.warmup_init_ratio
        return r + (1 - r) * (step + 1) / cfg.warmup_steps
    try:
        fn = SCHEDULES[cfg.schedule]
    except KeyError:
        raise ValueError(f"schedule={cfg.schedule!r}: must be one of {', '.join(SCHEDULES)}") from None
    return fn(step, cfg)


class WarmupThenPlateau:
    """schedule=plateau: the warmup of lr_factor, then torch's ReduceLROnPlateau on the metric the
    trainer passes to `observe` after each evaluation (plateau_factor, plateau_patience).

    The LambdaLR stops stepping once warmup is done, so it never overwrites a reduction.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: Any, mode: str):
        import torch

        self.warmup_steps = cfg.warmup_steps
        self.warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience)

    def step(self) -> None:
        if self.warmup.last_epoch < self.warmup_steps:
            self.warmup.step()

    def observe(self, value: float) -> None:
        if self.warmup.last_epoch >= self.warmup_steps:
            self.plateau.step(value)

    def state_dict(self) -> dict[str, Any]:
        return {"warmup": self.warmup.state_dict(), "plateau": self.plateau.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warmup.load_state_dict(state["warmup"])
        self.plateau.load_state_dict(state["plateau"])


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any,
                    mode: str = "min") -> torch.optim.lr_scheduler.LambdaLR | WarmupThenPlateau:
    """LambdaLR setting each group's lr to its peak x lr_factor(step); .step() it once per OPTIMIZER step.

    Do NOT pass it through `accelerator.prepare`: Accelerate's AcceleratedScheduler steps the wrapped
    scheduler num_processes times per optimizer step (split_batches=False), so a schedule counted in
    optimizer steps runs at the wrong speed (the "schedule that only ran 21% of its cosine" bug). Call scheduler.step() yourself right after each real
    optimizer.step() (when `accelerator.sync_gradients`). The lambda is a closure, so the
    scheduler's state_dict holds no config object and loads with torch.load(weights_only=True).
    `mode` ("min"/"max") is the direction of the metric a plateau schedule watches.
    """
    import torch

    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule={cfg.schedule!r}: must be one of {', '.join(SCHEDULES)}")
    if cfg.schedule == "plateau":
        return WarmupThenPlateau(optimizer, cfg, mode)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))

"""The trainer's own state: everything besides tensors that an exact resume needs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainerState:
    """Saved with every checkpoint (Accelerate's custom state) and restored first on resume."""

    step: int = 0                 # optimizer steps done
    micro_batches: int = 0        # global micro-batches (one per rank each) consumed = data position
    items_seen: int = 0           # tokens (lm) or samples, over all processes
    wall_time: float = 0.0        # seconds of training before this process started
    best_value: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    wandb_id: str | None = None
    fingerprint: dict[str, str] = field(default_factory=dict)   # the data and tokenizer it trained on

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

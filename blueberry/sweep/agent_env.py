"""The `wandb agent` environment variables `sweep local` honours, with the agent's names and defaults
(wandb/env.py, wandb_agent.Agent, wandb 0.31). Text that is no whole number is refused in one line
before anything starts, never ignored."""

from __future__ import annotations

import os

from blueberry.errors import UserError

KILL_DELAY_ENV, KILL_DELAY_S = "WANDB_AGENT_KILL_DELAY", 30
MAX_INITIAL_ENV, MAX_INITIAL_FAILURES = "WANDB_AGENT_MAX_INITIAL_FAILURES", 5
FLAPPING_ENV, FLAPPING_MAX_SECONDS, FLAPPING_MAX_FAILURES = "WANDB_AGENT_DISABLE_FLAPPING", 60.0, 3


def _whole_number(name: str, default: int, unit: str, agent: str) -> int:
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name}={text!r}: must be a whole number of {unit} ({agent}); default {default}") from None


def kill_delay() -> int:
    """Seconds from a trial's SIGTERM to its SIGKILL."""
    return _whole_number(KILL_DELAY_ENV, KILL_DELAY_S, "seconds", "wandb agent refuses it too")


def max_initial_failures() -> int:
    """Failed trials after which a runner whose trials nearly all failed gives up (failures.FailureGuard)."""
    return _whole_number(MAX_INITIAL_ENV, MAX_INITIAL_FAILURES, "failed trials",
                         "wandb agent would silently use 5")


def flapping_checked() -> bool:
    """Whether 3 failures in a runner's first minute stop it (the agent's test: the text is exactly true)."""
    return os.environ.get(FLAPPING_ENV) != "true"


def check_agent_env() -> None:
    """Refuse a bad setting before a sweep dir or trial exists."""
    kill_delay()
    max_initial_failures()

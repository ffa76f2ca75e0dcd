"""When a runner gives up on a sweep whose trials keep failing (a bad node, a broken environment),
by the rules of W&B's own agent (wandb/wandb_agent.py, Agent._run_loop, wandb 0.31), so `sweep
local` and `wandb agent` stop on the same sweep:

- `--max-consecutive-failed-runs N` (no limit by default): N failed runs in a row.
- always on, WANDB_AGENT_MAX_INITIAL_FAILURES (default 5): at least that many failed runs, and at
  least as many as the runs that had ended before the last one (this process's runs have been
  nearly all failures: at most one succeeded).
- always on unless WANDB_AGENT_DISABLE_FLAPPING=true: 3 failed runs within the agent's first 60 s.

Counted per runner process, as per agent process. The agent counts every exit code above 0 as a
failure; a trial here counts when it ended "failed": one that diverged (exit 3) ran and produced a
result, so it breaks a streak, as a finished or hyperband-stopped one does; one interrupted or
preempted (exit 75) says nothing about the node and changes no count.
"""

from __future__ import annotations

from blueberry.sweep.agent_env import (FLAPPING_ENV, FLAPPING_MAX_FAILURES, FLAPPING_MAX_SECONDS, MAX_INITIAL_ENV,
                                       flapping_checked, max_initial_failures)

NEUTRAL = ("interrupted", "running")   # ends that say nothing about the node


class FailureGuard:
    """Feed it every trial that ends (`ended`); it says why the runner must stop, once it must."""

    def __init__(self, max_consecutive: int | None, *, started: float, max_initial: int | None = None,
                 flapping: bool | None = None):
        self.max_consecutive = max_consecutive
        self.max_initial = max_initial_failures() if max_initial is None else max_initial
        self.flapping = flapping_checked() if flapping is None else flapping
        self.started = started
        self.ended_trials = 0
        self.failed: list[str] = []   # this runner's failed trials, in the order they ended
        self.streak: list[str] = []   # the failed trials since the last one that ran to a result
        self.blamed: list[str] = []   # the failed trials the stop is about

    def ended(self, trial_id: str, status: str, now: float) -> str | None:
        """Record one ended trial; the reason to stop, or None to go on."""
        if status in NEUTRAL:
            return None
        ended_before, self.ended_trials = self.ended_trials, self.ended_trials + 1
        if status != "failed":
            self.streak = []
            return None
        self.failed.append(trial_id)
        self.streak.append(trial_id)
        if self.max_consecutive is not None and len(self.streak) >= self.max_consecutive:
            self.blamed = list(self.streak)
            return f"{len(self.streak)} trials in a row failed (--max-consecutive-failures {self.max_consecutive})"
        self.blamed = list(self.failed)
        if self.flapping and now < self.started + FLAPPING_MAX_SECONDS and len(self.failed) >= FLAPPING_MAX_FAILURES:
            return (f"{len(self.failed)} trials failed within its first {FLAPPING_MAX_SECONDS:.0f} s, as wandb agent "
                    f"stops ({FLAPPING_ENV}=true turns this off)")
        if len(self.failed) >= self.max_initial and len(self.failed) >= ended_before:
            return (f"{len(self.failed)} of the {self.ended_trials} trials it ran failed, as wandb agent stops "
                    f"({MAX_INITIAL_ENV}={self.max_initial})")
        return None

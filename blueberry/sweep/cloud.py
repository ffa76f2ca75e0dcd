"""`blueberry sweep create` / `sweep agent`: the same YAML on W&B's own sweep controller.

Both need the W&B server (W&B's controller always does); without a key or a reachable server
they stop at once and point to `blueberry sweep local`, which runs the same file serverless.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from typing import Any

from blueberry.network import require_wandb_server

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)


def _require_server(command: str, sweep_file: str = "FILE") -> None:
    require_wandb_server(f"sweep {command}", f"run it without a server: blueberry sweep local {sweep_file}")


def create(config: dict[str, Any], sweep_file: str, *, project: str | None, entity: str | None) -> str:
    """Register the sweep with W&B; returns ENTITY/PROJECT/ID for the agents. The project defaults to the
    YAML's, else the trainer's default (blueberry), so the sweep and its runs share one project."""
    _require_server("create", sweep_file)
    import wandb

    from blueberry.config import RunConfig

    project = project or config.get("project") or RunConfig.wandb_project
    sweep_id = wandb.sweep(config, project=project, entity=entity or config.get("entity"))
    entity = entity or config.get("entity") or wandb.Api().default_entity
    return f"{entity}/{project}/{sweep_id}"


def agent_argv(sweep_id: str, count: int | None, max_consecutive_failures: int | None = None) -> list[str]:
    """The `wandb agent` command line. --forward-signals: the agent starts each trial in a process group
    of its own (wandb 0.31), so only the agent can pass our SIGTERM/SIGUSR1/Ctrl-C on to the trial."""
    wandb_cli = shutil.which("wandb") or os.path.join(os.path.dirname(sys.executable), "wandb")
    return [wandb_cli, "agent", "--forward-signals", *(["--count", str(count)] if count else []),
            *(["--max-consecutive-failed-runs", str(max_consecutive_failures)] if max_consecutive_failures else []),
            sweep_id]


def agent(sweep_id: str, count: int | None, max_consecutive_failures: int | None = None) -> int:
    """`wandb agent` in its own process group; our signals go to that group, and the agent forwards them
    to the trial (in its own group)."""
    _require_server("agent")
    process = subprocess.Popen(agent_argv(sweep_id, count, max_consecutive_failures), start_new_session=True)

    def forward(signum, _frame):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        return process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

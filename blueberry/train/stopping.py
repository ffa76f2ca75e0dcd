"""What a stop signal means for a run: its sweep's stop (finish "stopped", exit 0) or a preemption (exit 75,
W&B told to re-queue it). `wandb agent`, SLURM, `sweep local` and a user's `kill` all send SIGTERM, so the
signal alone does not say; stop_or_preempt holds the rule, in the order that decides."""

from __future__ import annotations

import base64
import json
import os
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path

from blueberry.errors import STOP_FILE_ENV
from blueberry.network import wandb_api_key, wandb_base_url, within

ASK_STOP_TIMEOUT_S = 5.0   # the agent SIGKILLs WANDB_AGENT_KILL_DELAY (30) s after its SIGTERM


def sweep_asked_to_stop() -> bool:
    """Whether the sweep runner marked this trial's signal as a stop (errors.STOP_FILE_ENV)."""
    path = os.environ.get(STOP_FILE_ENV)
    return bool(path) and Path(path).exists()


def stop_or_preempt(signum: int | None, stop_requested: bool, told_to_stop: Callable[[], bool | None]) -> str:
    """How a run that got SIGTERM or SIGUSR1 ends: "stopped" (exit 0: done, as far as a sweep goes) or
    "preempted" (exit 75, W&B told `mark_preempting`, so its sweep re-queues the run and it resumes).
    `told_to_stop()` asks W&B's server (None: no answer). The first rule that applies wins:

    1. a stop is already known: W&B's own stop check fired (stop_fn), or `sweep local` marked its SIGTERM
       a stop (errors.STOP_FILE_ENV) -> stopped;
    2. SIGUSR1 -> preempted: SLURM's `--signal`, or a user asking for a checkpoint and a requeue;
    3. under `wandb agent` (WANDB_SWEEP_ID), W&B's server says whether the run was told to stop (the agent
       SIGTERMs its trial when the server says stop: hyperband, the UI's Stop button): yes -> stopped,
       no -> preempted (e.g. the agent itself was shut down: W&B re-queues the trial for another agent);
    4. no answer, in a SLURM job (SLURM_JOB_ID) -> preempted: SLURM sends SIGTERM at preemption and at the
       time limit, and slurm/lib.sh turns its USR1 warning into SIGTERM for the whole job;
    5. no answer, under `wandb agent` -> stopped: the agent's SIGTERM is how W&B stops a run, and
       re-queueing it would undo what hyperband decided;
    6. otherwise (`kill`, torchrun passing a signal on, `sweep local` shutting down) -> preempted.
    """
    if stop_requested:
        return "stopped"
    if signum == signal.SIGUSR1:
        return "preempted"
    under_agent = bool(os.environ.get("WANDB_SWEEP_ID"))
    answer = told_to_stop() if under_agent else None
    if answer is not None:
        return "stopped" if answer else "preempted"
    if os.environ.get("SLURM_JOB_ID"):
        return "preempted"
    return "stopped" if under_agent else "preempted"


STOP_QUERY = """query RunStopped($entity: String, $project: String!, $run: String!) {
  project(name: $project, entityName: $entity) { run(name: $run) { stopped shouldStop } }
}"""


def server_says_stop(entity: str | None, project: str, run_id: str, timeout: float = ASK_STOP_TIMEOUT_S) -> bool | None:
    """Whether W&B's server marked the run to stop (`shouldStop`: a sweep's early termination, or `stopped`:
    the UI's Stop), asked in one GraphQL request bounded by `timeout`; None without a key or an answer. A
    plain HTTP request, not W&B's client: that retries for minutes, and the agent SIGKILLs after 30 s."""
    key = wandb_api_key()
    if not key:
        return None
    request = urllib.request.Request(
        f"{wandb_base_url()}/graphql", method="POST",
        data=json.dumps({"query": STOP_QUERY,
                         "variables": {"entity": entity or None, "project": project, "run": run_id}}).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()})

    def ask() -> bool | None:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.load(response)
        project = (answer.get("data") or {}).get("project") if isinstance(answer, dict) else None
        run = project.get("run") if isinstance(project, dict) else None
        return bool(run.get("stopped") or run.get("shouldStop")) if isinstance(run, dict) else None

    return within(timeout, ask)

"""Metrics go to the run dir first (metrics.jsonl, flushed per row) and are mirrored to W&B.

Only the main process makes a tracker that writes; the others get one that does nothing.
W&B never blocks training: no API key means offline with a one-line notice, and an init that
fails or times out falls back to offline (then disabled) and says so.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from blueberry import rundir
from blueberry.network import has_wandb_key

INIT_TIMEOUT_S = float(os.environ.get("WANDB_INIT_TIMEOUT", 30))


def notice(message: str) -> None:
    print(f"blueberry: {message}", file=sys.stderr, flush=True)


def choose_mode(requested: str) -> str:
    """The W&B mode to start in: WANDB_MODE wins over the default, no key means offline."""
    mode = requested
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("offline", "disabled", "dryrun") and requested == "online":
        mode = "offline" if env == "dryrun" else env
    if mode == "online" and not has_wandb_key():
        notice("no W&B API key found: logging offline (sync later with `wandb sync RUN_DIR/wandb/offline-run-*`)")
        mode = "offline"
    return mode


class Tracker:
    """Writes metrics.jsonl and a W&B run; `enabled=False` (non-main ranks) makes every call a no-op."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.wandb_run = None
        self.mode = "disabled"    # the W&B mode actually in use
        self._metrics = None

    def start(self, config: dict[str, Any], *, mode: str, project: str, entity: str, group: str,
              tags: list[str], run_id: str | None) -> None:
        if not self.enabled:
            return
        self._metrics = open(self.run_dir / rundir.METRICS, "a", buffering=1)
        if mode != "disabled":
            self.wandb_run = self._init_wandb(config, mode, project, entity, group, tags, run_id)

    def _init_wandb(self, config, mode, project, entity, group, tags, run_id):
        import wandb

        if os.environ.get("WANDB_MODE") == "":
            del os.environ["WANDB_MODE"]   # an empty value fails wandb's settings validation

        kwargs = dict(project=project, entity=entity or None, group=group or None, tags=tags or None,
                      name=self.run_dir.name, dir=str(self.run_dir), config=config,
                      id=run_id, resume="allow" if run_id else None,
                      settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, console="off",
                                              x_disable_stats=True, silent=True))
        if run_id and mode == "offline":
            notice("resuming offline: W&B starts a NEW offline run dir for this run id; "
                   "`wandb sync` uploads each part (the run dir's metrics.jsonl stays continuous)")
        for attempt in ([mode, "offline"] if mode == "online" else [mode]):
            try:
                run = wandb.init(mode=attempt, **kwargs)
            except Exception as e:  # any failure to reach W&B must not stop training
                notice(f"W&B init failed in {attempt} mode ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
                       + ("; retrying offline" if attempt == "online" else "; W&B disabled for this run"))
                continue
            self._check_sweep_config(run, config)
            self.mode = attempt
            return run
        return None

    @staticmethod
    def _check_sweep_config(run, config: dict[str, Any]) -> None:
        """Under `wandb agent` the swept keys are locked in wandb.config; they must equal what trains."""
        if not os.environ.get("WANDB_SWEEP_ID"):
            return
        differing = [k for k, v in run.config.items() if k in config and config[k] != v]
        if differing:
            notice(f"W&B sweep config differs from the trained config for {', '.join(differing)}; "
                   "the trained values are in config.yaml")

    @property
    def wandb_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    @property
    def wandb_dir(self) -> str | None:
        return str(Path(self.wandb_run.dir).parent) if self.wandb_run is not None else None

    def log(self, step: int, row: dict[str, Any], images: dict[str, Path] | None = None) -> None:
        """One row: flushed to metrics.jsonl at once, then to W&B at this optimizer step.

        `images` (name -> PNG in the run dir) go to W&B only; the run dir already holds them.
        """
        if not self.enabled:
            return
        self._metrics.write(json.dumps({"step": step, **row}, default=float) + "\n")
        if self.wandb_run is not None:
            import wandb

            media = {name: wandb.Image(str(path)) for name, path in (images or {}).items()}
            self.wandb_run.log({**row, **media}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.enabled and self.wandb_run is not None:
            self.wandb_run.summary.update(values)

    def finish(self, exit_code: int = 0) -> None:
        if not self.enabled:
            return
        if self._metrics is not None:
            self._metrics.close()
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)

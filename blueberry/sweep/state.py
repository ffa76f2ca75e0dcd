"""A local sweep's state, all of it in the sweep dir, shared safely by any number of runners.

SWEEP_DIR/
    sweep.yaml            the sweep as given (W&B format)
    sweep.json            name, seed, overrides, launch config: what makes two runners the same sweep
    .lock                 flock'ed while a runner claims a trial
    trials/tNNNN/trial.json   params, argv, status, owner + heartbeat, metric history, value
    trials/tNNNN/output.log   the trial's stdout and stderr
    trials/tNNNN/runs/        the trial's run dir(s) (blueberry trials get --out_dir here)

A trial is claimed under the lock, so two runners (two `sweep local` on one dir, a SLURM array)
never start the same config. A runner that dies leaves its trials "running" with a heartbeat
that stops; another runner reclaims them as "interrupted" and re-runs them in their own folder,
where `--resume=auto` continues from their last checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from blueberry import rundir
from blueberry.errors import UserError
from blueberry.sweep.engine import next_params

STALE_AFTER_S = 60.0      # a running trial whose heartbeat is older belongs to a dead runner
ENDED = ("finished", "failed", "stopped", "diverged")


@dataclass
class Trial:
    id: str
    params: dict[str, Any]
    status: str = "running"        # running | finished | failed | stopped | interrupted
    argv: list[str] = field(default_factory=list)
    attempts: int = 1
    owner: dict[str, Any] = field(default_factory=dict)
    heartbeat: float = 0.0
    started: float = 0.0
    ended: float | None = None
    exit_code: int | None = None
    run_dir: str | None = None
    history: list[float] = field(default_factory=list)   # the sweep metric, one value per evaluation
    value: float | None = None                            # its best value (W&B's metric_extremum)

    def is_live(self, now: float) -> bool:
        """Running in a runner that is still alive (its heartbeat is recent)."""
        return self.status == "running" and now - self.heartbeat <= STALE_AFTER_S


class SweepDir:
    def __init__(self, path: Path, config: dict[str, Any], meta: dict[str, Any]):
        self.path, self.config, self.meta = path, config, meta

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def metric(self) -> str | None:
        return (self.config.get("metric") or {}).get("name")

    @property
    def goal(self) -> str:
        return (self.config.get("metric") or {}).get("goal", "minimize")

    @classmethod
    def open(cls, path: str | Path, config: dict[str, Any], *, name: str, overrides: list[str],
             seed: int, launch_config: str | None = None) -> SweepDir:
        """Create the sweep dir, or join it when it holds this same sweep (resume / another worker)."""
        path = Path(path)
        meta = {"name": name, "seed": seed, "overrides": list(overrides), "launch_config": launch_config}
        (path / "trials").mkdir(parents=True, exist_ok=True)
        sweep = cls(path, config, meta)
        with sweep.lock():
            if (path / "sweep.json").exists():
                saved = json.loads((path / "sweep.json").read_text())
                saved_config = yaml.safe_load((path / "sweep.yaml").read_text())
                if saved_config != config or saved.get("overrides") != meta["overrides"] or \
                        saved.get("launch_config") != launch_config:
                    raise UserError(f"{path}: holds another sweep (its sweep.yaml, overrides or launch config "
                                    "differ); pass --dir for a new sweep dir")
                sweep.meta = saved
            else:
                rundir.write_atomic(path / "sweep.yaml", yaml.safe_dump(config, sort_keys=False))
                sweep.meta = {**meta, "created": time.time()}
                rundir.write_atomic(path / "sweep.json", json.dumps(sweep.meta, indent=2))
        return sweep

    @contextlib.contextmanager
    def lock(self):
        with open(self.path / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- trials ------------------------------------------------------------------------------
    def trial_dir(self, trial_id: str) -> Path:
        return self.path / "trials" / trial_id

    def newest_run_dir(self, trial_id: str) -> Path | None:
        """The run dir a trial's command wrote last (a resumed trial may have several)."""
        logs = sorted((self.trial_dir(trial_id) / "runs").glob("*/" + rundir.METRICS), key=lambda p: p.stat().st_mtime)
        return logs[-1].parent if logs else None

    def trials(self) -> list[Trial]:
        found = []
        for path in sorted((self.path / "trials").glob("t*/trial.json")):
            try:
                found.append(Trial(**json.loads(path.read_text())))
            except (json.JSONDecodeError, TypeError):
                continue   # written atomically, so only a foreign file lands here
        return found

    def save(self, trial: Trial) -> None:
        rundir.write_atomic(self.trial_dir(trial.id) / "trial.json", json.dumps(asdict(trial), indent=2, default=float))

    def claim(self) -> Trial | None:
        """The next trial for this runner: an interrupted one first, else new params; None when done."""
        with self.lock():
            trials = self.trials()
            now = time.time()
            for t in trials:
                if t.status == "running" and not t.is_live(now):
                    t.status = "interrupted"
                    self.save(t)
            owner = {"host": socket.gethostname(), "pid": os.getpid(), "job": rundir.slurm_job_tag()}
            for t in trials:
                if t.status == "interrupted":
                    t.status, t.attempts, t.owner, t.heartbeat, t.exit_code = "running", t.attempts + 1, owner, now, None
                    self.save(t)
                    return t
            finished = [(t.params, t.value if t.status not in ("failed", "diverged") else None)
                        for t in trials if t.status in ENDED]
            params = next_params(self.config, finished, [t.params for t in trials], self.meta["seed"])
            if params is None:
                return None
            n = sum(1 for _ in (self.path / "trials").glob("t*"))
            trial = Trial(id=f"t{n:04d}", params=params, owner=owner, heartbeat=now, started=now)
            self.trial_dir(trial.id).mkdir(parents=True)
            self.save(trial)
            return trial

"""`blueberry sweep local`: run a W&B sweep YAML with no W&B server.

Each trial's argv is built from the YAML's `command` exactly as `wandb agent` builds it (plus
--override args, --resume=auto so a re-run interrupted trial continues from its checkpoint, and
--out_dir=SWEEP_DIR/trials/tNNNN/runs so its run dirs stay in the sweep dir), and runs as a
subprocess in its own process group from the directory `sweep local` was started in, as `wandb
agent` runs it: relative paths in the command, in `program:`, in values and in overrides mean the
same under both. Up to `workers` at once; Ctrl-C / SIGTERM stop every group (the trainer
checkpoints on SIGTERM) and mark those trials interrupted, so running the same command again resumes
the sweep. A trial still alive WANDB_AGENT_KILL_DELAY seconds (default 30, as the agent) after its
SIGTERM is SIGKILLed. When trials keep failing (failures.FailureGuard: the agent's rules), the runner
gives up as the agent does: it claims no more trials and stops the running ones the same way.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blueberry import rundir
from blueberry.errors import EXIT_DIVERGED, EXIT_PREEMPTED, STOP_FILE_ENV, UserError
from blueberry.sweep.agent_env import kill_delay
from blueberry.sweep.command import apply_overrides, args_json, build_command
from blueberry.sweep.failures import FailureGuard
from blueberry.sweep.hyperband import runs_to_stop
from blueberry.sweep.objective import run_value
from blueberry.sweep.trial_options import sweep_options
from blueberry.sweep.state import SweepDir, Trial

POLL_S = 2.0
TRIAL_DIR_ENV = "BLUEBERRY_TRIAL_DIR"   # a trial's folder in the sweep dir, for programs other than blueberry


@dataclass
class Running:
    trial: Trial
    process: subprocess.Popen
    log: Any
    stopping: str | None = None   # "hyperband" or "shutdown" once we signalled it
    signalled_at: float | None = None   # when the SIGTERM went; SIGKILL follows after the kill delay


class LocalRunner:
    def __init__(self, sweep: SweepDir, *, workers: int = 1, count: int | None = None, show=None,
                 poll_s: float = POLL_S, cwd: str | Path | None = None, max_consecutive_failures: int | None = None):
        """`show(trials)` is called with every trial after each poll (the live display); trials run in
        `cwd` (default: the current directory, as under `wandb agent`); `max_consecutive_failures` is
        `wandb agent --max-consecutive-failed-runs` (None: no limit)."""
        self.sweep, self.workers, self.count, self.poll_s = sweep, workers, count, poll_s
        self.cwd = Path(cwd or os.getcwd())
        self.kill_delay = kill_delay()
        self.failures = FailureGuard(max_consecutive_failures, started=time.monotonic())
        self.gave_up: str | None = None   # why the runner stopped on failing trials
        self.overrides = list(sweep.meta.get("overrides", []))   # the sweep dir's, checked when it was opened
        self.launch_config = sweep.meta.get("launch_config")     # an Accelerate config put in the command's place
        self.show = show or (lambda trials: None)
        self.running: dict[str, Running] = {}
        self.started = 0
        self.shutdown: int | None = None
        self.blueberry_trial = sweep_options(sweep.config) is not None

    # --- main loop ---------------------------------------------------------------------------
    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            exhausted = False
            while True:
                while not self.shutdown and not self.gave_up and not exhausted and len(self.running) < self.workers \
                        and (self.count is None or self.started < self.count):
                    trial = self.sweep.claim()
                    if trial is None:
                        exhausted = True
                        break
                    self._start(trial)
                if not self.running:
                    break
                self._poll()
                trials = self.sweep.trials()   # one read per poll, for hyperband and the display
                self._hyperband(trials)
                self.show(trials)
                self._wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        trials = self.sweep.trials()
        self.show(trials)
        if self.shutdown:
            return 128 + self.shutdown
        return 1 if self.gave_up or any(t.status == "failed" for t in trials) else 0

    def _wait(self) -> None:
        """Up to poll_s, but no longer than until a trial exits: its slot goes to the next trial at
        once (sleeping the whole poll added ~1 s to every trial of a sweep of short trials)."""
        deadline = time.monotonic() + self.poll_s
        while time.monotonic() < deadline and not self.shutdown:
            if any(r.process.poll() is not None for r in self.running.values()):
                return
            time.sleep(0.05)

    def _on_signal(self, signum, _frame) -> None:
        if self.shutdown:        # a second Ctrl-C: no more waiting
            for r in self.running.values():
                _signal_group(r.process, signal.SIGKILL)
            return
        self.shutdown = signum
        self._stop_running()

    def _stop_running(self) -> None:
        """SIGTERM every running trial not yet signalled: it checkpoints, ends "interrupted" and resumes
        when the sweep is run again."""
        for r in self.running.values():
            if r.stopping is None or self.shutdown:
                r.stopping, r.signalled_at = "shutdown", time.monotonic()
                _signal_group(r.process, signal.SIGTERM)

    # --- trials --------------------------------------------------------------------------------
    def command(self, trial: Trial) -> list[str]:
        folder = self.sweep.trial_dir(trial.id)
        json_file = folder / "args.json"
        json_file.write_text(args_json(trial.params))
        argv = build_command(self.sweep.config, trial.params, interpreter=sys.executable,
                             args_json_file=str(json_file.resolve()))
        if self.launch_config:
            argv = with_launch_config(argv, self.launch_config)
        extra = list(self.overrides)
        if self.blueberry_trial:
            # W&B files a sweep's runs under the sweep's project and entity, whatever the trainer asks
            config = self.sweep.config
            where = [f"wandb_{key}={config[key]}" for key in ("project", "entity") if key in config]
            extra = where + extra + ["resume=auto", f"out_dir={(folder / 'runs').resolve()}"]
        return apply_overrides(argv, extra) if extra else argv

    def _start(self, trial: Trial) -> None:
        folder = self.sweep.trial_dir(trial.id)
        trial.argv = self.command(trial)
        trial.started = trial.started or time.time()
        self.sweep.save(trial)
        # Untagged run dirs: an interrupted trial resumes whichever SLURM array task re-runs it.
        env = {**os.environ, "WANDB_RUN_GROUP": os.environ.get("WANDB_RUN_GROUP", self.sweep.name),
               "BLUEBERRY_RUN_TAG": "", STOP_FILE_ENV: str(_stop_file(folder).resolve()),
               TRIAL_DIR_ENV: str(folder.resolve())}
        _stop_file(folder).unlink(missing_ok=True)
        if "OMP_NUM_THREADS" not in os.environ:   # workers share the cores instead of fighting for them
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.workers))
        log = open(folder / "output.log", "a")
        process = subprocess.Popen(trial.argv, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=_die_with_parent)
        self.running[trial.id] = Running(trial, process, log)
        self.started += 1

    def _poll(self) -> None:
        now = time.time()
        for r in list(self.running.values()):
            r.trial.heartbeat = now
            code = r.process.poll()
            if code is not None:
                self._finish(r, code)
            else:
                if r.signalled_at is not None and time.monotonic() > r.signalled_at + self.kill_delay:
                    _signal_group(r.process, signal.SIGKILL)   # as wandb agent after its kill delay
                self._read_history(r.trial)
                self.sweep.save(r.trial)

    def _finish(self, r: Running, code: int) -> None:
        trial = r.trial
        r.log.close()
        del self.running[trial.id]
        self._read_history(trial)
        trial.exit_code, trial.ended = code, time.time()
        if r.stopping == "shutdown":
            trial.status = "interrupted"
        elif r.stopping == "hyperband":
            trial.status = "stopped"
        elif code == 0:
            trial.status = "finished"
        elif code == EXIT_PREEMPTED:
            trial.status = "interrupted"   # preempted from outside: run it again (it resumes)
        elif code == EXIT_DIVERGED:
            trial.status = "diverged"      # a result of the study (an LR too high), not a broken trial
        else:
            trial.status = "failed"
        self.sweep.save(trial)
        reason = self.failures.ended(trial.id, trial.status, time.monotonic())
        if reason and not self.gave_up:
            # As wandb agent gives up: no new trials, and the running ones stopped (they resume), so a
            # bad node is let go at once instead of holding it for trials that are likely failing too.
            self.gave_up = reason
            self._stop_running()

    def _read_history(self, trial: Trial) -> None:
        """The sweep metric as the trial's run dir logged it, one value per row that has it."""
        run = self.sweep.newest_run_dir(trial.id)
        if run is None or not self.sweep.metric:
            return
        trial.run_dir = str(run.relative_to(self.sweep.path))
        values = [row[self.sweep.metric] for row in rundir.read_metrics(run)
                  if isinstance(row.get(self.sweep.metric), (int, float))]
        trial.history = values
        trial.value = run_value(values, self.sweep.goal)

    def _hyperband(self, trials: list[Trial]) -> None:
        if self.shutdown or not self.sweep.config.get("early_terminate"):
            return
        histories = {t.id: t.history for t in trials}
        histories.update({tid: r.trial.history for tid, r in self.running.items()})
        candidates = {tid for tid, r in self.running.items() if r.stopping is None}
        for tid in runs_to_stop(self.sweep.config, histories, candidates):
            r = self.running[tid]
            r.stopping, r.signalled_at = "hyperband", time.monotonic()
            _stop_file(self.sweep.trial_dir(tid)).touch()   # the trainer finishes "stopped", not preempted
            _signal_group(r.process, signal.SIGTERM)


def with_launch_config(argv: list[str], launch_config: str) -> list[str]:
    """argv with the value of its `--config_file` (`accelerate launch`'s) replaced by `launch_config`."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config_file" and i + 1 < len(out):
            out[i + 1] = launch_config
            return out
        if arg.startswith("--config_file="):
            out[i] = f"--config_file={launch_config}"
            return out
    raise UserError(f"--launch-config {launch_config}: the sweep's command has no --config_file to replace "
                    "(it applies to `accelerate launch --config_file FILE ...` commands)")


def _stop_file(trial_dir: Path) -> Path:
    return trial_dir / "stop-requested"


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _die_with_parent() -> None:
    """In the child: SIGTERM when the runner dies, so a killed runner leaves no orphan trial
    (another runner will re-run it). Linux prctl(PR_SET_PDEATHSIG); elsewhere a no-op."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def sweep_name(config: dict[str, Any], source: Path) -> str:
    """The YAML's `name`, else its file name without .yaml."""
    return str(config.get("name") or source.stem)


def default_sweep_dir(config: dict[str, Any], source: Path, overrides: list[str]) -> Path:
    """runs/sweeps/<name>: the same YAML resumes its sweep; overrides (a smoke run) get their own."""
    import hashlib

    name = sweep_name(config, source)
    if overrides:
        name += "-" + hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:6]
    return Path("runs") / "sweeps" / name

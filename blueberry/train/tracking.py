"""Metrics go to the run dir first (metrics.jsonl, flushed per row) and are mirrored to W&B.

Only the main process makes a tracker that writes; the others get one that does nothing.
W&B never blocks training: one background thread owns the W&B run, starts it while the first steps
run and then makes every W&B call in order (a `run.log` costs ~26 ms offline: 1% of a small step),
no API key means offline with a one-line notice, and an init that
fails or times out falls back to offline (then disabled) and says so. Runs carry job_type, a group
(the sweep's, under `wandb agent`), system metrics, console output, git commit and diff; checkpoints
become model Artifacts (wandb_log_model); `blueberry evaluate` logs a linked run (log_evaluation).
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blueberry import rundir
from blueberry.console import notice
from blueberry.train.checkpoint.layout import checkpoint_step
from blueberry.errors import STOP_FILE_ENV, first_line
from blueberry.network import has_wandb_key

INIT_TIMEOUT_S = float(os.environ.get("WANDB_INIT_TIMEOUT", 30))


def sweep_asked_to_stop() -> bool:
    """Whether the sweep runner marked this trial's signal as a stop (errors.STOP_FILE_ENV)."""
    path = os.environ.get(STOP_FILE_ENV)
    return bool(path) and Path(path).exists()


def requeued_run_dir(out_dir: str | Path) -> Path | None:
    """Under `wandb agent`, a trial W&B's sweep re-queued after a preemption (mark_preempting) comes back
    with the same WANDB_RUN_ID: the run dir that W&B run was logging from, when it has a checkpoint
    and is not finished (--resume then continues it)."""
    run_id, root = os.environ.get("WANDB_RUN_ID"), Path(out_dir)
    if not (run_id and os.environ.get("WANDB_SWEEP_ID") and root.is_dir()):
        return None
    for run_dir in sorted(root.iterdir()):
        if (run_dir / rundir.SUMMARY).is_file() and rundir.latest_checkpoint(run_dir) is not None:
            summary = rundir.read_summary(run_dir)
            if summary.get("wandb", {}).get("id") == run_id and summary.get("status") != "finished":
                return run_dir
    return None


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
    """Writes metrics.jsonl and a W&B run; `enabled=False` (non-main ranks) makes every call a no-op.

    metrics.jsonl is written at once, on the training thread. W&B lives on one background thread:
    it starts there (importing wandb and starting its service take ~2 s, longer than a small trial's
    first steps), and every W&B call is queued and made there, in order, so logging never waits on W&B.
    """

    def __init__(self, run_dir: Path, enabled: bool):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.wandb_run = None
        self.mode = "disabled"    # the W&B mode actually in use ("starting" while init runs)
        self.log_model = "none"
        self._metrics = None
        self._calls: queue.SimpleQueue | None = None   # W&B calls for the worker; None ends it
        self._worker: threading.Thread | None = None
        self._started = threading.Event()              # W&B init has ended (with a run or without)
        self._started.set()
        self._failed_call = False
        self._logged_steps: set[int] = set()   # checkpoints already logged as model Artifacts

    def start(self, config: dict[str, Any], *, mode: str, project: str, entity: str, group: str,
              tags: list[str], run_id: str | None, job_type: str = "train", system_metrics: bool = True,
              console: bool = True, log_model: str = "none", on_ready: Callable[[Tracker], None] | None = None,
              on_stop: Callable[[], None] | None = None) -> None:
        """Open metrics.jsonl now and start W&B in the background; `on_ready(tracker)` runs once W&B
        is up (or has given up), `on_stop()` when W&B asks the run to stop (a sweep or the UI)."""
        if not self.enabled:
            return
        self._metrics = open(self.run_dir / rundir.METRICS, "a", buffering=1)
        self.log_model = log_model
        if mode == "disabled":
            return
        self.mode = "starting"
        self._started.clear()
        options = dict(config=config, mode=mode, project=project, entity=entity, group=group, tags=tags,
                       run_id=run_id, job_type=job_type, system_metrics=system_metrics, console=console,
                       on_stop=on_stop)
        self._calls = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._work, args=(options, on_ready), name="blueberry-wandb",
                                        daemon=True)
        self._worker.start()

    def _work(self, options: dict[str, Any], on_ready) -> None:
        """The W&B thread: init, then each queued call in order until finish() sends None."""
        try:
            run, mode = init_wandb(self.run_dir, **options)
        except Exception as e:   # nothing in W&B may stop training
            notice(f"W&B could not start ({first_line(e, 120)}); W&B disabled for this run")
            run, mode = None, "disabled"
        self.wandb_run, self.mode = run, mode
        try:
            if on_ready is not None:
                on_ready(self)
        finally:
            self._started.set()
        while (item := self._calls.get()) is not None:
            fn, done = item
            try:
                if self.wandb_run is not None:
                    fn(self.wandb_run)
            except Exception as e:   # a W&B failure loses a W&B row, never training: metrics.jsonl has it
                if not self._failed_call:
                    self._failed_call = True
                    notice(f"a W&B call failed ({first_line(e, 120)}); "
                           "the run dir's metrics.jsonl has every row")
            finally:
                if done is not None:
                    done.set()

    def _call(self, fn: Callable, wait: bool = False) -> None:
        """fn(wandb_run) on the W&B thread once W&B is up; never when W&B is off. `wait`: return only
        once it has run (a checkpoint must still exist when its Artifact copies it)."""
        if not self.enabled or self._calls is None:
            return
        done = threading.Event() if wait else None
        self._calls.put((fn, done))
        if done is not None:
            done.wait()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until W&B init has ended (the last step before finish, or a test)."""
        self._started.wait(timeout)

    @property
    def wandb_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    @property
    def wandb_dir(self) -> str | None:
        return str(Path(self.wandb_run.dir).parent) if self.wandb_run is not None else None

    @property
    def group(self) -> str | None:
        """The W&B group in use (`blueberry evaluate` puts its linked run there too)."""
        return self.wandb_run.group or None if self.wandb_run is not None else None

    def log(self, step: int, row: dict[str, Any], media: dict[str, Any] | None = None) -> None:
        """One row: flushed to metrics.jsonl at once, then to W&B at this optimizer step.

        `media` go to W&B only (name -> a PNG in the run dir, or a tasks.media Table/Confusion);
        the run dir already holds the PNGs and the numbers.
        """
        if not self.enabled:
            return
        self._metrics.write(json.dumps({"step": step, **row}, default=float) + "\n")
        row, media = dict(row), dict(media or {})
        self._call(lambda run: run.log({STEP_METRIC: step, **row, **wandb_media(media)}, step=step))

    def summary(self, values: dict[str, Any]) -> None:
        values = dict(values)
        self._call(lambda run: run.summary.update(values))

    def mark_preempting(self) -> None:
        """Tell W&B this run is being preempted: a sweep re-queues it when it exits non-zero."""
        self._call(lambda run: run.mark_preempting())

    def checkpoint_saved(self, ckpt: Path, step: int, best: bool) -> None:
        """wandb_log_model=all: every checkpoint as a version of the run's model Artifact."""
        if self.log_model == "all" and step not in self._logged_steps:
            self._logged_steps.add(step)
            aliases = ["latest", f"step-{step}"] + (["best"] if best else [])
            self._call(lambda run: log_model_artifact(run, self.run_dir, Path(ckpt), step, aliases), wait=True)

    def _log_best_model(self) -> None:
        """wandb_log_model=best: the best checkpoint (else the last) once, as the run ends."""
        from blueberry.train import checkpoint

        latest = rundir.latest_checkpoint(self.run_dir)
        best = checkpoint.best_checkpoint(self.run_dir) or latest
        if best is None:
            return
        step = checkpoint_step(best)
        aliases = ["best", f"step-{step}"] + (["latest"] if latest.resolve() == best.resolve() else [])
        self._call(lambda run: log_model_artifact(run, self.run_dir, best, step, aliases), wait=True)

    def finish(self, exit_code: int = 0) -> None:
        if not self.enabled:
            return
        if self._metrics is not None:
            self._metrics.close()
        if self.log_model == "best":
            self._log_best_model()
        if self._worker is not None:
            self._calls.put(None)   # after every queued call
            self._worker.join()
            self._worker, self._calls = None, None
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)


def init_wandb(run_dir: Path, *, config: dict[str, Any], mode: str, project: str, entity: str, group: str,
               tags: list[str], run_id: str | None, job_type: str, system_metrics: bool, console: bool,
               on_stop: Callable[[], None] | None = None, name: str | None = None, folder: Path | None = None):
    """(W&B run, mode in use), or (None, "disabled") when neither the asked mode nor offline starts."""
    import wandb

    if os.environ.get("WANDB_MODE") == "":
        del os.environ["WANDB_MODE"]   # an empty value fails wandb's settings validation

    sweep_id = os.environ.get("WANDB_SWEEP_ID")
    # No tags given: the task and the preset, so runs filter by them in the UI.
    tags = tags or [t for t in (config.get("task"), config.get("preset")) if t]
    kwargs = dict(project=project, entity=entity or None, tags=tags or None, job_type=job_type,
                  # Runs of one sweep share a group (W&B's agent sets none): the UI folds them together.
                  group=group or os.environ.get("WANDB_RUN_GROUP") or (f"sweep-{sweep_id}" if sweep_id else None),
                  name=name or run_dir.name, dir=str(folder or run_dir), config=config,
                  id=run_id, resume="allow" if run_id else None,
                  settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, console="auto" if console else "off",
                                          x_disable_stats=not system_metrics, save_code=True,
                                          # quiet, not silent: W&B's warnings (e.g. a sweep overriding
                                          # the project) still show; its run summary table does not
                                          quiet=True,
                                          **({"stop_fn": on_stop} if on_stop is not None else {})))
    if run_id and mode == "offline":
        notice("resuming offline: W&B starts a NEW offline run dir for this run id; "
               "`wandb sync` uploads each part (the run dir's metrics.jsonl stays continuous)")
    for attempt in ([mode, "offline"] if mode == "online" else [mode]):
        try:
            run = wandb.init(mode=attempt, **kwargs)
        except Exception as e:  # any failure to reach W&B must not stop training
            notice(f"W&B init failed in {attempt} mode ({first_line(e, 120)})"
                   + ("; retrying offline" if attempt == "online" else "; W&B disabled for this run"))
            continue
        _check_sweep_config(run, config)
        declare_metrics(run)
        return run, attempt
    return None, "disabled"


STEP_METRIC = "trainer/step"   # the optimizer step, logged in every W&B row


def declare_metrics(run) -> None:
    """Every chart's x-axis is the optimizer step, declared (W&B's own _step equals it as well, since
    rows are logged with step=). Summaries are left as the last value, a scalar: define_metric(summary=
    "min") would make a metric's summary {"min": x}, which W&B's sweep controller cannot use (it takes
    the min/max over a run's history values AND its summary value, SweepRun.metric_extremum); the best
    value is its own scalar instead, `<best_metric>_best` (the sweeps in sweeps/ name the metric itself)."""
    run.define_metric(STEP_METRIC)
    run.define_metric("*", step_metric=STEP_METRIC)


def _check_sweep_config(run, config: dict[str, Any]) -> None:
    """Under `wandb agent` the swept keys are locked in wandb.config; they must equal what trains."""
    if not os.environ.get("WANDB_SWEEP_ID"):
        return
    differing = [k for k, v in run.config.items() if k in config and config[k] != v]
    if differing:
        notice(f"W&B sweep config differs from the trained config for {', '.join(differing)}; "
               "the trained values are in config.yaml")


def wandb_media(media: dict[str, Any]) -> dict[str, Any]:
    """W&B objects for a task's media: PNG paths as Images, tables as Tables, confusion matrices
    as W&B's interactive confusion-matrix chart."""
    if not media:
        return {}
    import wandb

    from blueberry.tasks.media import Confusion, Table

    out = {}
    for name, item in media.items():
        if isinstance(item, Table):
            out[name] = wandb.Table(columns=list(item.columns), data=[list(r) for r in item.rows])
        elif isinstance(item, Confusion):
            out[name] = wandb.plot.confusion_matrix(y_true=list(item.targets), preds=list(item.predictions),
                                                    class_names=list(item.class_names), title=name)
        else:
            out[name] = wandb.Image(str(item))
    return out


def log_model_artifact(run, run_dir: Path, ckpt: Path, step: int | None, aliases: list[str]) -> None:
    """The checkpoint as a version of the model Artifact `model-<run id>`, laid out as a run dir
    (config.yaml + checkpoints/step-N/), so a downloaded version resumes and evaluates like one."""
    import wandb

    if not ckpt.is_dir():   # rotated away before a late W&B start reached it
        notice(f"{ckpt.name}: gone before it could be logged to W&B (keep_last); not logged")
        return
    artifact = wandb.Artifact(f"model-{run.id}", type="model",
                              metadata={"step": step, "run_dir": run_dir.name})
    artifact.add_file(str(run_dir / rundir.CONFIG), name=rundir.CONFIG)
    # policy mutable (the default) copies the files now: rotation may delete the folder later.
    artifact.add_dir(str(ckpt), name=f"{rundir.CHECKPOINTS}/{ckpt.name}")
    run.log_artifact(artifact, aliases=aliases)


def log_evaluation(run_dir: Path, cfg, *, split: str, ckpt: Path, metrics: dict[str, float],
                   media: dict[str, Any]) -> str | None:
    """`blueberry evaluate`'s metrics as a W&B run of job_type evaluate, linked to the training run:
    same project and group, and the training run's id and the checkpoint in its config. Its files go
    to RUN_DIR/eval/wandb/ (the training run's own W&B files stay alone in RUN_DIR/wandb/).
    Returns the W&B run id, or None when W&B is off for this run."""
    mode = choose_mode(cfg.wandb_mode)
    if mode == "disabled":
        return None
    trained = rundir.read_summary(run_dir).get("wandb", {}) if (Path(run_dir) / rundir.SUMMARY).exists() else {}
    folder = Path(run_dir) / "eval"
    folder.mkdir(exist_ok=True)
    config = {**cfg.to_dict(), "evaluated_run_id": trained.get("id"), "evaluated_checkpoint": ckpt.name,
              "evaluated_step": checkpoint_step(ckpt), "split": split}
    run, _ = init_wandb(Path(run_dir), config=config, mode=mode, project=cfg.wandb_project, entity=cfg.wandb_entity,
                        group=trained.get("group") or cfg.wandb_group, tags=cfg.tags, run_id=None,
                        job_type="evaluate", system_metrics=False, console=False,
                        name=f"{Path(run_dir).name}-eval-{split}", folder=folder)
    if run is None:
        return None
    run.log({**metrics, **wandb_media(media)})
    run.summary.update(metrics)
    run.finish()
    return run.id

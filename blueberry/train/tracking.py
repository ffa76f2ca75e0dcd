"""Metrics go to the run dir first (metrics.jsonl, flushed per row) and are mirrored to W&B.

Only the main process makes a tracker that writes; the others get one that does nothing.
W&B never blocks training: one background thread owns the W&B run, starts it while the first steps
run and then makes every W&B call in order (a `run.log` costs ~26 ms offline: 1% of a small step),
no API key means offline with a one-line notice, and an init that
fails or times out falls back to offline (then disabled) and says so. The W&B run id is chosen before
W&B starts (choose_run_id), so checkpoints carry it from step 0 and nothing in training waits for W&B's
init. Runs carry job_type, a group (the sweep's, under `wandb agent`), system metrics, console output,
git commit and diff; checkpoints become model Artifacts (wandb_log_model); `blueberry evaluate` logs a
linked run (log_evaluation).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blueberry import rundir
from blueberry.console import notice
from blueberry.errors import first_line
from blueberry.train.checkpoint.layout import checkpoint_step
from blueberry.network import has_wandb_key
from blueberry.train.stopping import server_says_stop

if TYPE_CHECKING:
    from blueberry.train.artifacts import FetchedArtifact

INIT_TIMEOUT_S = float(os.environ.get("WANDB_INIT_TIMEOUT", 30))
STAGING = ".wandb-staging"   # RUN_DIR/.wandb-staging/step-N: a checkpoint waiting to become an Artifact




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
        notice("no W&B API key found: logging offline (upload later with `blueberry sync RUN_DIR`)")
        mode = "offline"
    return mode


def wandb_assigns_run_id() -> bool:
    """Under `wandb agent` (WANDB_SWEEP_ID) or W&B Launch (WANDB_LAUNCH), wandb.init ignores the id,
    project and entity it is given: the run is the one the sweep or the launch queue made (WANDB_RUN_ID)."""
    return bool(os.environ.get("WANDB_SWEEP_ID")) or \
        os.environ.get("WANDB_LAUNCH", "").strip().lower() in ("1", "true", "yes", "on", "t", "y")


def _ended_at(previous: dict, step: int) -> bool:
    """Whether the last process of a run dir ended cleanly at `step` (its summary.json as it left it): then
    its W&B run has no row past `step`. A killed process leaves status "running"; a diverged one stopped
    past its last checkpoint."""
    return previous.get("step") == step and previous.get("status") not in (None, "running", "diverged")


def choose_run_id(resumed_id: str | None, step: int, previous: dict) -> tuple[str, bool, dict | None]:
    """(W&B run id, whether it resumes that W&B run, {"id", "step"} of the W&B run this one continues: a new
    id's predecessor, or the one a resumed W&B run already continued).

    Chosen before W&B starts, with W&B's own id generator, so checkpoints carry it from step 0 and nothing
    waits for W&B's init. A resume (`resumed_id` from the checkpoint, `previous` the run dir's summary.json
    as the last process left it) continues its W&B run only when that run ended exactly at this
    checkpoint's `step`. Otherwise W&B already has rows past `step` (an older checkpoint was named, the newest
    was damaged, the process was killed after logging on): W&B keeps a run's steps increasing, so online it
    would drop every re-logged row up to the old last step. A NEW run id continues it instead, named in
    W&B's notes and summary and in summary.json. W&B's resume_from (rewind) and fork_from would keep one
    history, but both are preview features that not every server has (not self-managed ones); a new id works
    on every server, offline too. Under `wandb agent` or Launch the id is W&B's (WANDB_RUN_ID): the sweep
    tracks that run, so it is kept and the overlap is said in one line."""
    from wandb.sdk.lib.runid import generate_id

    if wandb_assigns_run_id():
        run_id = os.environ.get("WANDB_RUN_ID") or generate_id()
        os.environ["WANDB_RUN_ID"] = run_id   # what wandb.init takes in a sweep or launch context
        if resumed_id == run_id and not _ended_at(previous, step):
            notice(f"W&B run {run_id} went on past step {step} (this checkpoint) and is its sweep's (or Launch's), "
                   "so it is continued: W&B keeps its earlier rows after this step and drops the re-logged ones; "
                   "the run dir's metrics.jsonl is the true record")
        return run_id, resumed_id == run_id, None
    if resumed_id is None:
        return os.environ.get("WANDB_RUN_ID") or generate_id(), False, None
    if _ended_at(previous, step):
        return resumed_id, True, previous.get("wandb", {}).get("continues")
    run_id = generate_id()
    notice(f"W&B run {resumed_id} went on past step {step} (this checkpoint): logging to a new W&B run {run_id} "
           f"that continues it from step {step} (W&B would drop re-logged steps)")
    return run_id, False, {"id": resumed_id, "step": step}


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
        self.run_id: str | None = None             # chosen before W&B starts (choose_run_id)
        self.project, self.entity = "", ""         # as asked; the W&B run's own once it is up
        self.continues: dict | None = None         # the W&B run a new id continues (choose_run_id)
        self.config_differs: dict[str, dict] = {}  # keys W&B's config holds other values for
        self._metrics = None
        self._calls: queue.SimpleQueue | None = None   # W&B calls for the worker; None ends it
        self._worker: threading.Thread | None = None
        self._started = threading.Event()              # W&B init has ended (with a run or without)
        self._started.set()
        self._failed_call = False
        self._logged_steps: set[int] = set()   # checkpoints already logged as model Artifacts

    def start(self, config: dict[str, Any], *, mode: str, project: str, entity: str, group: str,
              tags: list[str], run_id: str | None, resume: bool = False, continues: dict | None = None,
              job_type: str = "train", system_metrics: bool = True, console: bool = True, log_model: str = "none",
              on_ready: Callable[[Tracker], None] | None = None, on_stop: Callable[[], None] | None = None) -> None:
        """Open metrics.jsonl now and start W&B in the background as run `run_id` (resuming that W&B run
        when `resume`); `on_ready(tracker)` runs once W&B is up (or has given up), `on_stop()` when W&B
        asks the run to stop (a sweep or the UI)."""
        if not self.enabled:
            return
        self._metrics = open(self.run_dir / rundir.METRICS, "a", buffering=1)
        self.log_model = log_model
        shutil.rmtree(self.run_dir / STAGING, ignore_errors=True)   # left by a killed process
        if mode == "disabled":
            return
        self.mode, self.run_id, self.continues = "starting", run_id, continues
        self.project, self.entity = project, entity
        self._started.clear()
        notes = f"continues W&B run {continues['id']} from step {continues['step']}" if continues else None
        options = dict(config=config, mode=mode, project=project, entity=entity, group=group, tags=tags,
                       run_id=run_id, resume=resume, notes=notes, job_type=job_type, system_metrics=system_metrics,
                       console=console, on_stop=on_stop)
        self._calls = queue.SimpleQueue()
        if continues:
            self.summary({"continues_run": continues["id"], "continues_from_step": continues["step"]})
        self._worker = threading.Thread(target=self._work, args=(options, on_ready), name="blueberry-wandb",
                                        daemon=True)
        self._worker.start()

    def _work(self, options: dict[str, Any], on_ready) -> None:
        """The W&B thread: init, then each queued call in order until finish() sends None."""
        try:
            run, mode = init_wandb(self.run_dir, **options)
            if run is not None:
                self.config_differs = check_config(run, options["config"])
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
        once it has run."""
        if not self.enabled or self._calls is None:
            return
        done = threading.Event() if wait else None
        self._calls.put((fn, done))
        if done is not None:
            done.wait()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until W&B init has ended (the last summary, or a test)."""
        self._started.wait(timeout)

    @property
    def wandb_id(self) -> str | None:
        """The W&B run's id: chosen before W&B starts, W&B's own once it is up; None when W&B is off."""
        if self.wandb_run is not None:
            return self.wandb_run.id
        return None if self.mode == "disabled" else self.run_id

    @property
    def wandb_dir(self) -> str | None:
        return str(Path(self.wandb_run.dir).parent) if self.wandb_run is not None else None

    @property
    def group(self) -> str | None:
        """The W&B group in use (`blueberry evaluate` puts its linked run there too)."""
        return self.wandb_run.group or None if self.wandb_run is not None else None

    def record(self) -> dict[str, Any]:
        """summary.json's `wandb` section: the W&B run this run dir logs to, as far as known now. project
        and entity are where W&B filed it (under `wandb agent`, the sweep's), which `evaluate` follows."""
        run = self.wandb_run
        record = {"id": self.wandb_id, "mode": self.mode, "dir": self.wandb_dir, "group": self.group,
                  "project": (run.project if run is not None else self.project) or None,
                  "entity": (run.entity if run is not None else self.entity) or None}
        if self.continues:
            record["continues"] = self.continues
        if self.config_differs:
            record["config_differs"] = self.config_differs
        return record

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

    def told_to_stop(self) -> bool | None:
        """Whether W&B's server marked this run to stop (stopping.server_says_stop); None when W&B is not
        online."""
        run = self.wandb_run
        if not self.enabled or run is None or self.mode != "online":
            return None
        return server_says_stop(run.entity, run.project, run.id)

    def checkpoint_saved(self, ckpt: Path, step: int, best: bool) -> None:
        """wandb_log_model=all: every checkpoint as a version of the run's model Artifact. The checkpoint's
        files are hard-linked into RUN_DIR/.wandb-staging first (no copy, no wait): rotation may delete the
        checkpoint before W&B, still starting, gets to it, and training must not wait for W&B."""
        if self.log_model != "all" or step in self._logged_steps or not self.enabled or self._calls is None:
            return
        self._logged_steps.add(step)
        aliases = ["latest", f"step-{step}"] + (["best"] if best else [])
        staged = _stage(Path(ckpt), self.run_dir / STAGING / Path(ckpt).name)

        def log(run) -> None:
            try:
                log_model_artifact(run, self.run_dir, staged, step, aliases)
            finally:   # W&B copied the files into its own staging when the Artifact was built
                shutil.rmtree(staged, ignore_errors=True)
        self._call(log)

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
        shutil.rmtree(self.run_dir / STAGING, ignore_errors=True)   # staged for a W&B that never started
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)


def _stage(ckpt: Path, into: Path) -> Path:
    """A hard-linked copy of a checkpoint folder (a real copy where the filesystem has no hard links)."""
    shutil.rmtree(into, ignore_errors=True)
    into.parent.mkdir(exist_ok=True)
    try:
        shutil.copytree(ckpt, into, copy_function=os.link)
    except OSError:
        shutil.rmtree(into, ignore_errors=True)
        shutil.copytree(ckpt, into)
    return into


def init_wandb(run_dir: Path, *, config: dict[str, Any], mode: str, project: str, entity: str, group: str,
               tags: list[str], run_id: str | None, job_type: str, system_metrics: bool, console: bool,
               resume: bool = False, notes: str | None = None, on_stop: Callable[[], None] | None = None,
               name: str | None = None, folder: Path | None = None):
    """(W&B run, mode in use), or (None, "disabled") when neither the asked mode nor offline starts."""
    import wandb

    if os.environ.get("WANDB_MODE") == "":
        del os.environ["WANDB_MODE"]   # an empty value fails wandb's settings validation

    sweep_id = os.environ.get("WANDB_SWEEP_ID")
    # No tags given: the task and the preset, so runs filter by them in the UI.
    tags = tags or [t for t in (config.get("task"), config.get("preset")) if t]
    kwargs = dict(project=project, entity=entity or None, tags=tags or None, job_type=job_type, notes=notes,
                  # Runs of one sweep share a group (W&B's agent sets none): the UI folds them together.
                  group=group or os.environ.get("WANDB_RUN_GROUP") or (f"sweep-{sweep_id}" if sweep_id else None),
                  name=name or run_dir.name, dir=str(folder or run_dir), config=config,
                  id=run_id, resume="allow" if resume else None,
                  settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, console="auto" if console else "off",
                                          x_disable_stats=not system_metrics, save_code=True,
                                          # quiet, not silent: W&B's warnings (e.g. a sweep overriding
                                          # the project) still show; its run summary table does not
                                          quiet=True,
                                          **({"stop_fn": on_stop} if on_stop is not None else {})))
    if resume and mode == "offline":
        notice("resuming offline: W&B starts a NEW offline run dir for this run id; "
               "`blueberry sync` uploads each part (the run dir's metrics.jsonl stays continuous)")
    for attempt in ([mode, "offline"] if mode == "online" else [mode]):
        try:
            run = wandb.init(mode=attempt, **kwargs)
        except Exception as e:  # any failure to reach W&B must not stop training
            notice(f"W&B init failed in {attempt} mode ({first_line(e, 120)})"
                   + ("; retrying offline" if attempt == "online" else "; W&B disabled for this run"))
            # W&B's service still holds the failed run: the same id offline is refused ("run ID is in use")
            # until the service is let go (~0.01 s; the offline init starts a new one)
            with contextlib.suppress(Exception):
                wandb.teardown()
            continue
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


def check_config(run, config: dict[str, Any]) -> dict[str, dict]:
    """{key: {"wandb": value, "trained": value}} for each key W&B's config holds another value for than
    the config that trains, said in one line. Such keys come from a sweep (the agent's parameter file,
    WANDB_SWEEP_PARAM_PATH) or W&B Launch (WANDB_CONFIG, its config file): W&B locks them over the config
    it is given, and the trainer reads its own config, not wandb.config. W&B's config keeps W&B's value:
    the sweep controller finds its runs by those values (a grid would propose the point again), and a
    locked key only changes through W&B's private API. So the trained values go to W&B's summary as
    trained/<key>, and to summary.json's wandb section."""
    differs = {k: {"wandb": v, "trained": config[k]} for k, v in run.config.items()
               if k in config and config[k] != v}
    if differs:
        notice("W&B's config differs from what trains for "
               + ", ".join(f"{k} (W&B {d['wandb']!r}, trained {d['trained']!r})" for k, d in differs.items())
               + "; W&B keeps the value its sweep or Launch set, so the trained one is in config.yaml and in "
               "W&B's summary as " + ", ".join(f"trained/{k}" for k in differs))
        run.summary.update({f"trained/{k}": d["trained"] for k, d in differs.items()})
    return differs


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


def log_evaluation(run_dir: Path, cfg, *, split: str, ckpt: Path, metrics: dict[str, float], media: dict[str, Any],
                   out_dir: Path, artifact: FetchedArtifact | None = None) -> str | None:
    """`blueberry evaluate`'s metrics as a W&B run of job_type evaluate, linked to the training run: in the
    project and entity W&B filed the training run under (summary.json's wandb section: under `wandb agent`
    the sweep's, whatever config.yaml says), its group, with the training run's id and the checkpoint in
    its config. An evaluated model Artifact (`artifact`) is the run's input (use_artifact: W&B shows the
    lineage; offline W&B refuses it, so the config names the reference) and its entity/project is where the
    run goes. The files go to OUT_DIR/eval/wandb/ (the training run's own stay alone in RUN_DIR/wandb/).
    Returns the W&B run id, or None when W&B is off for this run."""
    mode = choose_mode(cfg.wandb_mode)
    if mode == "disabled":
        return None
    trained = rundir.read_summary(run_dir).get("wandb", {}) if (Path(run_dir) / rundir.SUMMARY).exists() else {}
    entity, project = trained.get("entity") or cfg.wandb_entity, trained.get("project") or cfg.wandb_project
    if artifact is not None:
        entity, project = artifact.reference.split("/")[:2]
    folder = Path(out_dir) / "eval"
    folder.mkdir(exist_ok=True)
    config = {**cfg.to_dict(), "evaluated_run_id": trained.get("id"), "evaluated_checkpoint": ckpt.name,
              "evaluated_step": checkpoint_step(ckpt), "split": split}
    if artifact is not None:
        config["evaluated_artifact"] = artifact.reference
    run, mode = init_wandb(Path(run_dir), config=config, mode=mode, project=project, entity=entity,
                           group=trained.get("group") or cfg.wandb_group, tags=cfg.tags, run_id=None,
                           job_type="evaluate", system_metrics=False, console=False,
                           name=f"{Path(run_dir).name}-eval-{split}", folder=folder)
    if run is None:
        return None
    check_config(run, config)
    if artifact is not None and mode == "online":
        run.use_artifact(artifact.artifact if artifact.artifact is not None else artifact.reference)
    run.log({**metrics, **wandb_media(media)})
    run.summary.update(metrics)
    run.finish()
    return run.id

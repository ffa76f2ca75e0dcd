"""The trainer's one checkpoint component: `load` at the start, `save` at a step, `close` at the end.

A save writes every rank's files into checkpoints/step-N.incomplete; once all of them are on disk,
the main process fsyncs them, writes manifest.json, and renames the folder to step-N (replacing a
folder of that step left by an abandoned timeline or damaged), then points `best` and rotates.
Synchronous saves do all of this before training goes on. Asynchronous saves (async_save=true)
stage the tensors and return; a thread on the main process publishes the folder once the writes
have landed. At most one save is in flight: the next save (and `close`) first waits for it, and
every rank learns whether it failed. A kill at any moment leaves complete checkpoints and at most
one .incomplete folder, which nothing reads and the next save of the run removes.
"""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from blueberry.console import notice
from blueberry.errors import RunFailed, first_line
from blueberry.train.checkpoint import formats, layout
from blueberry.train.checkpoint.manifest import damage, write_manifest


@dataclass
class _InFlight:
    step: int
    folder: Path
    future: object                       # concurrent.futures.Future of the DCP write
    best: bool
    published: bool = False
    error: BaseException | None = None   # of publishing (main process)
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Checkpointer:
    """All ranks make one and call it at the same points. `on_saved(ckpt, step, best)` runs on the main
    process once a checkpoint is complete (the W&B model Artifact hook)."""

    def __init__(self, accelerator, run_dir: Path, state, *, keep_last: int, async_save: bool = False,
                 on_saved: Callable[[Path, int, bool], None] | None = None):
        self.acc, self.run_dir, self.state, self.keep_last = accelerator, Path(run_dir), state, keep_last
        self.on_saved = on_saved or (lambda ckpt, step, best: None)
        self.writer = None
        self.async_save = async_save
        if async_save:
            from blueberry.train.checkpoint.async_writer import AsyncWriter

            self.writer = AsyncWriter()
        self._in_flight: _InFlight | None = None
        self._saved_step: int | None = None   # the step this process saved last (complete or in flight)
        self.blocked_s: list[float] = []      # how long each save held up training

    # --- load ------------------------------------------------------------------------------------
    def load(self, ckpt: Path) -> None:
        """The full state of `ckpt` (any layout, any world), then the run dir made true to it: the
        checkpoints after it belong to a timeline this run leaves (removed), and `best` points at the
        best step's checkpoint of this timeline, or nowhere."""
        formats.load_state(self.acc, ckpt)
        if self.state.step == 0:
            formats.drop_optimizer_state(self.acc)
        formats.rescale_data_position(self.state, ckpt, self.acc.num_processes)
        if self.acc.is_main_process:
            layout.remove_incomplete(self.run_dir)
            dropped = layout.remove_newer(self.run_dir, self.state.step)
            if dropped:
                notice(f"removed {', '.join(p.name for p in dropped)}: newer than {ckpt.name}, which this run "
                       "continues from")
            self._repoint_best()
        self.acc.wait_for_everyone()

    def _repoint_best(self) -> None:
        best_step = self.state.best_step
        target = layout.step_dir(self.run_dir, best_step) if best_step is not None else None
        if target is not None and (not target.is_dir() or damage(target) is not None):
            target = None
        if layout.best_checkpoint(self.run_dir) != (target.resolve() if target else None):
            layout.point_best(self.run_dir, target)

    # --- save ------------------------------------------------------------------------------------
    def save(self, step: int, *, best: bool = False) -> None:
        """Checkpoint the state of `step` (once per step; `best` marks it as the best too). All ranks."""
        started = time.perf_counter()
        if step == self._saved_step:
            if best:
                self._mark_best()
            return
        self._finish_in_flight()
        folder = layout.incomplete_dir(self.run_dir, step)
        try:
            if self.acc.is_main_process:
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
            self.acc.wait_for_everyone()
            if self.writer is None:
                self._save_now(step, folder, best)
            else:
                self._save_in_background(step, folder, best)
        except BaseException as e:
            self._fail(e, folder, step)
        self._saved_step = step
        self.blocked_s.append(time.perf_counter() - started)

    def _save_now(self, step: int, folder: Path, best: bool) -> None:
        formats.write_state_now(self.acc, folder)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            self._publish(folder, step, best)
        self.acc.wait_for_everyone()

    def _save_in_background(self, step: int, folder: Path, best: bool) -> None:
        formats.write_accelerate_state(self.acc, folder, with_tensors=False)
        with formats.untouched_optimizer_state(self.acc._optimizers[0]):
            future = self.writer.save(formats.model_and_optimizer_state(self.acc), folder / layout.DCP_DIR)
        flight = _InFlight(step, folder, future, best)
        if self.acc.is_main_process:
            flight.thread = threading.Thread(target=self._publish_when_written, args=(flight,),
                                             name="blueberry-ckpt-publish", daemon=True)
            flight.thread.start()
        self._in_flight = flight

    def _publish_when_written(self, flight: _InFlight) -> None:
        try:
            flight.future.result()   # rank 0's DCP write ends after every rank's (its metadata is last)
            with flight.lock:
                self._publish(flight.folder, flight.step, flight.best)
                flight.published = True
        except BaseException as e:
            flight.error = e

    def _publish(self, folder: Path, step: int, best: bool) -> None:
        """Main process: manifest, rename into place, best, the artifact hook, rotation."""
        write_manifest(folder, step)
        final = layout.step_dir(self.run_dir, step)
        layout.publish(folder, final)
        if best:
            layout.point_best(self.run_dir, final)
        self.on_saved(final, step, best)
        layout.rotate(self.run_dir, self.keep_last)

    def _mark_best(self) -> None:
        flight = self._in_flight
        if flight is not None and flight.step == self._saved_step:
            with flight.lock:
                if not flight.published:
                    flight.best = True   # the publishing thread points best once the folder is complete
                    return
        if self.acc.is_main_process:
            final = layout.step_dir(self.run_dir, self._saved_step)
            layout.point_best(self.run_dir, final)
            self.on_saved(final, self._saved_step, True)
            layout.rotate(self.run_dir, self.keep_last)

    def _finish_in_flight(self) -> None:
        """Wait for the save in flight; every rank raises if any rank's part of it failed."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return
        error = None
        try:
            flight.future.result()
        except BaseException as e:
            error = e
        if flight.thread is not None:
            flight.thread.join()
            error = error or flight.error
        failed = torch.tensor([0.0 if error is None else 1.0])
        if self.acc.num_processes > 1:
            import torch.distributed as dist

            dist.all_reduce(failed, dist.ReduceOp.MAX, group=self.writer.group)
        if failed.item():
            self._fail(error or RuntimeError("another rank's part of the checkpoint failed"), flight.folder,
                       flight.step)

    def _fail(self, e: BaseException, folder: Path, step: int):
        e = _cause(e)
        why = None if isinstance(e, (KeyboardInterrupt, SystemExit)) else _write_failure(e, folder.parent)
        shutil.rmtree(folder, ignore_errors=True)   # never leave a half-written checkpoint behind
        if why:
            raise RunFailed(f"checkpoint {layout.step_dir(self.run_dir, step)}: not written ({why}); the partial "
                            "copy was removed and earlier checkpoints are intact; free space, then resume") from e
        raise e

    # --- end -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Wait for the last save (so the run exits with its newest checkpoint complete) and stop the
        background writer. Raises RunFailed when that save failed."""
        try:
            self._finish_in_flight()
        finally:
            if self.writer is not None:
                self.writer.close()
                self.writer = None

    def close_quietly(self) -> None:
        """`close` on a path that already has an error to report: a failure here is one notice."""
        try:
            self.close()
        except Exception as e:
            if self.acc.is_main_process:
                notice(f"the last checkpoint was not completed ({first_line(e)}); earlier ones are intact")

    def stats(self) -> dict:
        """For summary.json: how many saves and how long training waited for them."""
        if not self.blocked_s:
            return {"saves": 0}
        return {"saves": len(self.blocked_s), "async": self.async_save,
                "blocked_s_total": round(sum(self.blocked_s), 3),
                "blocked_s_median": round(statistics.median(self.blocked_s), 3)}


def _cause(e: BaseException) -> BaseException:
    """What went wrong inside torch.distributed.checkpoint: its CheckpointException (a BaseException)
    wraps each failed rank's exception in `.failures` {rank: (exception, traceback)}."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        inner = first[0] if isinstance(first, tuple) else first
        if isinstance(inner, BaseException):
            return _cause(inner)
    return e


_FULL_BELOW = 64 << 20   # bytes free under which a failed save is put down to a full disk


def _write_failure(e: BaseException, folder: Path) -> str | None:
    """Why a save failed when the filesystem is to blame (full, quota, read-only), else None (a bug).
    torch and safetensors wrap the OSError of a full disk in their own errors, so look at the space."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < _FULL_BELOW:
        return f"the disk is full: {free / 2**20:.1f} MiB free; {first_line(e)}"
    if isinstance(e, OSError):
        return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    return None


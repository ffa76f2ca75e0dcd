"""Asynchronous saves: torch.distributed.checkpoint.async_save with its process-based checkpointer.

The training loop only waits while the model and optimizer state is copied (staged) into shared
memory; a background process per rank (spawned once, torch's own) writes the DCP files and rank 0's
writes the metadata once every rank has written, over a gloo group of their own. So when rank 0's
future completes, every rank's files are on disk.

Two things torch leaves to the caller, done here:
- its background process sets the root logger to INFO on the terminal: three lines per rank per save,
  and a failed write's traceback (the trainer reports it in one line).
  It is started here, with logging off in that process (a subclass of torch's private
  _AsyncCheckpointProcess, the one place this module reaches into torch internals; a torch without
  it falls back to torch's own start, noisy but correct);
- async_save needs a process group with a CPU backend even in a one-process run: a world of one
  over gloo is made for it.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from pathlib import Path

import torch.distributed as dist


def _quiet_target(pg_init_info, parent_conn) -> None:
    """The background process: torch's loop with its logging off (a failed write reaches the trainer
    through the save's future, which reports it in one line)."""
    from torch.distributed.checkpoint import _async_process_executor as ape

    logging.disable(logging.ERROR)
    ape._AsyncCheckpointProcess._checkpointing_subprocess(pg_init_info, parent_conn)


class AsyncWriter:
    """One per run, on every rank: `save(state, folder)` returns a Future; `close()` stops the process."""

    def __init__(self):
        self._owns_world = False
        if not dist.is_initialized():   # one process: a world of one, for DCP's coordination
            store = dist.HashStore()
            dist.init_process_group("gloo", store=store, rank=0, world_size=1)
            self._owns_world = True
        # A gloo group of its own: the training's may be NCCL, and its collectives must not interleave.
        self.group = dist.new_group(backend="gloo") if not self._owns_world else dist.group.WORLD
        self._start_error: BaseException | None = None
        self._starter = self._start_process()
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        # Staged straight into shared memory, which the background process reads without a copy.
        self._stager = DefaultStager(StagingOptions(use_pinned_memory=False, use_shared_memory=True,
                                                    use_async_staging=False, use_non_blocking_copy=False))

    def _start_process(self) -> threading.Thread | None:
        """Spawn the background process now (a thread waits for it: importing torch there takes seconds),
        so the first save does not pay for it."""
        try:
            from torch.distributed.checkpoint import _async_process_executor as ape

            class QuietProcess(ape._AsyncCheckpointProcess):
                _checkpointing_subprocess = staticmethod(_quiet_target)

            info = ape._ProcessGroupInitInfo(self.group)   # a collective: every rank is here
        except (ImportError, AttributeError):
            return None

        def start():
            try:
                ape._CHECKPOINT_PROCESS = QuietProcess(info)
            except BaseException as e:   # reported by the first save
                self._start_error = e

        thread = threading.Thread(target=start, name="blueberry-ckpt-writer-start", daemon=True)
        thread.start()
        return thread

    def save(self, state: dict, folder: Path) -> Future:
        """Stage `state` (blocking) and write it to `folder` in the background."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

        if self._starter is not None:
            self._starter.join()
            self._starter = None
            if self._start_error is not None:
                raise RuntimeError(f"the checkpoint writer process did not start: {self._start_error}")
        return dcp.async_save(state, checkpoint_id=str(folder), process_group=self.group,
                              async_checkpointer_type=AsyncCheckpointerType.PROCESS, async_stager=self._stager)

    def close(self) -> None:
        """Stop the background process (after the last save has completed) and free what was made."""
        if self._starter is not None:
            self._starter.join()
        try:
            from torch.distributed.checkpoint import _async_process_executor as ape

            process, ape._CHECKPOINT_PROCESS = ape._CHECKPOINT_PROCESS, None
            if process is not None:
                process.__del__()   # torch's own shutdown: TERMINATE, join, then SIGTERM
        except (ImportError, AttributeError):
            pass
        self._stager.close()
        if self._owns_world and dist.is_initialized():
            dist.destroy_process_group()

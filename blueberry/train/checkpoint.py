"""Atomic checkpoints of the full Accelerate state (model, optimizer, scheduler, RNG, trainer state).

Every rank writes into checkpoints/.tmp-step-N; once all are done the main process renames it to
step-N. A crash or signal mid-save leaves only a .tmp folder, which nothing reads. `best` is a
symlink swapped atomically; rotation keeps the last `keep_last` steps and whatever `best` points at.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from blueberry import rundir

BEST = "best"


@dataclass
class TrainerState:
    """Everything besides tensors that an exact resume needs; saved with the Accelerate state."""

    step: int = 0                 # optimizer steps done
    micro_batches: int = 0        # global micro-batches (one per rank each) consumed = data position
    items_seen: int = 0           # tokens (lm) or samples, over all processes
    wall_time: float = 0.0        # seconds of training before this process started
    best_value: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    wandb_id: str | None = None

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / rundir.CHECKPOINTS / f"step-{step:07d}"


def save(accelerator, run_dir: Path, step: int, *, keep_last: int, best: bool = False) -> Path:
    """Save the state of `step` (once), point `best` at it if asked, rotate. All ranks call this."""
    final = step_dir(run_dir, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if not final.exists():
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _fsync_tree(tmp)
            os.rename(tmp, final)
    if accelerator.is_main_process:
        if best:
            _point_best(run_dir, final)
        _rotate(run_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(path: str | Path) -> tuple[Path, Path]:
    """(run_dir, checkpoint dir) from a run dir or a checkpoint dir."""
    p = Path(path).resolve()
    if p.parent.name == rundir.CHECKPOINTS:
        return p.parent.parent, p
    ckpt = rundir.latest_checkpoint(p)
    if ckpt is None:
        raise FileNotFoundError(p)
    return p, ckpt


def _point_best(run_dir: Path, target: Path) -> None:
    link = Path(run_dir) / rundir.CHECKPOINTS / BEST
    tmp = link.with_name(".best.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.name)
    os.replace(tmp, link)


def best_checkpoint(run_dir: Path) -> Path | None:
    link = Path(run_dir) / rundir.CHECKPOINTS / BEST
    return link.resolve() if link.exists() else None


def _rotate(run_dir: Path, keep_last: int) -> None:
    protected = best_checkpoint(run_dir)
    steps = rundir.checkpoints(run_dir)
    for _, path in steps[:-keep_last]:
        if path.resolve() != protected:
            shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    """Flush file contents before the rename publishes them (a power cut must not leave empties)."""
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def find_resume_checkpoint(resume: str, out_dir: str, name: str) -> Path | None:
    """The checkpoint `--resume` names: 'auto' finds one or returns None (a fresh start);
    a path that holds no checkpoint is an error."""
    from blueberry.errors import UserError

    if resume == "auto":
        run_dir = rundir.find_resumable(out_dir, name)
        return rundir.latest_checkpoint(run_dir) if run_dir else None
    try:
        return resolve_resume(resume)[1]
    except FileNotFoundError:
        raise UserError(f"resume={resume}: no checkpoint there; give a run dir with checkpoints/step-*, "
                        "a checkpoint dir, or auto") from None

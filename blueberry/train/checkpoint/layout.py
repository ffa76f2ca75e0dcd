"""Where checkpoints live in a run dir and how folders become checkpoints. No torch.

RUN_DIR/checkpoints/
    step-NNNNNNN.incomplete/   being written (every rank writes here); nothing reads it
    step-NNNNNNN/              complete: renamed from .incomplete once every rank has finished and
                               manifest.json is written; the only folders resume and evaluate read
    best -> step-NNNNNNN       a relative symlink, swapped atomically

What a checkpoint folder holds depends on how it was written (the names below):
- unsharded (one process or DDP, synchronous): Accelerate's model.safetensors, optimizer.bin, ...
- FSDP2 (synchronous): Accelerate's torch.distributed.checkpoint folders pytorch_model_fsdp_0/ and
  optimizer_0/, one file per rank;
- asynchronous saves (any world), and synchronous saves of expert-parallel runs under DDP (their
  experts are DTensors that Accelerate's unsharded save cannot write): one torch.distributed.checkpoint
  folder dcp/ holding {"model": ..., "optimizer": ...};
and always Accelerate's scheduler.bin, random_states_<rank>.pkl and custom_checkpoint_0.pkl (the
trainer state), plus manifest.json (size and SHA-256 of every file).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
from pathlib import Path

from blueberry import rundir

BEST = "best"
INCOMPLETE = ".incomplete"
CONSOLIDATED = "model.safetensors"    # Accelerate's SAFE_MODEL_NAME: what unsharded checkpoints hold
FSDP_MODEL_DIR = "pytorch_model_fsdp_0"
FSDP_OPTIMIZER_DIR = "optimizer_0"
DCP_DIR = "dcp"
_RNG_FILE = re.compile(r"random_states_(\d+)\.pkl")


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / rundir.CHECKPOINTS / f"step-{step:07d}"


def incomplete_dir(run_dir: Path, step: int) -> Path:
    final = step_dir(run_dir, step)
    return final.with_name(final.name + INCOMPLETE)


def checkpoint_step(ckpt: Path) -> int | None:
    match = rundir.STEP_DIR.match(Path(ckpt).name)
    return int(match.group(1)) if match else None


def is_sharded(ckpt: Path) -> bool:
    """Written as torch.distributed.checkpoint shards (FSDP2 or an asynchronous save), not as
    one model.safetensors."""
    return (Path(ckpt) / FSDP_MODEL_DIR).is_dir() or (Path(ckpt) / DCP_DIR).is_dir()


def saved_world_size(ckpt: Path) -> int:
    """How many processes wrote the checkpoint: Accelerate saves one RNG file per process."""
    return max(1, sum(1 for p in Path(ckpt).iterdir() if _RNG_FILE.fullmatch(p.name)))


def publish(tmp: Path, final: Path) -> None:
    """Make the finished folder `tmp` the checkpoint `final`, replacing a folder already there (a
    damaged one, or one of a timeline a resume abandoned) in one step: renameat2(RENAME_EXCHANGE)
    swaps the two, so `final` never names a half-written or missing folder; the old one is then
    deleted. Where the kernel lacks the call, two renames (a crash between them leaves `final`
    missing, never half-written)."""
    if not final.exists():
        os.rename(tmp, final)
    elif _exchange(tmp, final):
        delete(tmp)   # now the old folder
    else:
        aside = final.with_name(f"{_DELETING}{final.name}-{os.getpid()}")
        os.rename(final, aside)
        os.rename(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    fsync_file(final.parent)   # the rename itself survives a power cut


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0
    return done


def point_best(run_dir: Path, target: Path | None) -> None:
    """Point checkpoints/best at `target` (atomically), or remove it when None."""
    link = Path(run_dir) / rundir.CHECKPOINTS / BEST
    if target is None:
        link.unlink(missing_ok=True)
        return
    tmp = link.with_name(".best.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path(target).name)
    os.replace(tmp, link)


def best_checkpoint(run_dir: Path) -> Path | None:
    link = Path(run_dir) / rundir.CHECKPOINTS / BEST
    return link.resolve() if link.exists() else None


def rotate(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints, never the one `best` points at;
    returns what was deleted. Only complete checkpoints count: a save in flight is not one yet, so
    the last complete checkpoint stays until the new one has replaced it."""
    protected = best_checkpoint(run_dir)
    removed = []
    for _, path in rundir.checkpoints(run_dir)[:-keep_last]:
        if path.resolve() != protected:
            delete(path)
            removed.append(path)
    return removed


def remove_incomplete(run_dir: Path) -> None:
    """Folders a killed save left behind (only the process holding the run's lock calls this)."""
    folder = Path(run_dir) / rundir.CHECKPOINTS
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.endswith(INCOMPLETE) or p.name.startswith((".tmp-", _DELETING)):
                shutil.rmtree(p, ignore_errors=True)


def remove_newer(run_dir: Path, step: int) -> list[Path]:
    """Delete the checkpoints after `step`: a run resumed from an older checkpoint starts a new
    timeline from there (its metrics.jsonl rows after `step` are dropped too)."""
    removed = []
    for s, path in rundir.checkpoints(run_dir):
        if s > step:
            delete(path)
            removed.append(path)
    return removed


_DELETING = ".deleting-"


def delete(folder: Path) -> None:
    """Delete a checkpoint folder so that no kill leaves half of it under a checkpoint's name: renamed
    out of the way first (one atomic step), then removed; a leftover is cleaned by remove_incomplete."""
    aside = folder.with_name(f"{_DELETING}{folder.name}-{os.getpid()}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def fsync_file(path: Path) -> None:
    """fsync a file or a folder (a folder's entries: the names renamed into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

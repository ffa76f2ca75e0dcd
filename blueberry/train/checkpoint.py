"""Atomic checkpoints of the full Accelerate state (model, optimizer, scheduler, RNG, trainer state).

Every rank writes into checkpoints/.tmp-step-N; once all are done the main process writes
manifest.json (size and SHA-256 of every file) and renames the folder to step-N. A crash or signal
mid-save leaves only a .tmp folder, which nothing reads (and a failed save removes). `best` is a
symlink swapped atomically; rotation keeps the last `keep_last` steps and whatever `best` points at.
Resume and `evaluate` check the manifest first, so a damaged file is named in one line and the
newest intact checkpoint is used instead. No torch here: the CLI checks checkpoints before any
expensive import.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from blueberry import rundir
from blueberry.errors import RunFailed, UserError, first_line

BEST = "best"
MANIFEST = "manifest.json"


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
    fingerprint: dict[str, str] = field(default_factory=dict)   # the data and tokenizer it trained on

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
        try:
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            accelerator.wait_for_everyone()
            accelerator.save_state(str(tmp))
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _write_manifest(tmp, step)
                os.rename(tmp, final)
        except BaseException as e:
            why = _write_failure(e, tmp.parent) if isinstance(e, Exception) else None
            shutil.rmtree(tmp, ignore_errors=True)   # never leave a half-written checkpoint behind
            if why:
                raise RunFailed(f"checkpoint {final}: not written ({why}); the partial copy was removed and "
                                "earlier checkpoints are intact; free space, then resume") from e
            raise
    if accelerator.is_main_process:
        if best:
            _point_best(run_dir, final)
        _rotate(run_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


_FULL_BELOW = 64 << 20   # bytes free under which a failed save is put down to a full disk


def _write_failure(e: Exception, folder: Path) -> str | None:
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


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_manifest(folder: Path, step: int) -> None:
    """Size and SHA-256 of every file, written last; fsyncs each file on the way (a power cut after the
    rename must not leave empty files)."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            _fsync(p)
            files[str(p.relative_to(folder))] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    rundir.write_atomic(folder / MANIFEST, json.dumps({"step": step, "files": files}, indent=1) + "\n")


def _is_model_file(name: str) -> bool:
    return Path(name).parts[0].startswith(("model", "pytorch_model"))


def damage(ckpt: Path, model_only: bool = False) -> str | None:
    """None when the checkpoint is intact (`model_only`: its model weights, all `evaluate` reads), else
    what is wrong, naming the file. A checkpoint written before manifests existed counts as intact
    when its model file is there."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        return f"{ckpt}: no such checkpoint folder"
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return None if (ckpt / "model.safetensors").exists() or any(ckpt.glob("pytorch_model*")) \
            else f"{ckpt}: no model weights and no {MANIFEST}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{ckpt / MANIFEST}: unreadable"
    if model_only:
        files = {name: want for name, want in files.items() if _is_model_file(name)}
    for name, want in files.items():
        path = ckpt / name
        if not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != want["size"]:
            return f"{path}: {path.stat().st_size} bytes, {want['size']} were written (truncated or damaged)"
    for name, want in files.items():   # sizes first: they find a truncation without reading anything
        if _sha256(ckpt / name) != want["sha256"]:
            return f"{ckpt / name}: checksum differs from the one written with it (damaged)"
    return None


def newest_intact(run_dir: Path, model_only: bool = False, skip: Path | None = None) -> tuple[Path | None, list[str]]:
    """(the newest intact step checkpoint of the run, other than `skip`; what was wrong with each newer one)."""
    problems = []
    for _, ckpt in reversed(rundir.checkpoints(run_dir)):
        if skip is not None and ckpt.resolve() == skip.resolve():
            continue
        problem = damage(ckpt, model_only)
        if problem is None:
            return ckpt, problems
        problems.append(problem)
    return None, problems


def pick_intact(run_dir: Path, preferred: Path | None, what: str, notice, model_only: bool = False) -> Path | None:
    """`preferred` when intact; else the newest intact step checkpoint, saying so through `notice`."""
    if preferred is not None:
        problem = damage(preferred, model_only)
        if problem is None:
            return preferred
        notice(f"{what} checkpoint is damaged: {problem}")
    ckpt, problems = newest_intact(run_dir, model_only, skip=preferred)
    for problem in problems:
        notice(f"skipping a damaged checkpoint: {problem}")
    if ckpt is not None and (preferred is None or ckpt != preferred):
        if preferred is not None or problems:
            notice(f"using the newest intact checkpoint instead: {ckpt}")
    return ckpt


def pick(run_dir: Path, which: str, notice) -> Path:
    """The checkpoint whose model weights `evaluate` and `checkpoint consolidate` read: best | latest of
    the run, or `which` as a checkpoint dir. A damaged best or latest gives way to the newest intact
    step checkpoint, with a notice; a damaged checkpoint dir named by the user is an error naming the file."""
    from blueberry.train import sharded

    if which in ("best", "latest"):
        preferred = best_checkpoint(run_dir) if which == "best" else rundir.latest_checkpoint(run_dir)
        if which == "best" and preferred is None and rundir.checkpoints(run_dir):
            notice(f"{run_dir} has no best checkpoint (save_best=false?); using the newest intact one")
        found = pick_intact(run_dir, preferred, which, notice, model_only=True)
        if found is None:
            raise UserError(f"checkpoint={which}: {run_dir} has no intact checkpoint"
                            + (" (see above)" if rundir.checkpoints(run_dir) else ""))
        return found
    found = Path(which)
    if not (found / sharded.CONSOLIDATED).exists() and not sharded.is_sharded(found):
        raise UserError(f"checkpoint={which}: no {sharded.CONSOLIDATED} there; use best, latest or a checkpoint dir")
    problem = damage(found, model_only=True)
    if problem:
        raise UserError(f"checkpoint={which}: {problem}")
    return found


def resolve_resume(path: str | Path) -> tuple[Path, Path]:
    """(run_dir, checkpoint dir) from a run dir or a checkpoint dir; a run dir gives its newest intact
    checkpoint (FileNotFoundError when it has none)."""
    p = Path(path).resolve()
    if p.parent.name == rundir.CHECKPOINTS:
        if not p.is_dir():
            raise FileNotFoundError(p)
        return p.parent.parent, p
    if not (p / rundir.CHECKPOINTS).is_dir():
        raise FileNotFoundError(p)
    from blueberry.train.tracking import notice

    ckpt = pick_intact(p, None, "latest", notice)
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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def find_resume_checkpoint(resume: str, out_dir: str, name: str) -> Path | None:
    """The checkpoint `--resume` names: 'auto' finds one or returns None (a fresh start);
    a path that holds no checkpoint is an error."""
    if resume == "auto":
        run_dir = rundir.find_resumable(out_dir, name)
        if run_dir is None:
            return None
        try:
            return resolve_resume(run_dir)[1]
        except FileNotFoundError:
            raise UserError(f"resume=auto: {run_dir} has no intact checkpoint (see above); start a new run "
                            "with another --name, or resume an earlier run dir") from None
    try:
        run_dir, ckpt = resolve_resume(resume)
    except FileNotFoundError:
        why = ("none is intact, see above" if rundir.checkpoints(Path(resume)) else "no checkpoints/step-*") \
            if Path(resume).exists() else "no such folder"
        raise UserError(f"resume={resume}: no checkpoint there ({why}); give a run dir with checkpoints/step-*, "
                        "a checkpoint dir, or auto") from None
    if ckpt.parent.name == rundir.CHECKPOINTS and ckpt == Path(resume).resolve():
        # a checkpoint named by the user; one found in a run dir was checked when it was picked
        problem = damage(ckpt)
        if problem:
            raise UserError(f"resume={resume}: {problem}; resume the run dir to use its newest intact checkpoint")
    return ckpt

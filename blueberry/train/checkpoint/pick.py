"""Which checkpoint a command reads: resume (`--resume RUN|CKPT|auto`), `evaluate` and
`checkpoint consolidate` (best | latest | a folder). A damaged best or latest gives way to the newest
intact checkpoint with a notice; a damaged checkpoint the user named is an error naming the file.
No torch: the CLI picks before any expensive import.
"""

from __future__ import annotations

from pathlib import Path

from blueberry import rundir
from blueberry.console import notice
from blueberry.errors import UserError
from blueberry.train.checkpoint.layout import CONSOLIDATED, best_checkpoint, is_sharded
from blueberry.train.checkpoint.manifest import damage


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


def pick_intact(run_dir: Path, preferred: Path | None, what: str, model_only: bool = False) -> Path | None:
    """`preferred` when intact; else the newest intact step checkpoint, saying so."""
    if preferred is not None:
        problem = damage(preferred, model_only)
        if problem is None:
            return preferred
        notice(f"{what} checkpoint is damaged: {problem}")
    ckpt, problems = newest_intact(run_dir, model_only, skip=preferred)
    for problem in problems:
        notice(f"skipping a damaged checkpoint: {problem}")
    if ckpt is not None and (preferred is not None or problems):
        notice(f"using the newest intact checkpoint instead: {ckpt}")
    return ckpt


def pick(run_dir: Path, which: str) -> Path:
    """The checkpoint whose model weights `evaluate` and `checkpoint consolidate` read: best | latest of
    the run, or `which` as a checkpoint dir."""
    if which in ("best", "latest"):
        preferred = best_checkpoint(run_dir) if which == "best" else rundir.latest_checkpoint(run_dir)
        if which == "best" and preferred is None and rundir.checkpoints(run_dir):
            notice(f"{run_dir} has no best checkpoint (save_best=false?); using the newest intact one")
        found = pick_intact(run_dir, preferred, which, model_only=True)
        if found is None:
            raise UserError(f"checkpoint={which}: {run_dir} has no intact checkpoint"
                            + (" (see above)" if rundir.checkpoints(run_dir) else ""))
        return found
    found = Path(which)
    if not (found / CONSOLIDATED).exists() and not is_sharded(found):
        raise UserError(f"checkpoint={which}: no {CONSOLIDATED} there; use best, latest or a checkpoint dir")
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
    ckpt = pick_intact(p, None, "latest")
    if ckpt is None:
        raise FileNotFoundError(p)
    return p, ckpt


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


def pick_path(path: Path, which: str = "latest") -> Path:
    """`blueberry checkpoint consolidate PATH`: a checkpoint dir, or a run dir's latest or best one (a
    damaged one gives way to the newest intact checkpoint, as in `evaluate`)."""
    path = Path(path)
    if path.parent.name == rundir.CHECKPOINTS:
        return pick(path.parent.parent, str(path))
    if which not in ("latest", "best"):
        raise UserError(f"checkpoint={which}: use latest or best (or give a checkpoint dir as PATH)")
    if not (path / rundir.CHECKPOINTS).is_dir():
        raise UserError(f"{path}: not a run dir (no {rundir.CHECKPOINTS}/) or a checkpoint dir")
    return pick(path, which)

"""The run dir (DESIGN contract 3): naming, atomic files, metrics rows, summary, checkpoint lookup.

runs/<name>-<YYYYmmdd_HHMMSS>[-j<SLURM_JOB_ID>]/
    config.yaml     the resolved config
    metrics.jsonl   one JSON row per log call, flushed as written
    summary.json    status, final and best metrics, params, wall time (rewritten atomically)
    checkpoints/    step-NNNNNNN/ (Accelerate state), best -> step-NNNNNNN

Training writes it; reports, resume, sweeps and SLURM requeue read only this. No torch here.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"
STEP_DIR = re.compile(r"^step-(\d+)$")


def slurm_job_tag() -> str:
    """'j<job>' or 'j<array job>_<task>' under SLURM, '' elsewhere. BLUEBERRY_RUN_TAG, when set
    (even empty), wins: a sweep's trials are resumed by whichever array task claims them."""
    if "BLUEBERRY_RUN_TAG" in os.environ:
        return os.environ["BLUEBERRY_RUN_TAG"]
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"j{array_job}_{task}"
    job = os.environ.get("SLURM_JOB_ID")
    return f"j{job}" if job else ""


def has_job_tag(run_dir_name: str, tag: str) -> bool:
    """Whether a run dir was created under SLURM job tag `tag` (NAME-TIME-<tag>[-N])."""
    return re.search(rf"-{re.escape(tag)}(-\d+)?$", run_dir_name) is not None


def create_run_dir(out_dir: str | Path, name: str) -> Path:
    """Make a new, unique run dir; two runs starting in the same second get -2, -3, ..."""
    stamp = time.strftime("%Y%m%d_%H%M%S")
    tag = slurm_job_tag()
    base = f"{name}-{stamp}" + (f"-{tag}" if tag else "")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = Path(out_dir) / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        (path / CHECKPOINTS).mkdir()
        return path
    raise RuntimeError(f"could not create a unique run dir for {base} in {out_dir}")


def ensure_writable_dir(path: str | Path, field: str, hint: str = "give a writable folder", create: bool = True) -> Path:
    """Create `path` if needed and prove a file can be written there, before any expensive work;
    UserError naming `field` (e.g. out_dir, cache_dir, --out) and ending in `hint` when not. With
    create=False nothing is created: a missing folder is judged by its nearest existing parent (a
    command that may still refuse its input must not leave an empty folder behind)."""
    p = Path(path).expanduser()
    probe_in = p
    if not create:
        while not probe_in.exists() and probe_in != probe_in.parent:
            probe_in = probe_in.parent
    try:
        if create:
            p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=probe_in, prefix=".write-test-")   # in a file: ENOTDIR
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        from blueberry.errors import UserError

        why = e.strerror or str(e)
        if e.errno == errno.ENOTDIR or (probe_in.exists() and not probe_in.is_dir()):
            why = "a file is in the way (a folder is needed)"
        raise UserError(f"{field}={path}: cannot write there ({why}); {hint}") from None
    return p


class RunLock:
    """An exclusive lock on a run dir while a process trains in it (fcntl.flock on RUN_DIR/.lock):
    released when the process ends, however it ends, so a crash never leaves a stale lock."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        from blueberry.errors import UserError

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"{self.path.parent}: another process (pid {holder}) is training in this run dir; "
                            "wait for it or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing drops the flock
            self._fd = None


_UMASK = os.umask(0)
os.umask(_UMASK)


def record_digest(run_dir: Path) -> dict[str, str]:
    """Every file of a run dir (checkpoints included) by its SHA-256, and where `best` points; the
    lock file only names the last process that held it. Equal before and after = nothing was written."""
    import hashlib

    run_dir = Path(run_dir)
    files = {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(run_dir.rglob("*")) if p.is_file() and not p.is_symlink() and p.name != LOCK}
    files["best ->"] = str((run_dir / CHECKPOINTS / "best").resolve())
    return files


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a whole file (text as UTF-8, or bytes) or nothing: a crash leaves the previous
    version in place. Permissions follow the umask, like any file (mkstemp alone gives 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_metrics(run_dir: Path, bad_lines: list[int] | None = None) -> list[dict[str, Any]]:
    """All rows; a torn last line (a kill mid-write) or a row that is not {"step": int, ...} is
    skipped, never fatal. `bad_lines` collects the 1-based numbers of skipped lines other than a
    torn last one."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    lines = path.read_text(errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if is_metrics_row(row):
            rows.append(row)
        elif bad_lines is not None and line.strip() and not (number == len(lines) and row is None):
            bad_lines.append(number)
    return rows


def is_metrics_row(row: Any) -> bool:
    """A row as the trainer writes it: a JSON object whose `step` is an integer."""
    return isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row.get("step"), bool)


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop rows logged after `step` (a resumed run re-logs them), atomically."""
    rows = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    write_atomic(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else {}


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_atomic(Path(run_dir) / SUMMARY, json.dumps(summary, indent=2, default=float) + "\n")


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints, oldest first (temporary folders of a crashed save are ignored)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and not p.is_symlink():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1][1] if found else None


def find_resumable(out_dir: str | Path, name: str) -> Path | None:
    """For --resume auto: this SLURM job's run dir if it has a checkpoint, else the newest
    unfinished run named `name` that has one."""
    root = Path(out_dir)
    if not root.is_dir():
        return None
    tag = slurm_job_tag()
    candidates = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(f"{name}-")
                  and latest_checkpoint(p) is not None]
    if tag:
        candidates = [p for p in candidates if has_job_tag(p.name, tag)]
    else:
        candidates = [p for p in candidates if read_summary(p).get("status") != "finished"]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)

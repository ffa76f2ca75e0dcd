"""`blueberry sync PATH...`: upload every offline W&B run under run dirs and sweep dirs.

A run dir keeps its offline W&B runs in RUN_DIR/wandb/offline-run-*/ (one per process: a resumed run
has several parts of one run id), an evaluation its own in OUT/eval/wandb/, and a sweep dir one run dir
per trial under trials/*/runs/. A bare `wandb sync PATH` looks only at PATH/*/*.wandb, so it finds none
of the nested ones. This finds them all and hands them to W&B's own `wandb sync` in one call (which
uploads parts of one run in order of start time and writes RUN.wandb.synced beside each run it
uploaded); a run that marker names is skipped, so a second call uploads only what is new. Torch-free.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from blueberry.errors import UserError
from blueberry.network import require_wandb_server

OFFLINE_PREFIX = "offline-run-"
SYNCED_SUFFIX = ".synced"   # W&B's marker: RUN_DIR/run-ID.wandb.synced


def offline_runs(paths: list[Path]) -> list[Path]:
    """Every offline W&B run folder (offline-run-*/ holding a .wandb file) under `paths`, sorted, once each."""
    found: set[Path] = set()
    for path in paths:
        if path.name.startswith(OFFLINE_PREFIX) and _wandb_files(path):
            found.add(path)
            continue
        for folder, dirs, files in os.walk(path):
            runs = [d for d in dirs if d.startswith(OFFLINE_PREFIX)]
            found.update(Path(folder) / d for d in runs if _wandb_files(Path(folder) / d))
            # Not walked: run folders and W&B's other folders (nothing nested), a run dir's checkpoints
            # (thousands of shard files), hidden folders (.git, .venv, the Artifact staging).
            dirs[:] = [d for d in dirs if d not in runs and not d.startswith(".") and Path(folder).name != "wandb"
                       and not (d == "checkpoints" and "config.yaml" in files)]
    return sorted(found)


def _wandb_files(run: Path) -> list[Path]:
    return sorted(run.glob("*.wandb"))


def is_synced(run: Path) -> bool:
    """W&B's own record of an upload: every .wandb file of the run has its .wandb.synced marker."""
    files = _wandb_files(run)
    return bool(files) and all(f.with_name(f.name + SYNCED_SUFFIX).exists() for f in files)


def sync(paths: list[str], *, dry_run: bool, project: str | None, entity: str | None, echo) -> int:
    """List (dry_run) or upload the offline runs under `paths`; `echo(line)` prints. Returns the exit code:
    0 when every run found is uploaded (or was already), 1 when W&B left some unsynced."""
    runs = offline_runs([Path(p) for p in paths])
    if not runs:
        raise UserError(f"sync: no offline W&B runs under {', '.join(paths)} (looked for wandb/offline-run-* in run "
                        "dirs, their eval/ and sweep dirs' trials)")
    todo = [r for r in runs if not is_synced(r)]
    done = len(runs) - len(todo)
    skipped = f" ({done} already synced, skipped)" if done else ""
    if not todo:
        echo(f"nothing to sync: all {len(runs)} offline W&B runs are synced")
        return 0
    if dry_run:
        echo(f"would sync {len(todo)} offline W&B runs{skipped}:")
        for run in todo:
            echo(f"  {run}")
        return 0
    # Uploading is what was asked: a WANDB_MODE=offline set for training does not apply to it.
    os.environ.pop("WANDB_MODE", None)
    require_wandb_server("sync", "for a self-hosted server set WANDB_BASE_URL; --dry-run lists what would be uploaded")
    echo(f"syncing {len(todo)} offline W&B runs{skipped}:")
    for run in todo:
        echo(f"  {run}")
    wandb_cli = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
    override = [*(["--project", project] if project else []), *(["--entity", entity] if entity else [])]
    subprocess.run([wandb_cli, "sync", *override, *map(str, todo)], check=False)
    left = [r for r in todo if not is_synced(r)]
    for run in todo:
        echo(f"{'not synced' if run in left else 'synced'}: {run}")
    echo(f"synced {len(todo) - len(left)} of {len(todo)} offline W&B runs" + (
        f"; {len(left)} not synced (W&B's messages are above); run the same command again to retry them" if left else ""))
    return 1 if left else 0

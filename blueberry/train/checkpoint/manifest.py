"""manifest.json: the size and SHA-256 of every file in a checkpoint folder, and the check of it.

Written last, after every file is fsynced, and before the folder is renamed into place; a file
added later (`checkpoint consolidate`'s model.safetensors) is added to it. Resume and `evaluate`
check it first: a damaged file is named in one line and the newest intact checkpoint is used.
No torch: the CLI checks checkpoints before any expensive import.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from blueberry import rundir
from blueberry.train.checkpoint.layout import CONSOLIDATED, fsync_file, is_sharded

MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _entry(path: Path) -> dict:
    fsync_file(path)   # a power cut after the rename must not leave empty files
    return {"size": path.stat().st_size, "sha256": sha256(path)}


def write_manifest(folder: Path, step: int) -> None:
    """Size and SHA-256 of every file of `folder`, as manifest.json (atomically)."""
    files = {str(p.relative_to(folder)): _entry(p) for p in sorted(Path(folder).rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    rundir.write_atomic(Path(folder) / MANIFEST, json.dumps({"step": step, "files": files}, indent=1) + "\n")


def add_to_manifest(ckpt: Path, name: str, path: Path) -> None:
    """Record the file `path`, about to become CKPT/name, in a complete checkpoint's manifest (atomically)."""
    manifest_path = Path(ckpt) / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][name] = _entry(Path(path))
    rundir.write_atomic(manifest_path, json.dumps(manifest, indent=1) + "\n")


def is_model_file(name: str) -> bool:
    """The files `evaluate` reads: the weights (model.safetensors, pytorch_model*, the DCP folders)."""
    first = Path(name).parts[0]
    return first.startswith(("model", "pytorch_model")) or first == "dcp"


def damage(ckpt: Path, model_only: bool = False) -> str | None:
    """None when the checkpoint is intact (`model_only`: its model weights, all `evaluate` reads), else
    what is wrong, naming the file. A checkpoint written before manifests existed counts as intact
    when its model file is there."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        return f"{ckpt}: no such checkpoint folder"
    try:
        files = dict(json.loads((ckpt / MANIFEST).read_text())["files"])
    except FileNotFoundError:
        return None if (ckpt / CONSOLIDATED).exists() or any(ckpt.glob("pytorch_model*")) \
            else f"{ckpt}: no model weights and no {MANIFEST}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{ckpt / MANIFEST}: unreadable"
    unlisted = [p for p in sorted(ckpt.rglob("*")) if p.is_file() and is_model_file(str(p.relative_to(ckpt)))
                and str(p.relative_to(ckpt)) not in files]
    if unlisted:   # weights a reader would load that no manifest vouches for
        return f"{unlisted[0]}: not in {MANIFEST} (written after the checkpoint, and never checked)"
    if model_only:
        files = {name: want for name, want in files.items() if is_model_file(name)}
    if CONSOLIDATED in files and is_sharded(ckpt) and not (ckpt / CONSOLIDATED).exists():
        files = {name: want for name, want in files.items() if name != CONSOLIDATED}   # an optional copy
    for name, want in files.items():
        path = ckpt / name
        if not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != want["size"]:
            return f"{path}: {path.stat().st_size} bytes, {want['size']} were written (truncated or damaged)"
    for name, want in files.items():   # sizes first: they find a truncation without reading anything
        if sha256(ckpt / name) != want["sha256"]:
            return f"{ckpt / name}: checksum differs from the one written with it (damaged)"
    return None

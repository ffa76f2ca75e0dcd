"""W&B model Artifact references (`entity/project/model-<run id>:best`) where a run dir is expected.

A model Artifact logged by the tracker (wandb_log_model) is laid out as a run dir: config.yaml and
checkpoints/step-N/. So `--resume` and `blueberry evaluate` download the version named and go on as
with a run dir. Without a reachable W&B (offline, no key) a reference stops with one line before any
work. Torch-free: the CLI reads it while resolving the config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from blueberry.errors import UserError, first_line
from blueberry.network import has_wandb_key

# entity/project/name:alias (or :vN); W&B's own names allow letters, digits, - _ .
REFERENCE = re.compile(r"^[\w.-]+/[\w.-]+/[\w.-]+:[\w.-]+$")


def is_artifact_reference(text: str) -> bool:
    """An artifact reference and not a path that exists here (a run dir named like one wins)."""
    return bool(REFERENCE.match(text)) and not Path(text).exists()


class FetchedArtifact(NamedTuple):
    """A model Artifact version downloaded as a run dir: its reference, the folder, and W&B's Artifact
    object (what `run.use_artifact` records as a run's input; None where W&B could not give one)."""

    reference: str
    run_dir: Path
    artifact: Any


def require_online(reference: str, field: str) -> None:
    """One line naming `field` when W&B is off here (offline, no key): a reference cannot be fetched."""
    offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun")
    if offline or not has_wandb_key():
        why = f"WANDB_MODE={os.environ['WANDB_MODE']}" if offline else "no W&B API key"
        raise UserError(f"{field}={reference}: a W&B artifact needs W&B online ({why}); where W&B is reachable "
                        f"run `wandb artifact get {reference} --root DIR` and pass DIR")


def download_model_artifact(reference: str, field: str, into: Path) -> FetchedArtifact:
    """Download the model Artifact `reference` under `into`, as a run dir."""
    require_online(reference, field)
    import wandb

    try:
        artifact = wandb.Api(timeout=30).artifact(reference, type="model")
        name = reference.rsplit("/", 1)[-1].replace(":", "-")
        return FetchedArtifact(reference, Path(artifact.download(root=str(Path(into) / name))), artifact)
    except Exception as e:   # not found, no access, no network: the user's to fix
        raise UserError(f"{field}={reference}: W&B could not fetch it ({first_line(e, 160)})") from None


def fetch_model_artifact(reference: str, field: str, into: Path) -> Path:
    """Download the model Artifact `reference` under `into`; the folder it returns is a run dir."""
    return download_model_artifact(reference, field, into).run_dir

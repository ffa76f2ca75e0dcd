"""Sharded checkpoints: what FSDP2 runs save, read back where the world differs.

An FSDP2 run's `accelerator.save_state` writes the model and the optimizer with
torch.distributed.checkpoint (DCP): the folders pytorch_model_fsdp_0/ and optimizer_0/, one file
per rank, beside the usual scheduler, trainer-state and RNG files; checkpoint.save publishes them
atomically like any other. Accelerate loads them on any number of FSDP ranks (DCP reshards on
load). This module covers the rest:
- an unsharded run (one process, or DDP) resuming from a sharded checkpoint (2 FSDP ranks -> 1);
- the data position when the number of processes changes on resume;
- the model weights alone, for `blueberry evaluate`;
- `blueberry checkpoint consolidate`: one ordinary model.safetensors beside the shards.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from blueberry.errors import UserError

MODEL_DIR = "pytorch_model_fsdp_0"
OPTIMIZER_DIR = "optimizer_0"
CONSOLIDATED = "model.safetensors"   # Accelerate's SAFE_MODEL_NAME, what unsharded checkpoints hold
_RNG_FILE = re.compile(r"random_states_(\d+)\.pkl")


def is_sharded(ckpt: Path) -> bool:
    return (Path(ckpt) / MODEL_DIR).is_dir()


def saved_world_size(ckpt: Path) -> int:
    """How many processes wrote the checkpoint: Accelerate saves one RNG file per process."""
    return max(1, sum(1 for p in Path(ckpt).iterdir() if _RNG_FILE.fullmatch(p.name)))


def load_state(accelerator, ckpt: Path) -> None:
    """`accelerator.load_state(ckpt)`, also for a sharded checkpoint in an unsharded run (the model and
    optimizer are the ones `accelerator.prepare` returned)."""
    from blueberry.train.sharding import forget_untrained_state
    from blueberry.train.sharding import is_sharded as run_is_sharded

    if run_is_sharded(accelerator) and not is_sharded(ckpt):
        raise UserError(f"checkpoint {ckpt}: unsharded (written without FSDP); resume it without an FSDP "
                        "launch config, or start the FSDP run from its weights")
    if not is_sharded(ckpt) or run_is_sharded(accelerator):
        accelerator.load_state(str(ckpt))
        if run_is_sharded(accelerator):   # a step-0 checkpoint: no real step yet (see the function)
            forget_untrained_state(accelerator, accelerator._optimizers[0])
        return
    (model,), (optimizer,) = accelerator._models, accelerator._optimizers
    _load_unsharded_from_shards(accelerator.unwrap_model(model), _inner(optimizer), ckpt)
    # Scheduler, trainer state and RNG as Accelerate saved them; its model and optimizer files are
    # the DCP folders just read, which an unsharded Accelerator would look for as .safetensors/.bin.
    models, optimizers = accelerator._models, accelerator._optimizers
    accelerator._models, accelerator._optimizers = [], []
    try:
        accelerator.load_state(str(ckpt))
    finally:
        accelerator._models, accelerator._optimizers = models, optimizers
    forget_untrained_state(accelerator, optimizer)


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)   # Accelerate's AcceleratedOptimizer wraps it


def _load_unsharded_from_shards(model, optimizer, ckpt: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    model.load_state_dict(model_state_dict(ckpt, model))
    # The template has every state tensor the optimizer will hold (torch initialises them with a
    # zero step), keyed by parameter name as Accelerate saved them; DCP fills it in place.
    optim_state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(optim_state, checkpoint_id=str(Path(ckpt) / OPTIMIZER_DIR), no_dist=_no_dist())
    set_optimizer_state_dict(model, optimizer, optim_state["optimizer"])


def model_state_dict(ckpt: Path, model) -> dict:
    """The checkpoint's full model weights, in the layout of `model` (an unsharded module)."""
    import torch.distributed.checkpoint as dcp

    ckpt = Path(ckpt)
    if (ckpt / CONSOLIDATED).exists():
        from safetensors.torch import load_file

        return load_file(str(ckpt / CONSOLIDATED))
    state = {"model": {k: v.clone() for k, v in model.state_dict().items()}}
    dcp.load(state, checkpoint_id=str(ckpt / MODEL_DIR), no_dist=_no_dist())
    return state["model"]


def _no_dist() -> bool:
    """One process reads the whole checkpoint itself (DCP would warn, then do the same)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized())


def rescale_data_position(state, ckpt: Path, world_size: int) -> None:
    """TrainerState.micro_batches counts global micro-batches of the world that saved the checkpoint;
    in this world the same windows are a different count (the sampler deals the same global order)."""
    saved = saved_world_size(ckpt)
    if saved == world_size:
        return
    windows = state.micro_batches * saved
    if windows % world_size:
        raise UserError(f"checkpoint {ckpt}: written by {saved} processes at micro-batch {state.micro_batches}; "
                        f"{world_size} processes cannot continue from the same data position (choose a "
                        f"number of processes that divides {windows})")
    state.micro_batches = windows // world_size


def consolidate_path(path: Path, which: str = "latest") -> Path:
    """`blueberry checkpoint consolidate PATH`: a checkpoint dir, or a run dir's latest or best one (a
    damaged one gives way to the newest intact checkpoint, as in `evaluate`)."""
    from blueberry import rundir
    from blueberry.train import checkpoint
    from blueberry.train.tracking import notice

    path = Path(path)
    if path.parent.name == rundir.CHECKPOINTS:
        return consolidate(checkpoint.pick(path.parent.parent, str(path), notice))
    if which not in ("latest", "best"):
        raise UserError(f"checkpoint={which}: use latest or best (or give a checkpoint dir as PATH)")
    if not (path / rundir.CHECKPOINTS).is_dir():
        raise UserError(f"{path}: not a run dir (no {rundir.CHECKPOINTS}/) or a checkpoint dir")
    return consolidate(checkpoint.pick(path, which, notice))


def consolidate(ckpt: Path) -> Path:
    """Write the sharded checkpoint's model as one ordinary CKPT/model.safetensors (atomically)."""
    import torch
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    ckpt = Path(ckpt)
    if not is_sharded(ckpt):
        raise UserError(f"checkpoint {ckpt}: not sharded (no {MODEL_DIR}/); it already holds {CONSOLIDATED}")
    out = ckpt / CONSOLIDATED
    with tempfile.TemporaryDirectory(dir=ckpt.parent) as tmp:
        dcp_to_torch_save(ckpt / MODEL_DIR, Path(tmp) / "model.pt")
        weights = torch.load(Path(tmp) / "model.pt", weights_only=True)["model"]
        partial = Path(tmp) / CONSOLIDATED
        save_file({k: v.contiguous() for k, v in weights.items()}, str(partial), metadata={"format": "pt"})
        os.replace(partial, out)
    return out

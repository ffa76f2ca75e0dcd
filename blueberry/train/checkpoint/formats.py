"""Writing and reading a checkpoint's tensors in each of its layouts (layout.py), in any world size.

- Synchronous saves are Accelerate's `save_state`: model.safetensors + optimizer.bin unsharded, or
  the FSDP2 torch.distributed.checkpoint (DCP) folders pytorch_model_fsdp_0/ and optimizer_0/.
- Asynchronous saves write the model and optimizer as ONE DCP checkpoint, dcp/ (async_writer.py),
  and the small files (scheduler, RNG, trainer state) through Accelerate at once.
- A model with DTensor parameters outside FSDP2 (expert parallel under DDP) cannot go through
  Accelerate's unsharded save: its synchronous saves write the same dcp/ layout at once.
Every DCP layout is read here, by any run: FSDP2 on any number of ranks, DDP or one process (DCP
reshards on load). `evaluate` and `checkpoint consolidate` read the model weights alone.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch

from blueberry.errors import UserError
from blueberry.train.checkpoint.layout import (CONSOLIDATED, DCP_DIR, FSDP_MODEL_DIR, FSDP_OPTIMIZER_DIR,
                                               saved_world_size)

OPTIMIZER_FILE = "optimizer.bin"   # Accelerate's unsharded optimizer state (OPTIMIZER_NAME + .bin)



def dcp_folders(ckpt: Path) -> tuple[Path, Path] | None:
    """(folder holding "model", folder holding "optimizer") of a DCP checkpoint; None for an unsharded one."""
    ckpt = Path(ckpt)
    if (ckpt / DCP_DIR).is_dir():
        return ckpt / DCP_DIR, ckpt / DCP_DIR
    if (ckpt / FSDP_MODEL_DIR).is_dir():
        return ckpt / FSDP_MODEL_DIR, ckpt / FSDP_OPTIMIZER_DIR
    return None


# --- writing --------------------------------------------------------------------------------------

@contextlib.contextmanager
def untouched_optimizer_state(optimizer):
    """A save must not change the training: torch.distributed.checkpoint's optimizer state dict creates
    a missing state by stepping with zero gradients at lr 0 (AdamW counts that step). A state that was
    empty before the save is emptied again after it; the first real step creates it as usual."""
    inner = getattr(optimizer, "optimizer", optimizer)
    was_empty = not inner.state
    try:
        yield
    finally:
        if was_empty:
            inner.state.clear()


def write_state_now(accelerator, folder: Path) -> None:
    """A synchronous save into `folder`: Accelerate's save_state, or the dcp/ layout when the model has
    DTensor parameters that Accelerate's unsharded save cannot write (has_unmanaged_dtensors)."""
    if not has_unmanaged_dtensors(accelerator):
        write_accelerate_state(accelerator, folder)
        return
    import torch.distributed.checkpoint as dcp

    write_accelerate_state(accelerator, folder, with_tensors=False)
    with untouched_optimizer_state(accelerator._optimizers[0]):
        dcp.save(model_and_optimizer_state(accelerator), checkpoint_id=str(folder / DCP_DIR))


def has_unmanaged_dtensors(accelerator) -> bool:
    """Whether the model holds DTensor parameters that FSDP2 does not manage: expert-parallel experts
    under DDP. (Under FSDP2, Accelerate's own DCP save writes every DTensor, the experts' too.)"""
    from torch.distributed.tensor import DTensor

    from blueberry.train.sharding import is_sharded as run_is_sharded

    model, _ = _model_and_optimizer(accelerator)
    return not run_is_sharded(accelerator) and any(isinstance(p, DTensor) for p in model.parameters())


def write_accelerate_state(accelerator, folder: Path, with_tensors: bool = True) -> None:
    """Accelerate's save_state into `folder`; without tensors: the scheduler, RNG and registered
    objects only (the model and optimizer go to an asynchronous DCP save instead)."""
    if with_tensors:
        with untouched_optimizer_state(accelerator._optimizers[0]):
            accelerator.save_state(str(folder))
        return
    with _without_model_and_optimizer(accelerator):
        accelerator.save_state(str(folder))


@contextlib.contextmanager
def _without_model_and_optimizer(accelerator):
    """Accelerate's save_state/load_state with everything but the model and optimizer."""
    models, optimizers = accelerator._models, accelerator._optimizers
    accelerator._models, accelerator._optimizers = [], []
    try:
        yield
    finally:
        accelerator._models, accelerator._optimizers = models, optimizers


def model_and_optimizer_state(accelerator) -> dict:
    """{"model": ..., "optimizer": ...} as torch.distributed.checkpoint saves them: DTensor shards under
    FSDP2, whole tensors otherwise (DCP writes a replicated tensor once). Call it inside
    `untouched_optimizer_state`."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model, optimizer = _model_and_optimizer(accelerator)
    return {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}


def _model_and_optimizer(accelerator):
    (model,), (optimizer,) = accelerator._models, accelerator._optimizers
    return accelerator.unwrap_model(model), getattr(optimizer, "optimizer", optimizer)


# --- reading --------------------------------------------------------------------------------------

def read_trainer_state(ckpt: Path) -> dict:
    """The trainer state a checkpoint holds, without loading anything else (to check it first): the
    registered object (Accelerate's custom_checkpoint_N.pkl) that has the trainer state's fields."""
    for path in sorted(Path(ckpt).glob("custom_checkpoint_*.pkl")):
        saved = torch.load(path, weights_only=False)
        if isinstance(saved, dict) and "micro_batches" in saved:
            return saved
    return {}


def load_state(accelerator, ckpt: Path) -> None:
    """The full state of `ckpt` into the prepared model, optimizer, scheduler, RNG and trainer state,
    whatever layout and world wrote it."""
    from blueberry.train.sharding import is_sharded as run_is_sharded

    folders = dcp_folders(ckpt)
    if folders is None and run_is_sharded(accelerator):
        raise UserError(f"checkpoint {ckpt}: unsharded (written without FSDP); resume it without an FSDP "
                        "launch config, or start the FSDP run from its weights")
    if folders is None and not has_unmanaged_dtensors(accelerator):
        accelerator.load_state(str(ckpt))
        return
    model, optimizer = _model_and_optimizer(accelerator)
    if folders is None:   # e.g. a one-process run's checkpoint resumed expert parallel
        _load_unsharded_into_dtensors(model, optimizer, Path(ckpt))
    else:
        _load_dcp(model, optimizer, *folders)
    with _without_model_and_optimizer(accelerator):
        accelerator.load_state(str(ckpt))


def drop_optimizer_state(accelerator) -> None:
    """Forget the optimizer state: a checkpoint of step 0 holds only the zero-step placeholder that
    saving creates (untouched_optimizer_state); the first real step makes the true one."""
    _model_and_optimizer(accelerator)[1].state.clear()


def _load_dcp(model, optimizer, model_dir: Path, optimizer_dir: Path) -> None:
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    weights = {"model": get_model_state_dict(model)}
    _dcp_load(weights, model_dir)
    set_model_state_dict(model, weights["model"])
    # The template has every state tensor the optimizer will hold (torch creates them with a zero
    # step), keyed by parameter name; DCP fills it in place.
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    _dcp_load(state, optimizer_dir)
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def _load_unsharded_into_dtensors(model, optimizer, ckpt: Path) -> None:
    """Accelerate's model.safetensors and optimizer.bin into a model with DTensor parameters: each rank
    keeps its part of every whole tensor (torch's full-state-dict loading distributes them)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    whole = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, load_file(str(ckpt / CONSOLIDATED)), options=whole)
    saved = torch.load(ckpt / OPTIMIZER_FILE, weights_only=False)
    # optimizer.bin numbers the parameters in the order of the param groups, which the same config
    # builds in the same order (optim.build); torch's state-dict API wants parameter names.
    names = {id(p): name for name, p in model.named_parameters()}
    fqns = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {"state": {fqns[i]: state for i, state in saved["state"].items()},
               "param_groups": [{**g, "params": [fqns[i] for i in g["params"]]} for g in saved["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=whole)


def load_model_weights(model, ckpt: Path) -> None:
    """A checkpoint's model weights into `model` (an unsharded module), as `evaluate` needs them."""
    model.load_state_dict(model_state_dict(ckpt, model))


def model_state_dict(ckpt: Path, model) -> dict:
    """The checkpoint's full model weights, in the layout of `model` (an unsharded module)."""
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    folders = dcp_folders(ckpt)
    if (ckpt / CONSOLIDATED).exists() or folders is None:
        return load_file(str(ckpt / CONSOLIDATED))
    state = {"model": {k: v.clone() for k, v in model.state_dict().items()}}
    _dcp_load(state, folders[0])
    return state["model"]


def weights_path(ckpt: Path) -> Path:
    """What holds the model weights, for messages."""
    folders = dcp_folders(ckpt)
    return Path(ckpt) / CONSOLIDATED if (Path(ckpt) / CONSOLIDATED).exists() or folders is None else folders[0]


def _dcp_load(state: dict, folder: Path) -> None:
    """torch.distributed.checkpoint.load in place; one process without a process group reads the whole
    checkpoint itself (DCP warns that it assumes so, every time: that is the intent here)."""
    import warnings

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    no_dist = not (dist.is_available() and dist.is_initialized())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(folder), no_dist=no_dist)


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


# --- one file of weights ------------------------------------------------------------------------------

def consolidate(ckpt: Path) -> Path:
    """Write a sharded checkpoint's model as one ordinary CKPT/model.safetensors (atomically), and add
    it to the checkpoint's manifest."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from blueberry.train.checkpoint.manifest import MANIFEST, add_to_manifest

    ckpt = Path(ckpt)
    folders = dcp_folders(ckpt)
    if folders is None:
        raise UserError(f"checkpoint {ckpt}: not sharded (no {FSDP_MODEL_DIR}/ or {DCP_DIR}/); it already holds "
                        f"{CONSOLIDATED}")
    # A template of the model's tensors from the checkpoint's own metadata (no model to build).
    metadata = FileSystemReader(str(folders[0])).read_metadata().state_dict_metadata
    weights = {key.removeprefix("model."): torch.empty(meta.size, dtype=meta.properties.dtype)
               for key, meta in metadata.items()
               if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)}
    state = {"model": weights}
    _dcp_load(state, folders[0])
    out = ckpt / CONSOLIDATED
    with tempfile.TemporaryDirectory(dir=ckpt.parent) as tmp:
        partial = Path(tmp) / CONSOLIDATED
        save_file({k: v.contiguous() for k, v in state["model"].items()}, str(partial), metadata={"format": "pt"})
        if (ckpt / MANIFEST).exists():   # listed first: a crash before the rename leaves it listed but absent,
            add_to_manifest(ckpt, CONSOLIDATED, partial)   # which a sharded checkpoint does not need
        os.replace(partial, out)
    return out

"""FSDP2 (torch `fully_shard`) through Accelerate's FSDP plugin, on GPUs and on CPU ranks.

A run is sharded when it is launched with an FSDP Accelerate config (launch/fsdp-*.yaml sets
ACCELERATE_USE_FSDP and FSDP_*). What this module adds to Accelerate's own plugin:
- FSDP2 only (fsdp_version 2): parameters are DTensors that HybridMuon knows how to step;
- bf16 runs compute in bf16 but reduce-scatter gradients in fp32 (Accelerate's default reduces
  in bf16, which loses the low bits of the sum over ranks);
- CPU ranks: Accelerate turns FSDP off without CUDA (it only upgrades GPU process groups), but
  torch's FSDP2 runs over gloo, which is how the FSDP path is tested in CI.
The units are one per decoder block / encoder layer: each model names them in `_no_split_modules`
(the Hugging Face convention that Accelerate's TRANSFORMER_BASED_WRAP reads).
"""

from __future__ import annotations

import os

import torch

from blueberry.errors import UserError


def fsdp_requested() -> bool:
    """Whether this process was launched with an FSDP Accelerate config."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_plugin(mixed_precision: str):
    """The FSDP2 plugin of the launch config with blueberry's precision policy, or None (DDP)."""
    if not fsdp_requested():
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    plugin = FullyShardedDataParallelPlugin()   # reads the FSDP_* variables `accelerate launch` sets
    if plugin.fsdp_version != 2:
        raise UserError(f"fsdp_version={plugin.fsdp_version}: blueberry shards with FSDP2 only; "
                        "set fsdp_config: {fsdp_version: 2} in the launch config (see launch/fsdp-*.yaml)")
    if mixed_precision == "bf16":
        # bf16 all-gathers and compute, fp32 gradient reduce-scatter; master weights stay fp32.
        plugin.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return plugin


def use_fsdp_on_cpu(accelerator, plugin) -> None:
    """Switch a CPU process group (gloo) to FSDP2: Accelerate leaves MULTI_CPU runs unsharded."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = accelerator.state
    if plugin is None or state.distributed_type != DistributedType.MULTI_CPU:
        return
    # Both shared states: each new AcceleratorState() copies PartialState's fields over its own.
    PartialState().distributed_type = state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin


def is_sharded(accelerator) -> bool:
    return bool(getattr(accelerator, "is_fsdp2", False))


def full_tensor(t):
    """A DTensor's whole value on every rank (a collective, no host sync); other values as they are."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t

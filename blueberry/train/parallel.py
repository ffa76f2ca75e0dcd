"""Expert parallelism (EP) in training: the degree rules, the device mesh, the model wrapped for it,
and the experts' gradients.

With expert_parallel = ep > 1 the W ranks form W/ep groups of ep consecutive ranks (mesh dims
("ep_replicate", "ep"); consecutive, so a group stays inside a node). In a group each rank holds E/ep
whole experts of every MoE layer, as DTensors sharded on the expert dim, and the tokens travel to them
(models/expert_parallel.py); the groups are replicas of each other. Every other parameter is data
parallel over all W ranks as without EP: DDP, or FSDP2 under an FSDP launch config. Each rank still
trains on its own micro-batches (the sampler deals them as before).

Gradients: DDP and FSDP2 leave the experts alone (ignored parameters) and average the rest over the W
ranks. The backward through the exchange already sums, on each expert's rank, the gradient of every
token of the group that was routed there; `reduce_expert_gradients` adds the replicas' sums and
divides by W, so every gradient is that of the same mean loss one process computes.

torchtitan composes EP the same way, except that it also FSDP-shards the experts over the replicas;
here they are replicated there (with ep = W, the usual choice on one node, there are no replicas).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from blueberry.errors import UserError


def expert_parallel_degree(cfg) -> int:
    """The run's EP degree; 1 for tasks without experts."""
    return getattr(cfg, "expert_parallel", 1)


def check_degree(cfg, world_size: int) -> None:
    """The rules that need the world size (the config checks n_experts itself); one line otherwise."""
    ep = expert_parallel_degree(cfg)
    if ep > 1 and world_size % ep:
        raise UserError(f"expert_parallel={ep}: must divide the number of processes ({world_size}); launch "
                        f"a multiple of {ep} processes (e.g. launch/cpu-2proc.yaml: 2) or lower it")


class ExpertParallel:
    """The EP layout of one model: its mesh, and what the trainer asks of it at each optimizer step."""

    def __init__(self, model, degree: int, device_type: str):
        from torch.distributed.device_mesh import init_device_mesh

        from blueberry.models.expert_parallel import shard_experts
        from blueberry.models.moe import Experts

        self.world = dist.get_world_size()
        self.mesh = init_device_mesh(device_type, (self.world // degree, degree),
                                     mesh_dim_names=("ep_replicate", "ep"))
        self.experts = [m for m in model.modules() if isinstance(m, Experts)]
        for experts in self.experts:
            shard_experts(experts, self.mesh["ep"])

    @property
    def degree(self) -> int:
        return self.mesh["ep"].size()

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.experts for p in m.parameters()]

    @torch.no_grad()
    def reduce_expert_gradients(self) -> None:
        """Once per optimizer step, after the last micro-batch's backward: the experts' gradients as DDP
        leaves the others (the mean over the W ranks' losses)."""
        grads = [p.grad.to_local() for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        torch._foreach_mul_(grads, 1.0 / self.world)
        if self.mesh["ep_replicate"].size() > 1:
            group = self.mesh["ep_replicate"].get_group()
            flat = torch.cat([g.reshape(-1) for g in grads])   # one all-reduce for every expert
            dist.all_reduce(flat, group=group)
            for g, summed in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(summed.view_as(g))
        # (a replica group of one: the exchange's sum is already the whole gradient)

    @torch.no_grad()
    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        """torch.nn.utils.clip_grad_norm_ (L2) over whole tensors, DDP's replicated ones and the DTensor
        shards of EP and FSDP2 alike: each mesh's sum of squares is all-reduced over that mesh (torch's
        own cannot mix tensors of different meshes). Returns the total norm, a device tensor."""
        from torch.distributed.tensor import DTensor, Shard

        grads = [p.grad for p in parameters if p.grad is not None]
        replicated, per_mesh = [], {}
        for g in grads:
            if isinstance(g, DTensor):
                if g.device_mesh.ndim != 1 or tuple(g.placements) != (Shard(0),):
                    raise NotImplementedError(f"gradient placements {g.placements}: only Shard(0) on one mesh dim")
                per_mesh.setdefault(g.device_mesh.get_group(), []).append(g.to_local())
            else:
                replicated.append(g)
        total = _square_sum(replicated) if replicated else torch.zeros((), device=grads[0].device)
        for group, shards in per_mesh.items():
            squares = _square_sum(shards)
            dist.all_reduce(squares, group=group)
            total = total + squares
        norm = total.sqrt()
        scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)   # torch's clip coefficient
        torch._foreach_mul_([g.to_local() if isinstance(g, DTensor) else g for g in grads], scale)
        return norm


def _square_sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([n.float() for n in torch._foreach_norm(tensors)]).square().sum()


def apply_expert_parallel(model, cfg, accelerator) -> ExpertParallel | None:
    """Shard the experts of `model` (before the optimizer is built and before accelerator.prepare) and
    keep DDP / FSDP2 off them; the layout is also kept on the model for `of`. None when EP is off."""
    degree = expert_parallel_degree(cfg)
    if degree <= 1:
        return None
    check_degree(cfg, accelerator.num_processes)
    ep = ExpertParallel(model, degree, accelerator.device.type)
    names = [name for name, p in model.named_parameters() if any(p is q for q in ep.parameters())]
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is not None:   # FSDP2 shards every other parameter; the experts are EP's
        plugin.ignored_modules = ep.experts
    model.expert_parallel = ep
    return ep


def of(model) -> ExpertParallel | None:
    """The EP layout of a model (prepared by Accelerate or not), or None."""
    return getattr(getattr(model, "module", model), "expert_parallel", None)

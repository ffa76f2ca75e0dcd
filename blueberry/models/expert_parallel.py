"""Expert parallelism's token exchange: each of `size` ranks holds E/size whole experts, and every
token assignment travels to the rank holding its expert and its expert output travels back
(the all-to-all dispatcher of torchtitan's ExpertParallel, Megatron-Core and DeepSpeed-MoE).

Per MoE layer and direction: one all-to-all of the per-expert counts (equal splits, no gradient),
then one of the token rows with uneven splits through torch's differentiable functional collective
(`all_to_all_single_autograd`), so the backward returns each row's gradient along the same route.
Any split may be empty: an expert that gets no tokens, or a rank that sends none, is an ordinary case.

The counts are read back to the host once per layer (the row splits size the exchange), as in
torchtitan; the CPU's per-expert loop reads its offsets anyway.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.distributed._functional_collectives import all_to_all_single_autograd


class Route(NamedTuple):
    """How the rows of one dispatch travelled, for the way back."""
    sent: list[int]        # rows this rank sent to each rank of the group
    received: list[int]    # rows this rank received from each rank
    inverse: torch.Tensor  # row j as it arrived (source-major) is row inverse[j] of the experts' order


class TokenExchange:
    """The ranks of `group` hold experts [r * E/size, (r+1) * E/size) each, r = rank in the group."""

    def __init__(self, group, n_experts: int):
        self.group = group
        self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)
        if n_experts % self.size:
            raise ValueError(f"{n_experts} experts cannot be split evenly over {self.size} ranks")
        self.n_experts, self.n_local = n_experts, n_experts // self.size

    def dispatch(self, rows: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Route]:
        """Send this rank's assignments to their experts' ranks.

        rows [sum(counts), D] are sorted by expert, counts [E] are the rows per expert. Returns the rows
        of this rank's experts sorted by local expert (each expert's rows in source-rank order), the rows
        per local expert [E/size], and the route for `combine`.
        """
        with torch.no_grad():
            # incoming[s * n_local + e]: rows rank s sends to local expert e of this rank
            incoming = torch.empty_like(counts)
            dist.all_to_all_single(incoming, counts, group=self.group)
            per_source = incoming.view(self.size, self.n_local)
            sent, received = torch.stack([counts.view(self.size, self.n_local).sum(1),
                                          per_source.sum(1)]).tolist()   # the one host read
        arrived = all_to_all_single_autograd(rows, received, sent, self.group)
        # Rows arrive source-major (s0: e0 e1 .., s1: e0 e1 ..); the experts want them expert-major.
        # A stable sort on the local expert id keeps the source order within each expert.
        expert_of_row = torch.arange(self.n_local, device=counts.device).repeat(self.size)
        expert_of_row = expert_of_row.repeat_interleave(incoming, output_size=sum(received))
        order = torch.argsort(expert_of_row, stable=True)
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        return arrived.index_select(0, order), per_source.sum(0), Route(sent, received, inverse)

    def combine(self, outputs: torch.Tensor, route: Route) -> torch.Tensor:
        """The inverse of `dispatch` for the experts' outputs: back to the rank and position each row came from."""
        source_major = outputs.index_select(0, route.inverse)
        return all_to_all_single_autograd(source_major, route.sent, route.received, self.group)


def shard_experts(experts, mesh) -> None:
    """Make `experts` (models.moe.Experts) expert parallel over the 1-D `mesh`: each stacked weight
    [E, out, in] becomes a DTensor sharded on the expert dim (Shard(0)) whose local part is this rank's
    E/size experts. Every rank built the same full weights (same seed), so no data moves; the local
    part is a copy, so the full stack is freed."""
    from torch import nn
    from torch.distributed.tensor import DTensor, Shard

    n_experts, size, rank = experts.w_gate.shape[0], mesh.size(), mesh.get_local_rank()
    for name in ("w_gate", "w_up", "w_down"):
        full = getattr(experts, name)
        local = full.detach().chunk(size)[rank].clone()
        shard = DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=full.shape, stride=full.stride())
        setattr(experts, name, nn.Parameter(shard, requires_grad=full.requires_grad))
    experts.exchange = TokenExchange(mesh.get_group(), n_experts)

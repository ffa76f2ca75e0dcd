"""Split a model's parameters into optimizer groups and build the optimizer the config names."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blueberry.optim.muon import ADAMW_DEFAULTS, HybridMuon


def partition_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters as {"hidden": ..., "other_matrix": ..., "vector": ...}, each exactly once.

    A hidden matrix has ndim >= 2 and no owning module that is an nn.Embedding or sets
    `muon_exclude = True`. A head tied to the embedding is the embedding and stays off Muon,
    whichever of the two modules comes first. `muon_exclude` covers the module's whole subtree,
    so a router that keeps its projection in a child nn.Linear is excluded too. Frozen
    parameters are left out.
    """
    order: dict[int, nn.Parameter] = {}  # by id: Parameter equality is elementwise, not identity
    excluded: set[int] = set()
    for module in model.modules():
        if getattr(module, "muon_exclude", False) is True:
            excluded.update(id(p) for p in module.parameters())
        for _, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            order.setdefault(id(p), p)
            if isinstance(module, nn.Embedding):
                excluded.add(id(p))
    parts: dict[str, list[nn.Parameter]] = {"hidden": [], "other_matrix": [], "vector": []}
    for p in order.values():
        kind = "vector" if p.ndim < 2 else "other_matrix" if id(p) in excluded else "hidden"
        parts[kind].append(p)
    return parts


def build_optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """AdamW, or HybridMuon (Muon on hidden matrices, AdamW on the rest), per `cfg.optimizer`.

    Groups are named "muon", "adamw_decay", "adamw_no_decay"; empty ones are left out. Vectors
    (norms, biases) get no weight decay. A model with a `parametrization` (models/param.py: muP,
    CompleteP) splits a group by its per-parameter factors: the members at the configured LR keep
    the group's name, the others follow all groups as NAME_xFACTOR with their scaled lr (and eps,
    weight decay); under sp nothing is split.
    """
    parts = partition_params(model)
    betas = (cfg.beta1, cfg.beta2)
    scales = _scales_by_param(model)
    if cfg.optimizer == "adamw":
        groups = [
            {"name": "adamw_decay", "params": parts["hidden"] + parts["other_matrix"],
             "weight_decay": cfg.weight_decay},
            {"name": "adamw_no_decay", "params": parts["vector"], "weight_decay": 0.0},
        ]
        groups = _split_by_scale([g for g in groups if g["params"]], scales, cfg)
        on_cuda = any(p.is_cuda for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=True if on_cuda else None)
    if cfg.optimizer == "muon":
        groups = [
            {"name": "muon", "use_muon": True, "params": parts["hidden"], "lr": cfg.muon_lr,
             "momentum": cfg.muon_momentum, "weight_decay": cfg.weight_decay},
            {"name": "adamw_decay", "use_muon": False, "params": parts["other_matrix"], "lr": cfg.lr,
             "betas": betas, "weight_decay": cfg.weight_decay},
            {"name": "adamw_no_decay", "use_muon": False, "params": parts["vector"], "lr": cfg.lr,
             "betas": betas, "weight_decay": 0.0},
        ]
        return HybridMuon(_split_by_scale([g for g in groups if g["params"]], scales, cfg))
    raise ValueError(f"optimizer={cfg.optimizer!r}: must be adamw or muon")


def _scales_by_param(model: nn.Module) -> dict[int, Any]:
    """{id(parameter): ParamScale} of the model's parametrization; {} when it has none (sp)."""
    found = getattr(model, "parametrization", None)
    if found is None or not found.scales:
        return {}
    return {id(p): found.scale(name) for name, p in model.named_parameters()}


def _split_by_scale(groups: list[dict[str, Any]], scales: dict[int, Any], cfg: Any) -> list[dict[str, Any]]:
    """Each group split by its members' (lr, eps, weight decay) factors. The members at factor-1 LR
    stay in the group as it was (the trainer logs its lr as the run's); scaled ones follow all
    groups, so the first AdamW group is still the one at the configured LR."""
    if not scales:
        return groups
    kept, scaled = [], []
    for group in groups:
        muon = group.get("use_muon", False)
        buckets: dict[tuple, list[nn.Parameter]] = {}
        for p in group["params"]:
            s = scales[id(p)]
            buckets.setdefault((s.muon_lr, 1.0, 1.0) if muon else s.adamw_key(), []).append(p)
        for (lr, eps, wd), params in buckets.items():
            out = {**group, "params": params}
            if lr != 1:
                out["name"] = f"{group['name']}_x{lr:.4g}"
                out["lr"] = (cfg.muon_lr if muon else cfg.lr) * lr
            if eps != 1:
                out["eps"] = ADAMW_DEFAULTS["eps"] * eps   # torch's AdamW default too
            if wd != 1:
                out["weight_decay"] = group["weight_decay"] * wd
            (kept if lr == 1 else scaled).append(out)
    names = [g["name"] for g in kept + scaled]
    if len(set(names)) != len(names):   # factors that differ beyond 4 digits; never from param.py's rules
        raise ValueError(f"parametrization: optimizer groups share a name: {names}")
    return kept + scaled


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The current lr of each named group, e.g. {"muon": 0.02, "adamw_decay": 1e-3, ...}."""
    return {g["name"]: float(g["lr"]) for g in optimizer.param_groups if "name" in g}


def state_copies(kind: str, optimizer: str) -> int:
    """Optimizer-state tensors kept per parameter of a partition_params kind: AdamW keeps two
    moments, Muon one momentum buffer for a hidden matrix (its other parameters are on AdamW)."""
    return 1 if optimizer == "muon" and kind == "hidden" else 2


def optimizer_state_bytes(model: nn.Module, cfg: Any) -> int:
    """Bytes the optimizer's state will hold for `model` (meta tensors do)."""
    return sum(p.numel() * p.element_size() * state_copies(kind, cfg.optimizer)
               for kind, params in partition_params(model).items() for p in params)

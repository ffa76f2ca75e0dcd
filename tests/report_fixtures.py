"""Hand-made run dirs and sweep dirs for the report tests: the files the trainer and `sweep local`
write (config.yaml, metrics.jsonl, summary.json, trial.json), with curves chosen so the expected
warnings, ranks and noise verdicts are known in advance."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from blueberry.config import LMConfig, ScanlineConfig


def cosine_lr(step: int, peak: float, max_steps: int, warmup: int, min_ratio: float) -> float:
    """The LR the trainer logs at `step`: that of the update just taken (lr_factor(step - 1))."""
    s = step - 1
    if s < warmup:
        return peak * (s + 1) / warmup
    span = max(1, max_steps - 1 - warmup)
    p = min(1.0, max(0.0, (s - warmup) / span))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def make_run(root: Path, name: str, *, task: str = "lm", val: dict[int, float] | Callable[[int], float] | None = None,
             train_loss: Callable[[int], float] | None = None, lr_at: Callable[[int], float] | None = None,
             max_steps: int = 100, eval_every: int = 10, last_step: int | None = None, status: str = "finished",
             epochs_total: float = 0.5, leak_fraction: float = 0.0, min_share: float | dict[int, float] = 1.0,
             gap_accuracy: float = 0.0, extra_eval: dict[str, float] | None = None, **config: Any) -> Path:
    """A run dir; `val` gives val/loss (lm) or val/balanced_accuracy (scanline) per eval step.

    Defaults: a healthy lm run — val loss falling from 5 to 3, a finished cosine schedule, half an
    epoch, no leakage, balanced experts.
    """
    cls = LMConfig if task == "lm" else ScanlineConfig
    cfg = {**cls().to_dict(), "name": name, "max_steps": max_steps, "eval_every": eval_every, "warmup_steps": 5,
           "out_dir": str(root), **config}
    last_step = max_steps if last_step is None else last_step
    metric = "val/loss" if task == "lm" else "val/balanced_accuracy"
    if val is None:
        val = (lambda s: 3.0 + 2.0 * math.exp(-s / 20)) if task == "lm" else (lambda s: 0.9 - 0.6 * math.exp(-s / 20))
    val_at = val if callable(val) else val.__getitem__
    eval_steps = list(val) if isinstance(val, dict) else list(range(0, last_step + 1, eval_every))
    train_loss = train_loss or (lambda s: 3.1 + 2.0 * math.exp(-s / 20))
    peak = cfg["lr"]
    lr_at = lr_at or (lambda s: cosine_lr(s, peak, max_steps, cfg["warmup_steps"], cfg["min_lr_ratio"]))
    unit = "tokens" if task == "lm" else "samples"
    rows, best, best_step = [], None, None
    for step in sorted(set(range(1, last_step + 1)) | set(eval_steps)):
        t = 1.0 + 0.1 * step
        if step >= 1:
            rows.append({"step": step, "train/loss": train_loss(step), "lr": lr_at(step),
                         f"train/{unit}_per_s": 1000.0, f"{unit}_seen": 128 * step,
                         "epochs": epochs_total * step / max_steps, "time": t})
        if step in eval_steps:
            v = val_at(step)
            row = {"step": step, metric: v, "time": t + 0.05}
            if task == "lm":
                share = min_share.get(step, 1.0) if isinstance(min_share, dict) else min_share
                row.update({"val/accuracy": 0.2 + 0.001 * step, "val/perplexity": math.exp(v) if v < 50 else math.inf,
                            "moe/min_share": share, "moe/layer0/expert0": share / 4, "moe/layer0/expert1": 0.3,
                            "moe/layer0/expert2": 0.3, "moe/layer0/expert3": 0.4 - share / 4})
            else:
                row.update({"val/loss": 1.0 - v / 2, "val/accuracy": v, "train/balanced_accuracy": v + gap_accuracy,
                            "gap/balanced_accuracy": gap_accuracy, "gap/accuracy": gap_accuracy, "gap/loss": 0.0})
            row.update(extra_eval or {})
            if math.isfinite(v) and (best is None or (v < best if task == "lm" else v > best)):
                best, best_step = v, step
            row[f"{metric}_best"] = best
            rows.append(row)
    path = Path(root) / name
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    final: dict[str, Any] = {}
    for r in rows:
        final.update(r)
    summary = {"status": status, "task": task, "name": name, "step": last_step, "max_steps": max_steps,
               "best": {"metric": metric, "mode": "min" if task == "lm" else "max", "value": best, "step": best_step},
               "final": final, "wall_time_s": 1.0 + 0.1 * last_step,
               "params": {"total": 2_000_000, "active": 1_300_000, "embedding": 262_144},
               "data": {"unique_train_tokens": 50_000, "leak_ngram": 32, "leak_fraction": leak_fraction},
               "unit": unit, f"{unit}_seen": 128 * last_step, "epochs": epochs_total * last_step / max_steps,
               "wandb": {"id": None, "mode": "disabled", "dir": None}}
    (path / "summary.json").write_text(json.dumps(summary, indent=2))
    return path


def make_sweep(root: Path, metric: str = "val/loss_best", goal: str = "minimize",
               trials: list[dict[str, Any]] = ()) -> Path:
    """A `sweep local` dir; each trial dict holds `params` plus make_run keyword arguments."""
    root = Path(root)
    (root / "trials").mkdir(parents=True, exist_ok=True)
    params_spec = {}
    for t in trials:
        for k, v in t["params"].items():
            params_spec.setdefault(k, {"values": []})["values"].append(v)
    (root / "sweep.yaml").write_text(yaml.safe_dump({
        "name": root.name, "method": "grid", "metric": {"name": metric, "goal": goal},
        "parameters": params_spec, "command": ["${env}", "${interpreter}", "-m", "blueberry.cli", "train", "lm", "${args}"]}))
    (root / "sweep.json").write_text(json.dumps({"name": root.name, "seed": 0, "overrides": []}))
    for i, t in enumerate(trials):
        tid = f"t{i:04d}"
        kwargs = {k: v for k, v in t.items() if k != "params"}
        folder = root / "trials" / tid
        run = make_run(folder / "runs", f"lm-tiny-2026112{i}_120000", **{**t["params"], **kwargs}) \
            if not t.get("no_run") else None
        trial = {"id": tid, "params": t["params"], "status": "failed" if run is None else "finished", "argv": [],
                 "attempts": 1, "owner": {}, "heartbeat": 0.0, "started": 0.0, "ended": 1.0,
                 "exit_code": 1 if run is None else 0,
                 "run_dir": str(run.relative_to(root)) if run else None, "history": [], "value": None}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "trial.json").write_text(json.dumps(trial, indent=2))
    return root


def seed_study(root: Path, values: dict[float, list[float]], seed_base: int = 0) -> list[Path]:
    """Run dirs of an lr study: for each lr, one run per listed final val loss, seeds 0, 1, 2, ...

    Each curve falls smoothly to its value at the last eval, so best = final = the listed value.
    """
    paths = []
    for lr, finals in values.items():
        for seed, v in enumerate(finals, start=seed_base):
            curve = {s: v + 2.0 * (1 - s / 100) ** 2 for s in range(0, 101, 10)}
            paths.append(make_run(root, f"lr{lr:g}-s{seed}", val=curve, lr=lr, seed=seed,
                                  train_loss=lambda s, v=v: v + 2.0 * (1 - s / 100) ** 2))
    return paths

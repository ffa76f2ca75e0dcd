"""`blueberry evaluate`: a finished (or running) run's checkpoint on one split of its data.

Rebuilds the task's data and model from the run dir's config.yaml, loads the checkpoint's model
weights, evaluates the WHOLE split (training evaluates eval_batches of it), and writes
RUN_DIR/eval-<split>.json (plus any figures under plots/).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from accelerate.utils import SAFE_MODEL_NAME, load_checkpoint_in_model

from blueberry import rundir
from blueberry.config import TASK_CONFIGS, read_config_file, resolve
from blueberry.errors import UserError
from blueberry.tasks import load_task
from blueberry.train import checkpoint
from blueberry.train.figures import save_figures
from blueberry.train.trainer import make_accelerator


def pick_checkpoint(run_dir: Path, which: str) -> Path:
    """best | latest | a checkpoint dir."""
    if which == "best":
        found = checkpoint.best_checkpoint(run_dir)
    elif which == "latest":
        found = rundir.latest_checkpoint(run_dir)
    else:
        found = Path(which) if (Path(which) / f"{SAFE_MODEL_NAME}.safetensors").exists() else None
    if found is None:
        raise UserError(f"checkpoint={which}: not found in {run_dir}; use best, latest or a checkpoint dir "
                        f"(a run with save_best=false has no best)")
    return found


def evaluate_run(run_dir: str | Path, split: str, which: str = "best") -> tuple[dict[str, float], Path]:
    """Metrics of `which` checkpoint on `split`; also written to RUN_DIR/eval-<split>.json."""
    run_dir = Path(run_dir)
    if not (run_dir / rundir.CONFIG).exists():
        raise UserError(f"{run_dir}: not a run dir (no {rundir.CONFIG})")
    saved = read_config_file(run_dir / rundir.CONFIG)
    task_name = saved.pop("task", "")
    if task_name not in TASK_CONFIGS:
        raise UserError(f"{run_dir / rundir.CONFIG}: task={task_name!r} is not one of {', '.join(TASK_CONFIGS)}")
    cfg = resolve(TASK_CONFIGS[task_name], base=saved, source=str(run_dir / rundir.CONFIG))
    cfg = dataclasses.replace(cfg, eval_batches=2**31 - 1)   # the whole split, not the in-training sample
    task = load_task(task_name)
    if split not in task.splits:
        raise UserError(f"split={split}: {task_name} runs have {', '.join(task.splits)}")
    ckpt = pick_checkpoint(run_dir, which)

    accelerator = make_accelerator(cfg)
    data = task.build_data(cfg, accelerator)
    model = task.build_model(cfg, data)
    load_checkpoint_in_model(model, str(ckpt / f"{SAFE_MODEL_NAME}.safetensors"), strict=True)
    model = accelerator.prepare(model)
    metrics, figures = task.evaluate(model, data, cfg, accelerator, split=split)
    if accelerator.is_main_process:
        save_figures(run_dir, {f"{split}/{name.split('/', 1)[-1]}": fig for name, fig in figures.items()})
        out = run_dir / f"eval-{split}.json"
        rundir.write_atomic(out, json.dumps({"checkpoint": ckpt.name, "step": _step_of(ckpt), "split": split,
                                             "metrics": metrics}, indent=2) + "\n")
    return metrics, run_dir / f"eval-{split}.json"


def _step_of(ckpt: Path) -> int | None:
    match = rundir.STEP_DIR.match(ckpt.name)
    return int(match.group(1)) if match else None

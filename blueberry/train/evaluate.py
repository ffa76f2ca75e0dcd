"""`blueberry evaluate`: a finished (or running) run's checkpoint on one split of its data.

Rebuilds the task's data and model from the run dir's config.yaml, loads the checkpoint's model
weights, evaluates the WHOLE split (training evaluates eval_batches of it), and writes
RUN_DIR/eval-<split>.json (plus any figures under plots/).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from blueberry import rundir
from blueberry.config import TASK_CONFIGS, read_config_file, resolve
from blueberry.errors import UserError, first_line
from blueberry.tasks import load_task
from blueberry.train.checkpoint import formats, pick
from blueberry.train.figures import save_figures
from blueberry.train.artifacts import fetch_model_artifact, is_artifact_reference
from blueberry.train.tracking import checkpoint_step, log_evaluation, notice
from blueberry.train.trainer import make_accelerator


def default_split(task, cfg) -> str:
    """What `evaluate` reads when no --split is given: the test split when the run has one, else val."""
    return "test" if "test" in task.splits and getattr(cfg, "test_fraction", 0) > 0 else "val"


def evaluate_run(run_dir: str | Path, split: str | None = None, which: str = "best") -> tuple[dict[str, float], Path]:
    """Metrics of `which` checkpoint on `split`; also written to RUN_DIR/eval-<split>.json."""
    if is_artifact_reference(str(run_dir)):   # a model Artifact version holds one checkpoint
        run_dir, which = fetch_model_artifact(str(run_dir), "run_dir", Path("runs") / "artifacts"), "latest"
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
    split = split or default_split(task, cfg)
    if split not in task.splits:
        raise UserError(f"split={split}: {task_name} runs have {', '.join(task.splits)}")
    ckpt = pick(run_dir, which)

    accelerator = make_accelerator(cfg)
    data = task.build_data(cfg, accelerator)
    model = task.build_model(cfg, data)
    try:
        formats.load_model_weights(model, ckpt)   # any layout: model.safetensors or DCP shards
    except Exception as e:   # written by another version of the model, or damaged without a manifest
        raise UserError(f"{formats.weights_path(ckpt)}: cannot be loaded into the run's model ({first_line(e)})") from None
    model = accelerator.prepare(model)
    metrics, figures = task.evaluate(model, data, cfg, accelerator, split=split)
    if accelerator.is_main_process:
        media = save_figures(run_dir, {f"{split}/{name.split('/', 1)[-1]}": fig for name, fig in figures.items()})
        out = run_dir / f"eval-{split}.json"
        rundir.write_atomic(out, json.dumps({"checkpoint": ckpt.name, "step": checkpoint_step(ckpt), "split": split,
                                             "metrics": metrics}, indent=2) + "\n")
        log_evaluation(run_dir, cfg, split=split, ckpt=ckpt, metrics=metrics, media=media)   # a linked W&B run
    return metrics, run_dir / f"eval-{split}.json"

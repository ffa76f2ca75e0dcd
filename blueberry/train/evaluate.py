"""`blueberry evaluate`: a finished (or running) run's checkpoint on one split of its data.

Rebuilds the task's data and model from the run dir's config.yaml, loads the checkpoint's model
weights, evaluates the WHOLE split (training evaluates eval_batches of it), and writes
OUT/eval-<split>.json, figures under OUT/plots/ and the evaluation's W&B run under OUT/eval/wandb/;
OUT is the run dir unless --out names another folder. OUT must be writable before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from blueberry import rundir
from blueberry.config import TASK_CONFIGS, read_config_file, resolve
from blueberry.errors import UserError, first_line
from blueberry.rundir import ensure_writable_dir
from blueberry.tasks import load_task
from blueberry.train.checkpoint import formats, pick
from blueberry.train.artifacts import FetchedArtifact, download_model_artifact, is_artifact_reference, require_online
from blueberry.train.figures import save_figures
from blueberry.train.checkpoint.layout import checkpoint_step
from blueberry.train.tracking import log_evaluation
from blueberry.train.trainer import make_accelerator


def default_split(task, cfg) -> str:
    """What `evaluate` reads when no --split is given: the test split when the run has one, else val."""
    return "test" if "test" in task.splits and getattr(cfg, "test_fraction", 0) > 0 else "val"


def evaluate_run(run_dir: str | Path, split: str | None = None, which: str = "best",
                 out: str | Path | None = None) -> tuple[dict[str, float], Path]:
    """Metrics of `which` checkpoint on `split`; also written to OUT/eval-<split>.json (OUT: `out`, else
    the run dir)."""
    fetched: FetchedArtifact | None = None
    if out is not None:   # before a download or any other work; made once the input holds
        out = ensure_writable_dir(out, "--out", create=False)
    if is_artifact_reference(str(run_dir)):   # a model Artifact version holds one checkpoint
        require_online(str(run_dir), "run_dir")
        into = Path(out or "runs") / "artifacts"
        ensure_writable_dir(into, "run_dir", f"the Artifact is downloaded under {into}; pass --out DIR")
        fetched = download_model_artifact(str(run_dir), "run_dir", into)
        run_dir, which = fetched.run_dir, "latest"
    run_dir = Path(run_dir)
    if not (run_dir / rundir.CONFIG).exists():
        raise UserError(f"{run_dir}: not a run dir (no {rundir.CONFIG})")
    if out is None:
        out = ensure_writable_dir(run_dir, "run_dir", "pass --out DIR for eval-SPLIT.json, its figures and "
                                  "W&B files")
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
    written = Path(out) / f"eval-{split}.json"
    if accelerator.is_main_process:
        Path(out).mkdir(parents=True, exist_ok=True)
        media = save_figures(out, {f"{split}/{name.split('/', 1)[-1]}": fig for name, fig in figures.items()})
        rundir.write_atomic(written, json.dumps({"checkpoint": ckpt.name, "step": checkpoint_step(ckpt),
                                                 "split": split, "metrics": metrics}, indent=2) + "\n")
        log_evaluation(run_dir, cfg, split=split, ckpt=ckpt, metrics=metrics, media=media, out_dir=Path(out),
                       artifact=fetched)   # a linked W&B run
    return metrics, written

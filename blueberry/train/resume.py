"""What `blueberry train TASK --resume ...` continues, and with which config: decided before any
torch import or data work, so a refused resume costs nothing and changes nothing.

A resumed run starts from its saved config.yaml, with the --config file, the recipe and explicit
options on top. Refused with one line: a change to a field that defines the run (unless
--allow-changed names it), a max_steps below the checkpoint's step, and a change of the number of
processes that would silently change the global batch. A resume with nothing left to train says so
and writes nothing.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from blueberry.config import RunConfig, changed_run_fields, read_config_file, resolve
from blueberry.console import notice
from blueberry.errors import UserError


def resolve_train_config(cls: type[RunConfig], cli_values: dict, config_file: str | None, recipe: dict | None = None,
                         allow_changed: str | None = None):
    """(config to train, checkpoint to resume or None, allowed changes {field: [old, new]})."""
    from blueberry.train.artifacts import fetch_model_artifact, is_artifact_reference
    from blueberry.train.checkpoint.pick import find_resume_checkpoint
    from blueberry.train.tracking import requeued_run_dir

    file_values = read_config_file(config_file) if config_file else {}
    # Where to resume is found first; stop_at_step is checked against max_steps only once the run's
    # own max_steps is known (a preset's 200 must not refuse --resume RUN --stop_at_step 500).
    finding = {k: v for k, v in cli_values.items() if k != "stop_at_step"}
    cfg = resolve(cls, file_values=file_values, recipe=recipe, cli_values=finding, source=config_file or "config")
    allowed = [f.strip() for f in (allow_changed or "").split(",") if f.strip()]
    for name in allowed:
        if name not in cls.defines_run:
            raise UserError(f"--allow-changed {name}: not a field that defines the run; those are "
                            f"{', '.join(cls.defines_run)}")
    if cfg.resume and is_artifact_reference(cfg.resume):   # entity/project/model-ID:alias: download a run dir
        cfg.resume = str(fetch_model_artifact(cfg.resume, "resume", Path(cfg.out_dir) / "artifacts"))
    if not cfg.resume and (requeued := requeued_run_dir(cfg.out_dir)):   # W&B's sweep re-ran a preempted trial
        notice(f"W&B run {os.environ['WANDB_RUN_ID']} was preempted: resuming {requeued}")
        cfg.resume = str(requeued)
    ckpt = find_resume_checkpoint(cfg.resume, cfg.out_dir, cfg.name) if cfg.resume else None
    if ckpt is None:
        if allowed and cfg.resume != "auto":
            raise UserError("--allow-changed: only applies with --resume")
        if "stop_at_step" in cli_values:
            cfg = resolve(cls, file_values=file_values, recipe=recipe, cli_values=cli_values,
                          source=config_file or "config")
        return cfg, None, {}
    run_dir = ckpt.parent.parent
    saved = read_config_file(run_dir / "config.yaml")
    if saved.get("task") != cls.task:
        raise UserError(f"resume={cfg.resume}: {run_dir} is a {saved.get('task') or 'unknown'} run, not {cls.task}; "
                        f"resume it with: blueberry train {saved.get('task') or 'TASK'} --resume {run_dir}")
    per_invocation = ("task", "resume", "stop_at_step")   # where this process stops is not inherited
    cfg = resolve(cls, base={k: v for k, v in saved.items() if k not in per_invocation}, file_values=file_values,
                  recipe=recipe, cli_values=cli_values, source=config_file or "config")
    changes = changed_run_fields(cls, saved, cfg)
    refused = [name for name in changes if name not in allowed]
    if refused:
        raise UserError(f"resume={cfg.resume}: {', '.join(f'{n} {changes[n][0]!r} -> {changes[n][1]!r}' for n in refused)}"
                        f" would change what {run_dir.name} is (its model, data, split or tokenizer); drop "
                        f"{'that option' if len(refused) == 1 else 'those options'}, or pass --allow-changed "
                        f"{','.join(refused)} to continue anyway (recorded in summary.json)")
    explicit = {*cli_values, *file_values, *(recipe or {})}
    cfg = keep_global_batch(cfg, ckpt, explicit, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    # A field allowed but unchanged in the config (data, tokenizer) still excuses its fingerprint: the
    # files behind the same path changed. It is recorded with its value as old and new.
    unchanged = {name: [getattr(cfg, name)] * 2 for name in allowed if name not in changes}
    return cfg, ckpt, {**changes, **unchanged}


def nothing_to_train(cfg: RunConfig, ckpt: Path) -> str | None:
    """The line to print when the checkpoint is already where this invocation would stop (exit 0,
    nothing written); UserError when max_steps is below it. None when there is training to do."""
    from blueberry.train.checkpoint.layout import checkpoint_step

    done = checkpoint_step(ckpt)
    if done is None or cfg.epochs > 0:   # an epoch budget is counted in steps once the data is known
        return None
    if cfg.max_steps < done:
        raise UserError(f"max_steps={cfg.max_steps}: {ckpt.parent.parent.name} is already at step {done} ({ckpt.name}); "
                        f"give max_steps >= {done}, or resume an earlier checkpoint dir of the run")
    stop = cfg.stop_at_step or cfg.max_steps
    if stop > done:
        return None
    why = f"stop_at_step={cfg.stop_at_step}" if cfg.stop_at_step else f"max_steps={cfg.max_steps}"
    return (f"nothing to train: {ckpt.parent.parent} is at step {done} and {why}; nothing was written "
            f"(raise max_steps to train on: --max_steps N)")


def keep_global_batch(cfg: RunConfig, ckpt: Path, explicit: set[str], world_size: int) -> RunConfig:
    """A checkpoint written by another number of processes: the same global batch (batch_size x
    grad_accum x processes), by scaling grad_accum when it was not given; else one line with the
    options that keep it. The learning rate and schedule were tuned for that batch."""
    from blueberry.train.checkpoint.layout import saved_world_size

    saved_world = saved_world_size(ckpt)
    if saved_world == world_size:
        return cfg
    saved = read_config_file(ckpt.parent.parent / "config.yaml")
    try:
        global_batch = int(saved["batch_size"]) * int(saved["grad_accum"]) * saved_world
    except (KeyError, TypeError, ValueError):
        return cfg   # a config.yaml without them: nothing to compare
    per_step = cfg.batch_size * world_size   # one micro-batch on every process
    if cfg.batch_size * cfg.grad_accum * world_size == global_batch:
        return cfg
    if "grad_accum" not in explicit and global_batch % per_step == 0:
        grad_accum = global_batch // per_step
        notice(f"{ckpt.name} was written by {saved_world} process(es), this run has {world_size}: grad_accum "
               f"{cfg.grad_accum} -> {grad_accum} keeps the global batch of {global_batch}")
        return dataclasses.replace(cfg, grad_accum=grad_accum)
    fix = (f"--grad_accum {global_batch // per_step}" if global_batch % per_step == 0 else
           f"a batch_size and grad_accum with batch_size x grad_accum x {world_size} = {global_batch}")
    raise UserError(f"resume={cfg.resume}: {ckpt.name} was written by {saved_world} process(es) with a global batch "
                    f"of {global_batch} (batch_size {saved['batch_size']} x grad_accum {saved['grad_accum']} x "
                    f"{saved_world}); {world_size} process(es) with batch_size {cfg.batch_size} x grad_accum "
                    f"{cfg.grad_accum} would train on {cfg.batch_size * cfg.grad_accum * world_size}: pass {fix}")

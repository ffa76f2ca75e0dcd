"""The one training loop: any task, one or many processes, through Accelerate.

Steps are OPTIMIZER steps everywhere: max_steps, the schedule, eval_every, W&B's step axis,
checkpoints. A micro-batch is one forward/backward on one process; grad_accum of them make a step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, set_seed
from tqdm.auto import tqdm

from blueberry import rundir
from blueberry.config import RunConfig, dump_yaml
from blueberry.errors import EXIT_PREEMPTED, UserError
from blueberry.optim.build import build_optimizer
from blueberry.optim.schedules import build_scheduler
from blueberry.train import checkpoint
from blueberry.train.checkpoint import TrainerState
from blueberry.train.figures import save_figures
from blueberry.train.tracking import Tracker, choose_mode, notice



class PreemptSignal:
    """Turns SIGUSR1 / SIGTERM into a flag the loop checks after each optimizer step."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}
        self._pending = None    # (work, flag) of the all-reduce started at the previous step
        self._group = None

    def install(self) -> None:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, _frame) -> None:
        self.received = signum

    def any_rank(self, accelerator) -> bool:
        """Every rank must agree to stop at the same step, though signals reach them at different times.

        Across processes each call starts this step's all-reduce of the flags and reads the previous
        step's, so all ranks stop one step after the signal, and the host never waits for the GPU:
        the flags are CPU tensors, reduced over gloo (a side group when the main one is NCCL).
        """
        if accelerator.num_processes == 1:
            return self.received is not None
        import torch.distributed as dist

        if self._group is None:
            self._group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        flag = torch.tensor([1.0 if self.received is not None else 0.0])
        previous = self._pending
        self._pending = (dist.all_reduce(flag, dist.ReduceOp.MAX, group=self._group, async_op=True), flag)
        if previous is None:
            return False
        work, flag = previous
        work.wait()
        return bool(flag.item())

    def settle(self) -> None:
        """Wait for the last flag all-reduce, so no collective is left in flight after the loop."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None


def make_accelerator(cfg: RunConfig) -> Accelerator:
    # cpu=True without CUDA makes torchrun/srun/`accelerate launch` ranks form a gloo group.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision, kwargs_handlers=[
        # Buffers (router bias, load counters) are kept equal by all-reduce; broadcasting rank 0's
        # copy every forward would overwrite each rank's load counts.
        DistributedDataParallelKwargs(broadcast_buffers=False)])
    if cfg.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise UserError("mixed_precision=fp16: needs a GPU; use bf16 or no on CPU")
    return accelerator


def build_training(cfg: RunConfig, task, data, accelerator, scheduler_mode: str = "min"):
    """(model, optimizer, scheduler, parameter counts) as a run trains them: compiled when
    cfg.compile, autocast per cfg.mixed_precision and wrapped for DDP by `accelerator.prepare`."""
    model = task.build_model(cfg, data)
    params = task.describe_model(model)
    if cfg.compile:
        # In place (nn.Module.compile), not torch.compile(model): the module keeps its class and its
        # state_dict keys, so checkpoints, unwrap_model and `blueberry evaluate` are unchanged.
        model.compile()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, mode=scheduler_mode)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, scheduler, params


def optimizer_step(cfg: RunConfig, task, accelerator, model, optimizer, scheduler, batches,
                   parts_sum: dict[str, torch.Tensor]):
    """One optimizer step of grad_accum micro-batches; adds each loss part's step mean to
    parts_sum. Reads nothing back to the host: the gradient norm returned is a device tensor."""
    model.train()
    for micro in range(cfg.grad_accum):
        batch = next(batches)
        # Only the last micro-batch all-reduces gradients.
        sync = micro == cfg.grad_accum - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            loss, parts = task.train_loss(model, batch, cfg)
            accelerator.backward(loss / cfg.grad_accum)
        for name, value in parts.items():
            parts_sum[name] = parts_sum.get(name, 0) + value.detach().float() / cfg.grad_accum
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    task.after_optimizer_step(model, cfg, accelerator)
    return grad_norm


def train(cfg: RunConfig, task, resume_ckpt: Path | None = None) -> tuple[Path, int]:
    """Train `task` under `cfg`; returns (run dir, exit code)."""
    accelerator = make_accelerator(cfg)
    set_seed(cfg.seed)
    # Data first: bad input (a missing or malformed file) stops the run before any run dir exists.
    data = task.build_data(cfg, accelerator)
    cfg = budget_in_steps(cfg, data)
    run_dir = _open_run_dir(cfg, resume_ckpt, accelerator)   # its config.yaml has epochs turned into steps
    if cfg.warmup_steps >= cfg.max_steps and accelerator.is_main_process:
        notice(f"warmup_steps={cfg.warmup_steps} >= max_steps={cfg.max_steps}: the LR never reaches its peak")
    best = BestMetric.of(cfg, task)
    model, optimizer, scheduler, params = build_training(cfg, task, data, accelerator, best.mode)
    state = TrainerState()
    # The scheduler is registered, not prepared: Accelerate's wrapper would step it once per process.
    accelerator.register_for_checkpointing(scheduler, state)
    if resume_ckpt is not None:
        accelerator.load_state(str(resume_ckpt))
        if accelerator.is_main_process:
            rundir.truncate_metrics(run_dir, state.step)
    else:
        set_seed(cfg.seed, device_specific=True)   # different dropout per rank, same init

    tracker = Tracker(run_dir, enabled=accelerator.is_main_process)
    loop = _Loop(cfg, task, accelerator, model, optimizer, scheduler, data, state, tracker, run_dir, params, best)
    return run_dir, loop.run(resumed=resume_ckpt is not None)


def budget_in_steps(cfg: RunConfig, data) -> RunConfig:
    """Epoch-denominated fields (epochs, warmup_epochs, eval_every=0) in optimizer steps, once the
    size of the train split is known. The result is what trains and what config.yaml records."""
    epochs_per_step = data.epochs_at(cfg.grad_accum)   # one step = grad_accum global micro-batches
    changes = {}
    if cfg.epochs > 0:
        changes["max_steps"] = max(1, math.ceil(cfg.epochs / epochs_per_step))
    if cfg.warmup_epochs > 0:
        changes["warmup_steps"] = max(1, round(cfg.warmup_epochs / epochs_per_step))
    if cfg.eval_every == 0:
        changes["eval_every"] = max(1, round(1 / epochs_per_step))
    cfg = dataclasses.replace(cfg, **changes) if changes else cfg
    cfg.check_stop_at_step()
    return cfg


@dataclass(frozen=True)
class BestMetric:
    """The metric that picks the best checkpoint, stops early and drives a plateau schedule."""

    name: str
    mode: str   # "min" | "max"

    @classmethod
    def of(cls, cfg: RunConfig, task) -> BestMetric:
        name = cfg.best_metric or task.best_metric
        mode = cfg.best_mode
        if mode == "auto":
            mode = "min" if name.endswith(("loss", "perplexity", "error")) else "max"
        return cls(name, mode)

    def improves(self, value: float, best: float | None, min_delta: float) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value < best - min_delta if self.mode == "min" else value > best + min_delta


def _open_run_dir(cfg: RunConfig, resume_ckpt: Path | None, accelerator) -> Path:
    """The main process creates (or reopens) the run dir and tells the other ranks."""
    holder = [None]
    if accelerator.is_main_process:
        run_dir = resume_ckpt.parent.parent if resume_ckpt is not None else rundir.create_run_dir(cfg.out_dir, cfg.name)
        rundir.write_atomic(run_dir / rundir.CONFIG, dump_yaml(cfg))
        holder[0] = str(run_dir)
    if accelerator.num_processes > 1:
        broadcast_object_list(holder)
    return Path(holder[0])


class _Loop:
    def __init__(self, cfg, task, accelerator, model, optimizer, scheduler, data, state, tracker, run_dir, params,
                 best):
        self.cfg, self.task, self.acc, self.best = cfg, task, accelerator, best
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.data, self.state, self.tracker, self.run_dir = data, state, tracker, run_dir
        self.params = params
        self.items_per_step = data.items_per_batch * cfg.grad_accum * accelerator.num_processes
        self.stop_step = cfg.stop_at_step or cfg.max_steps
        self.last_eval: dict[str, float] = {}
        self.last_train: dict[str, float] = {}
        self.status = "running"
        self.preempt = PreemptSignal()
        self.wall_base, self.t0 = state.wall_time, time.time()
        self.wandb_mode = "disabled"

    # --- the loop ---------------------------------------------------------------------------
    def run(self, resumed: bool) -> int:
        cfg, acc, state = self.cfg, self.acc, self.state
        self.preempt.install()
        self._start_tracking(resumed)
        exit_code = 0
        bar = tqdm(total=cfg.max_steps, initial=state.step, desc=self.run_dir.name, unit="step",
                   disable=not acc.is_main_process, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
        try:
            batches = self.data.train_batches(state.micro_batches)
            if state.step == 0:
                self._evaluate()
            window_t, window_items, window_steps = time.time(), 0, 0
            parts_sum: dict[str, torch.Tensor] = {}
            while state.step < self.stop_step:
                lr_used = self._current_lrs()
                grad_norm = self._optimizer_step(batches, parts_sum)
                state.step += 1
                state.micro_batches += cfg.grad_accum   # global: each spans every rank
                state.items_seen += self.items_per_step
                window_items += self.items_per_step
                window_steps += 1
                bar.update(1)

                if state.step % cfg.log_every == 0 or state.step == self.stop_step:
                    elapsed = max(time.time() - window_t, 1e-9)
                    self._log_train(parts_sum, window_steps, lr_used, grad_norm, window_items / elapsed, bar)
                    window_t, window_items, window_steps, parts_sum = time.time(), 0, 0, {}
                stop_early = False
                if state.step % cfg.eval_every == 0 or state.step == self.stop_step:
                    stop_early = self._evaluate()
                    window_t = time.time()   # throughput excludes evaluation
                if cfg.save_every and state.step % cfg.save_every == 0 and state.step != self.stop_step:
                    self._save()
                if stop_early:
                    self.status = "early_stopped"
                    break
                if self.preempt.any_rank(acc):
                    self.status = "preempted"
                    exit_code = EXIT_PREEMPTED
                    break
            else:
                self.status = "finished" if state.step >= cfg.max_steps else "stopped"
            self.preempt.settle()
            self._save()
        except BaseException as e:
            self.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            self._write_summary()
            self.tracker.finish(exit_code=1)
            raise
        finally:
            bar.close()
            self.preempt.uninstall()
        self._write_summary()
        self.tracker.finish(exit_code=0 if exit_code == 0 else exit_code)
        if acc.is_main_process:
            notice(f"{self.status} at step {state.step}: {self.run_dir}")
        acc.end_training()
        return exit_code

    def _optimizer_step(self, batches, parts_sum: dict[str, torch.Tensor]):
        return optimizer_step(self.cfg, self.task, self.acc, self.model, self.optimizer, self.scheduler,
                              batches, parts_sum)

    def _current_lrs(self) -> dict[str, float]:
        """The LR each group applies in the step about to run, named as the config names it."""
        lrs = {}
        for group in self.optimizer.param_groups:
            key = "muon_lr" if group.get("name") == "muon" else "lr"
            lrs.setdefault(key, group["lr"])
        return lrs

    # --- logging -------------------------------------------------------------------------------
    def _log_train(self, parts_sum, n_steps, lr_used, grad_norm, rate, bar) -> None:
        """Mean of each loss part over the steps since the last log; LR of the step just taken."""
        acc, state, unit = self.acc, self.state, self.data.unit
        logged = {f"train/{n}": parts_sum[n] / n_steps for n in sorted(parts_sum)}
        if grad_norm is not None:   # the same on every rank, so the mean leaves it as it is
            logged["train/grad_norm"] = torch.as_tensor(grad_norm, dtype=torch.float32, device=acc.device)
        values = []
        if logged:
            stacked = torch.stack([v.float() for v in logged.values()])
            stacked = acc.reduce(stacked, "mean") if acc.num_processes > 1 else stacked
            values = stacked.tolist()   # the one host sync of a logging step
        row = dict(zip(logged, values))
        row.update(lr_used)
        row[f"train/{unit}_per_s"] = rate
        row[f"{unit}_seen"] = state.items_seen
        row["epochs"] = self.data.epochs_at(state.micro_batches)
        row["time"] = self._wall_time()
        self.last_train = row
        self.tracker.log(state.step, row)
        if "train/loss" in row:
            bar.set_postfix(loss=f"{row['train/loss']:.3f}", refresh=False)

    def _evaluate(self) -> bool:
        """Evaluate, track the best, checkpoint a new best; True when early stopping should stop."""
        cfg, state, best = self.cfg, self.state, self.best
        metrics, figures = self.task.evaluate(self.model, self.data, cfg, self.acc, in_training=True)
        if best.name not in metrics:
            raise UserError(f"best_metric={best.name!r}: not among the evaluation metrics "
                            f"({', '.join(sorted(k for k in metrics if '/' in k and 'layer' not in k))})")
        value = metrics[best.name]
        better = best.improves(value, state.best_value, cfg.early_stop_min_delta)
        if better:
            state.best_value, state.best_step, state.evals_since_best = value, state.step, 0
        elif state.step > 0:
            state.evals_since_best += 1
        if hasattr(self.scheduler, "observe") and state.step > 0:
            self.scheduler.observe(value)
        metrics[f"{best.name}_best"] = state.best_value
        self.last_eval = metrics
        images = save_figures(self.run_dir, figures) if figures and self.acc.is_main_process else {}
        self.tracker.log(state.step, {**metrics, "time": self._wall_time()}, images)
        if self.acc.is_main_process:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("val/"))
            tqdm.write(f"step {state.step}: {shown}", file=sys.stderr)
        if better and cfg.save_best and state.step > 0:
            self._save(best=True)
        self._write_summary()
        return bool(cfg.early_stop_patience) and state.evals_since_best >= cfg.early_stop_patience

    def _save(self, best: bool = False) -> None:
        self.state.wall_time = self._wall_time()
        checkpoint.save(self.acc, self.run_dir, self.state.step, keep_last=self.cfg.keep_last, best=best)

    def _wall_time(self) -> float:
        """Seconds of this run over all its processes' lifetimes (resumes add up)."""
        return self.wall_base + (time.time() - self.t0)

    # --- tracking ------------------------------------------------------------------------------
    def _start_tracking(self, resumed: bool) -> None:
        cfg, state = self.cfg, self.state
        mode = choose_mode(cfg.wandb_mode) if self.acc.is_main_process else "disabled"
        self.tracker.start(cfg.to_dict(), mode=mode, project=cfg.wandb_project, entity=cfg.wandb_entity,
                           group=cfg.wandb_group, tags=cfg.tags, run_id=state.wandb_id if resumed else None)
        if self.acc.is_main_process:
            state.wandb_id = self.tracker.wandb_id or state.wandb_id
            self.wandb_mode = self.tracker.mode
            notice(f"run dir {self.run_dir}; params total {self.params['total']:,}"
                   + (f", active {self.params['active']:,}" if self.params.get("active") != self.params["total"] else "")
                   + f"; W&B {self.wandb_mode}" + (f" ({self.tracker.wandb_run.url})" if self.wandb_mode == "online" else ""))
            self.tracker.summary({f"params/{k}": v for k, v in self.params.items()}
                                 | {f"data/{k}": v for k, v in self.data.stats.items()})
            self._write_summary()

    def _write_summary(self) -> None:
        if not self.acc.is_main_process:
            return
        cfg, state, best = self.cfg, self.state, self.best
        summary: dict[str, Any] = {
            "status": self.status, "task": cfg.task, "name": cfg.name, "step": state.step,
            "max_steps": cfg.max_steps, "best": {"metric": best.name, "mode": best.mode,
                                                  "value": state.best_value, "step": state.best_step},
            "final": {**self.last_train, **self.last_eval}, "wall_time_s": self._wall_time(),
            "params": self.params, "data": self.data.stats, "unit": self.data.unit,
            f"{self.data.unit}_seen": state.items_seen,
            "epochs": self.data.epochs_at(state.micro_batches),
            "wandb": {"id": state.wandb_id, "mode": self.wandb_mode, "dir": self.tracker.wandb_dir},
        }
        rundir.write_summary(self.run_dir, summary)
        self.tracker.summary({f"{best.name}_best": state.best_value, "best_step": state.best_step,
                              "status": self.status})

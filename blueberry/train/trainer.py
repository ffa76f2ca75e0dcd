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
from blueberry.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_PREEMPTED, RunFailed, UserError, first_line
from blueberry.optim.build import build_optimizer
from blueberry.optim.schedules import build_scheduler
from blueberry.train import parallel, sharding
from blueberry.train.checkpoint import TrainerState, best_checkpoint
from blueberry.train.checkpoint.formats import read_trainer_state
from blueberry.train.checkpoint.manager import Checkpointer
from blueberry.train.figures import save_figures
from blueberry.train.progress import progress
from blueberry.train.stopping import stop_or_preempt, sweep_asked_to_stop
from blueberry.train.tracking import Tracker, choose_mode, choose_run_id, notice



class PreemptSignal:
    """Turns SIGUSR1 / SIGTERM / SIGINT into a flag the loop checks after each optimizer step; a second
    Ctrl-C interrupts at once. Once every rank agreed to stop, `outcome` says how the run ends."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self.stop_requested = False   # the signal is a sweep's stop (finish as stopped), not a preemption
        self._previous: dict = {}
        self._pending = None    # (work, flag) of the all-reduce started at the previous step
        self._group = None

    def install(self) -> None:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            # Once stopping, a repeated SIGTERM (torchrun passes one on when another rank exits first)
            # must not cut the summary and W&B's finish short; SIGKILL still ends the process.
            stopping = self.received is not None and sig != signal.SIGINT
            signal.signal(sig, signal.SIG_IGN if stopping else handler)

    def _handle(self, signum, _frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            notice("Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again to abort at once)")
        self.received = signum
        if signum != signal.SIGINT:
            self.stop_requested = self.stop_requested or sweep_asked_to_stop()

    def request_stop(self) -> None:
        """W&B asked this run to stop (a sweep's early termination or the UI's Stop button)."""
        self.stop_requested = True
        self.received = self.received or signal.SIGTERM

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
        # 2 = a sweep's stop, 1 = any other signal: MAX makes every rank agree on the stop
        flag = torch.tensor([2.0 if self.stop_requested else 1.0 if self.received is not None else 0.0])
        previous = self._pending
        self._pending = (dist.all_reduce(flag, dist.ReduceOp.MAX, group=self._group, async_op=True), flag)
        if previous is None:
            return False
        work, flag = previous
        work.wait()
        self.stop_requested = flag.item() >= 2
        return bool(flag.item())

    def outcome(self, accelerator, told_to_stop) -> str:
        """"interrupted" (Ctrl-C), "stopped" (a sweep's or W&B's stop: exit 0) or "preempted" (exit 75, W&B
        told to re-queue it), decided on the main process by stopping.stop_or_preempt (only it can ask W&B,
        `told_to_stop`) and the same on every rank."""
        decided = [None]
        if accelerator.is_main_process:
            decided[0] = ("interrupted" if self.received == signal.SIGINT else
                          stop_or_preempt(self.received, self.stop_requested, told_to_stop))
        if accelerator.num_processes > 1:
            broadcast_object_list(decided)
        return decided[0]

    def settle(self) -> None:
        """Wait for the last flag all-reduce, so no collective is left in flight after the loop."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None


def make_accelerator(cfg: RunConfig) -> Accelerator:
    # cpu=True without CUDA makes torchrun/srun/`accelerate launch` ranks form a gloo group.
    # An FSDP launch config (launch/fsdp-*.yaml) shards with FSDP2 instead of DDP (train/sharding.py).
    plugin = sharding.fsdp_plugin(cfg.mixed_precision)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision,
                              fsdp_plugin=plugin, kwargs_handlers=[
        # Buffers (router bias, load counters) are kept equal by all-reduce; broadcasting rank 0's
        # copy every forward would overwrite each rank's load counts.
        DistributedDataParallelKwargs(broadcast_buffers=False)])
    sharding.use_fsdp_on_cpu(accelerator, plugin)
    if cfg.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise UserError("mixed_precision=fp16: needs a GPU; use bf16 or no on CPU")
    return accelerator


def build_training(cfg: RunConfig, task, data, accelerator, scheduler_mode: str = "min"):
    """(model, optimizer, scheduler, parameter counts) as a run trains them: compiled when
    cfg.compile, autocast per cfg.mixed_precision and wrapped for DDP by `accelerator.prepare`."""
    model = task.build_model(cfg, data)
    params = task.describe_model(model)
    parallel.apply_expert_parallel(model, cfg, accelerator)   # expert_parallel > 1: this rank's experts only
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
    parts_sum. Returns (gradient norm, items): the norm is a device tensor (nothing is read back to
    the host); items counts the targets (tokens or samples) the micro-batches held on this process."""
    model.train()
    items = 0
    for micro in range(cfg.grad_accum):
        batch = next(batches)
        items += batch[-1].numel()   # a shape, not a host sync
        # Only the last micro-batch all-reduces gradients.
        sync = micro == cfg.grad_accum - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            loss, parts = task.train_loss(model, batch, cfg)
            accelerator.backward(loss / cfg.grad_accum)
        for name, value in parts.items():
            parts_sum[name] = parts_sum.get(name, 0) + value.detach().float() / cfg.grad_accum
    ep = parallel.of(model)
    if ep is not None:   # expert parallel: the experts' gradients are reduced here, not by DDP / FSDP2
        ep.reduce_expert_gradients()
    clip = accelerator.clip_grad_norm_ if ep is None else ep.clip_grad_norm_
    grad_norm = clip(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
    grad_norm = sharding.full_tensor(grad_norm)   # under FSDP2 a DTensor over the shards
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    task.after_optimizer_step(model, cfg, accelerator)
    return grad_norm, items


def train(cfg: RunConfig, task, resume_ckpt: Path | None = None,
          allowed_changes: dict[str, list] | None = None) -> tuple[Path, int]:
    """Train `task` under `cfg`; returns (run dir, exit code). `allowed_changes` (field -> [old, new])
    are the run-defining fields a resume was explicitly allowed to change; summary.json records them."""
    accelerator = make_accelerator(cfg)
    parallel.check_degree(cfg, accelerator.num_processes)   # a training layout: evaluate reads any run unsharded
    set_seed(cfg.seed)
    locks: list[rundir.RunLock] = []   # the main process holds its run dir's lock while it trains
    if resume_ckpt is not None and accelerator.is_main_process:
        # before any data work: a second process on this run stops at once
        locks.append(rundir.RunLock(resume_ckpt.parent.parent).acquire())
    try:
        return _train(cfg, task, accelerator, resume_ckpt, locks, allowed_changes or {})
    finally:
        for lock in locks:
            lock.release()


def _train(cfg: RunConfig, task, accelerator, resume_ckpt: Path | None, locks: list, allowed_changes: dict):
    # Data first: bad input (a missing or malformed file) stops the run before any run dir exists.
    data = _build_data(cfg, task, accelerator)
    cfg = budget_in_steps(cfg, data)
    run_dir = _open_run_dir(cfg, resume_ckpt, accelerator)   # a resumed run's config.yaml is untouched yet
    if resume_ckpt is None and accelerator.is_main_process:
        locks.append(rundir.RunLock(run_dir).acquire())
    if cfg.warmup_steps >= cfg.max_steps and accelerator.is_main_process:
        notice(f"warmup_steps={cfg.warmup_steps} >= max_steps={cfg.max_steps}: the LR never reaches its peak")
    best = BestMetric.of(cfg, task)
    model, optimizer, scheduler, params = build_training(cfg, task, data, accelerator, best.mode)
    state = TrainerState()
    # The scheduler is registered, not prepared: Accelerate's wrapper would step it once per process.
    accelerator.register_for_checkpointing(scheduler, state)
    tracker = Tracker(run_dir, enabled=accelerator.is_main_process)
    checkpoints = Checkpointer(accelerator, run_dir, state, keep_last=cfg.keep_last, async_save=cfg.async_save,
                               on_saved=tracker.checkpoint_saved)
    try:
        if resume_ckpt is not None:
            # The fingerprint before the weights: a corpus whose new vocabulary changed the embedding's
            # size is a changed corpus, not a model that does not fit.
            _load_checkpoint(checkpoints, resume_ckpt, data.fingerprint, allowed_changes, type(cfg))
            # Only now, with the state loaded and checked, does the run record change.
            if accelerator.is_main_process:
                rundir.write_atomic(run_dir / rundir.CONFIG, dump_yaml(cfg))
                rundir.truncate_metrics(run_dir, state.step)
        else:
            set_seed(cfg.seed, device_specific=True)   # different dropout per rank, same init
        state.fingerprint = dict(data.fingerprint)
        loop = _Loop(cfg, task, accelerator, model, optimizer, scheduler, data, state, tracker, run_dir, params,
                     best, checkpoints)
        loop.allowed_changes = allowed_changes
        return run_dir, loop.run(resumed=resume_ckpt is not None)
    finally:
        checkpoints.close_quietly()


def _build_data(cfg: RunConfig, task, accelerator):
    """task.build_data, with an unwritable cache folder named in one line."""
    from blueberry.data.sources import cache_root

    try:
        return task.build_data(cfg, accelerator)
    except OSError as e:
        root = cache_root(cfg)
        if e.filename and Path(e.filename).resolve().is_relative_to(root):
            raise UserError(f"cache_dir={cfg.cache_dir or root}: cannot write there ({e.strerror}); set "
                            "--cache_dir or $BLUEBERRY_CACHE to a writable folder") from None
        raise


def _load_checkpoint(checkpoints: Checkpointer, ckpt: Path, fingerprint: dict, allowed_changes: dict,
                     cfg_cls: type[RunConfig]) -> None:
    """Check the checkpoint's data fingerprints, then load the full state; or one line naming the
    checkpoint and what does not fit."""
    try:
        saved = read_trainer_state(ckpt)
        _check_fingerprint(saved.get("fingerprint") or {}, fingerprint, ckpt, allowed_changes, cfg_cls)
        checkpoints.load(ckpt)   # any layout, any number of processes
    except UserError:
        raise
    except Exception as e:   # a damaged file (caught earlier when it has a manifest) or another model
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        mismatch = [line for line in lines if line.startswith(("size mismatch", "Missing key", "Unexpected key"))]
        if mismatch:
            raise UserError(f"checkpoint {ckpt}: its model does not fit this config ({mismatch[0][:200]})") from None
        raise UserError(f"checkpoint {ckpt}: cannot be loaded ({first_line(e)})") from None


_FINGERPRINT_MEANS = {
    "corpus": "the documents (or images) read are not the same",
    "split": "other documents are held out for validation",
    "tokenizer": "the tokenizer's vocabulary differs (a bpe:N tokenizer is trained on the train split, so it "
                 "changes with the corpus or the split)",
}


def _check_fingerprint(saved: dict, current: dict, ckpt: Path, allowed_changes: dict,
                       cfg_cls: type[RunConfig]) -> None:
    """The corpus, split and tokenizer must be the ones the checkpoint trained on, unless a field that
    changes them was allowed to change (a changed corpus also changes the split); old checkpoints
    carry fewer fingerprints, and only those are compared."""
    groups = cfg_cls.fingerprint_fields
    differing = [k for k in saved if k in current and saved[k] != current[k]]
    if "corpus" in differing and "split" in differing:
        differing.remove("split")   # other documents are necessarily held out differently
    excused = {k for k in differing if set(allowed_changes) & set(groups.get(k, (k,)))}
    refused = [k for k in differing if k not in excused]
    if refused:
        fields = list(allowed_changes) + [groups.get(k, (k,))[0] for k in refused
                                          if groups.get(k, (k,))[0] not in allowed_changes]
        raise UserError(f"checkpoint {ckpt}: the {_and(refused)} from what it trained on: "
                        + "; ".join(_FINGERPRINT_MEANS.get(k, k) for k in refused)
                        + f" (fingerprint {', '.join(f'{k} {saved[k]} -> {current[k]}' for k in refused)}); pass "
                        f"--allow-changed {','.join(dict.fromkeys(fields))} to continue on purpose")
    if differing:
        notice(f"the {_and(differing)} from what {ckpt.name} trained on (allowed)")


def _and(names: list[str]) -> str:
    return " and ".join(names) + (" differs" if len(names) == 1 else " differ")


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
        if resume_ckpt is not None:
            run_dir = resume_ckpt.parent.parent   # config.yaml is rewritten once the checkpoint has loaded
        else:
            run_dir = rundir.create_run_dir(cfg.out_dir, cfg.name)
            rundir.write_atomic(run_dir / rundir.CONFIG, dump_yaml(cfg))
        holder[0] = str(run_dir)
    if accelerator.num_processes > 1:
        broadcast_object_list(holder)
    return Path(holder[0])


class Diverged(Exception):
    """A non-finite training loss, gradient norm, validation loss or weight: the run stops here."""

    def __init__(self, step: int, what: str):
        super().__init__(f"{what} at step {step}")
        self.step = step


class _Loop:
    def __init__(self, cfg, task, accelerator, model, optimizer, scheduler, data, state, tracker, run_dir, params,
                 best, checkpoints: Checkpointer):
        self.cfg, self.task, self.acc, self.best = cfg, task, accelerator, best
        self.checkpoints = checkpoints
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.data, self.state, self.tracker, self.run_dir = data, state, tracker, run_dir
        self.params = params
        self.stop_step = cfg.stop_at_step or cfg.max_steps
        self.last_eval: dict[str, float] = {}
        self.last_train: dict[str, float] = {}
        self.status = "running"
        self.reason: str | None = None   # why a run diverged or failed, for summary.json
        self.allowed_changes: dict[str, list] = {}   # run-defining fields this resume may change
        self.change_log: list[dict] = []             # every such change over the run's resumes
        self.preempt = PreemptSignal()
        self.wall_base, self.t0 = state.wall_time, time.time()

    # --- the loop ---------------------------------------------------------------------------
    def run(self, resumed: bool) -> int:
        cfg, acc, state = self.cfg, self.acc, self.state
        self.preempt.install()
        if resumed and acc.is_main_process:
            with contextlib.suppress(ValueError, OSError):
                self.change_log = list(rundir.read_summary(self.run_dir).get("allowed_changes") or [])
        if self.allowed_changes:
            self.change_log.append({"step": state.step, "fields": self.allowed_changes})
        self._start_tracking(resumed)
        exit_code = 0
        bar = progress(cfg.max_steps, state.step, self.run_dir.name, enabled=acc.is_main_process)
        try:
            batches = self.data.train_batches(state.micro_batches)
            if state.step == 0:
                self._evaluate()
            window_t, window_items, window_steps = time.time(), 0, 0
            parts_sum: dict[str, torch.Tensor] = {}
            while state.step < self.stop_step:
                lr_used = self._current_lrs()
                grad_norm, items = self._optimizer_step(batches, parts_sum)
                items *= acc.num_processes   # the sampler deals every rank equal micro-batches
                state.step += 1
                state.micro_batches += cfg.grad_accum   # global: each spans every rank
                state.items_seen += items
                window_items += items
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
                    self.status = self.preempt.outcome(acc, self.tracker.told_to_stop)
                    exit_code = {"interrupted": EXIT_INTERRUPTED, "preempted": EXIT_PREEMPTED}.get(self.status, 0)
                    if self.status == "preempted":
                        self.tracker.mark_preempting()   # W&B's sweep re-queues the trial; it resumes
                    break
            else:
                self.status = "finished" if state.step >= cfg.max_steps else "stopped"
            self.preempt.settle()
            self._save()
            self.checkpoints.close()   # an asynchronous last save completes before the run says it ended
        except Diverged as e:
            self.preempt.settle()
            self.status, self.reason, exit_code = "diverged", str(e), EXIT_DIVERGED
            self.checkpoints.close_quietly()   # the last finite state's save completes
        except BaseException as e:
            self.checkpoints.close_quietly()
            self.status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            if isinstance(e, OSError):   # e.g. disk full writing metrics.jsonl: one line, not a traceback
                e = RunFailed(f"{e.filename or self.run_dir}: {e.strerror or e}; the run stopped at step "
                              f"{state.step}, its checkpoints are intact")
            self.reason = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            self._close_record(exit_code=1)
            if isinstance(e, RunFailed):
                raise e from None
            raise
        finally:
            bar.close()
            self.preempt.uninstall()
        self._close_record(exit_code)
        if acc.is_main_process:
            notice(self._outcome())
        acc.end_training()
        return exit_code

    def _outcome(self) -> str:
        """The last line a run prints: how it ended and what to do next."""
        state, run_dir = self.state, self.run_dir
        resume = f"blueberry train {self.cfg.task} --resume {run_dir}"
        if self.status == "diverged":
            best = best_checkpoint(run_dir)
            kept = (f"best checkpoint {best.name} ({self.best.name} {self.state.best_value:.4g}): "
                    f"blueberry evaluate {run_dir}") if best else "no checkpoint was kept"
            return f"diverged: {self.reason}; nothing non-finite was saved; {kept}; try a lower lr: {run_dir}"
        if self.status == "interrupted":
            return f"interrupted at step {state.step}, checkpoint saved; resume with: {resume}"
        return f"{self.status} at step {state.step}: {run_dir}"

    def _close_record(self, exit_code: int) -> None:
        """summary.json with the true status, and the W&B run closed; neither may hide the first error."""
        try:
            self._write_summary()
        except OSError as e:
            if self.acc.is_main_process:
                notice(f"could not update {self.run_dir / rundir.SUMMARY}: {e.strerror or e}")
        try:
            self.tracker.finish(exit_code=exit_code)
        except Exception as e:   # W&B's own files on a full disk
            if self.acc.is_main_process:
                notice(f"W&B run not closed cleanly ({type(e).__name__}); metrics.jsonl is complete")

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
        diverged = [k for k, v in row.items() if not math.isfinite(v)]   # no extra sync: values are on the host
        row.update(lr_used)
        row[f"train/{unit}_per_s"] = rate
        row[f"{unit}_seen"] = state.items_seen
        row["epochs"] = self.data.epochs_at(state.micro_batches)
        row["time"] = self._wall_time()
        self.last_train = row
        self.tracker.log(state.step, row)
        if diverged:
            raise Diverged(state.step, f"{diverged[0]} is {row[diverged[0]]} (lr {row.get('lr', 0):.3g})")
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
        bad = [k for k, v in metrics.items() if k.endswith("loss") and isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise Diverged(state.step, f"{bad[0]} is {metrics[bad[0]]}")
        if better and cfg.save_best:   # step 0 too: a run that diverges early still leaves a usable best
            self._save(best=True)
        self._write_summary()
        return bool(cfg.early_stop_patience) and state.evals_since_best >= cfg.early_stop_patience

    def _save(self, best: bool = False) -> None:
        if not self._weights_finite():   # a non-finite state is never saved, so it never rotates out a good one
            raise Diverged(self.state.step, "a weight is not finite")
        self.state.wall_time = self._wall_time()
        self.checkpoints.save(self.state.step, best=best)

    def _weights_finite(self) -> bool:
        """One host read per checkpoint (not per step); every rank gets the same answer."""
        finite = torch.stack([torch.isfinite(getattr(p, "to_local", lambda p=p: p)().detach()).all()
                              for p in self.model.parameters()]).all().float()
        if self.acc.num_processes > 1:
            finite = self.acc.reduce(finite.to(self.acc.device), "mean")
        return bool(finite.item() == 1.0)

    def _wall_time(self) -> float:
        """Seconds of this run over all its processes' lifetimes (resumes add up)."""
        return self.wall_base + (time.time() - self.t0)

    # --- tracking ------------------------------------------------------------------------------
    def _start_tracking(self, resumed: bool) -> None:
        """metrics.jsonl now; W&B starts in the background (tracking.Tracker) and reports in _wandb_ready.
        The W&B run id is chosen first (tracking.choose_run_id), so every checkpoint carries it without
        waiting for W&B."""
        cfg, state = self.cfg, self.state
        mode = choose_mode(cfg.wandb_mode) if self.acc.is_main_process else "disabled"
        run_id, resume, continues = None, False, None
        if mode != "disabled":
            previous = rundir.read_summary(self.run_dir) if resumed else {}   # before this process rewrites it
            run_id, resume, continues = choose_run_id(state.wandb_id if resumed else None, state.step, previous)
            state.wandb_id = run_id
        self.tracker.start(cfg.to_dict(), mode=mode, project=cfg.wandb_project, entity=cfg.wandb_entity,
                           group=cfg.wandb_group, tags=cfg.tags, run_id=run_id, resume=resume, continues=continues,
                           system_metrics=cfg.wandb_system_metrics, console=cfg.wandb_console,
                           log_model=cfg.wandb_log_model, on_ready=self._wandb_ready,
                           on_stop=self.preempt.request_stop)
        if self.acc.is_main_process:
            notice(f"run dir {self.run_dir}; params total {self.params['total']:,}"
                   + (f", active {self.params['active']:,}" if self.params.get("active") != self.params["total"] else ""))
            self.tracker.summary({f"params/{k}": v for k, v in self.params.items()}
                                 | {f"data/{k}": v for k, v in self.data.stats.items()})
            self._write_summary()

    def _wandb_ready(self, tracker) -> None:
        """Called from W&B's init thread once it is up (or gave up). W&B keeps the id chosen up front; should
        it not (an id W&B assigns itself), later checkpoints carry W&B's."""
        self.state.wandb_id = tracker.wandb_id or self.state.wandb_id
        notice(f"W&B {tracker.mode}" + (f": {tracker.wandb_run.url}" if tracker.mode == "online" else ""))

    def _write_summary(self) -> None:
        if not self.acc.is_main_process:
            return
        if self.status != "running":
            self.tracker.wait_ready()   # the last summary names the W&B run, however late W&B started
        cfg, state, best = self.cfg, self.state, self.best
        summary: dict[str, Any] = {
            "status": self.status, "task": cfg.task, "name": cfg.name, "step": state.step,
            "max_steps": cfg.max_steps, "best": {"metric": best.name, "mode": best.mode,
                                                  "value": state.best_value, "step": state.best_step},
            "final": {**self.last_train, **self.last_eval}, "wall_time_s": self._wall_time(),
            "params": self.params, "data": self.data.stats, "unit": self.data.unit,
            f"{self.data.unit}_seen": state.items_seen,
            "epochs": self.data.epochs_at(state.micro_batches),
            "wandb": self.tracker.record(),
            "checkpoints": self.checkpoints.stats(),
        }
        if self.reason:
            summary["reason"] = self.reason
        if self.change_log:
            summary["allowed_changes"] = self.change_log
        rundir.write_summary(self.run_dir, summary)
        self.tracker.summary({f"{best.name}_best": state.best_value, "best_step": state.best_step,
                              "status": self.status})

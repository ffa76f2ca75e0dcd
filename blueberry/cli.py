"""The `blueberry` command. Thin: parse, then call the library. Heavy imports happen inside commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from blueberry.config import (TASK_CONFIGS, RunConfig, dump_yaml, field_map, load_preset,
                              parse_recipe, preset_names, preset_task, read_config_file, resolve)
from blueberry.errors import UserError


class Blueberry(click.Group):
    """Errors a user can cause end in one line on stderr and exit code 2, never a traceback."""

    def main(self, args=None, prog_name=None, **kwargs):
        try:
            code = super().main(args, prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.Abort as e:
            if isinstance(e.__context__, EOFError):   # click turns any EOFError into Abort
                raise e.__context__ from None
            click.echo("error: aborted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            if isinstance(e, click.NoSuchOption):
                _suggest_field(e)
            where = f"{e.ctx.command_path}: " if getattr(e, "ctx", None) else ""
            click.echo(f"error: {where}{' '.join(e.format_message().split())}", err=True)
            sys.exit(e.exit_code)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


def _suggest_field(e: click.NoSuchOption) -> None:
    """`--learning_rate`: suggest --lr (what users mean), not click's closest spelling (--leak_ngram)."""
    from blueberry.config import ALIASES

    alias = ALIASES.get(e.option_name.lstrip("-").replace("-", "_"))
    options = {o for p in (e.ctx.command.params if e.ctx else []) for o in p.opts}
    if alias and f"--{alias}" in options:
        e.possibilities = [f"--{alias}"]


@click.group(cls=Blueberry, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="blueberry")
def main():
    """Train MoE language models and STM scanline classifiers; sweep, submit to SLURM, report."""


@main.group()
def train():
    """Train a task: every config field is an option (--lr=3e-3 or --lr 3e-3)."""


def _click_type(cls: type[RunConfig], f):
    if f.name == "preset":
        return click.Choice([n for n in preset_names() if preset_task(n) == cls.task])
    if f.metadata.get("choices"):
        return click.Choice(f.metadata["choices"])
    return {"int": click.INT, "float": click.FLOAT, "bool": click.BOOL}.get(f.type, click.STRING)


def config_options(cls: type[RunConfig]):
    """One click option per config field, default None so explicit values are known; help shows
    the default preset's value."""
    defaults = {**{f.name: f.default for f in field_map(cls).values()}, **load_preset(cls.default_preset, cls),
                "preset": cls.default_preset}

    def decorate(fn):
        for f in reversed(list(field_map(cls).values())):
            shown = defaults[f.name]
            shown = str(shown).lower() if isinstance(shown, bool) else shown
            fn = click.option(f"--{f.name}", type=_click_type(cls, f), default=None,
                              help=f"{f.metadata['help']}  [default: {shown!s}]" if shown != "" else f.metadata["help"],
                              metavar="true|false" if f.type == "bool" else None)(fn)
        return fn
    return decorate


def _make_train_command(task: str, cls: type[RunConfig]):
    @train.command(name=task, help=cls.__doc__ + f"  Default preset: {cls.default_preset}.")
    @click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                  help="YAML file of field: value, applied over the preset and under the options.")
    @click.option("--recipe", default=None, metavar="MAPPING",
                  help="Field overrides as one mapping, e.g. \"{optimizer: muon, muon_lr: 0.01}\": a study's "
                       "named variant, as a sweep passes a dict-valued parameter. Applied over --config.")
    @click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
    @click.option("--allow-changed", "allow_changed", default=None, metavar="FIELD,...",
                  help="With --resume: let these fields that define the model, data, split or tokenizer differ "
                       "from the run's config.yaml (refused otherwise); recorded in summary.json.")
    @config_options(cls)
    def command(config_file, recipe, print_config, allow_changed, **options):
        cli_values = {k: v for k, v in options.items() if v is not None}
        from blueberry.train.resume import nothing_to_train, resolve_train_config

        cfg, resume_ckpt, changes = resolve_train_config(cls, cli_values, config_file,
                                                         parse_recipe(recipe) if recipe else None, allow_changed)
        if print_config:
            from blueberry.tasks.sizes import sizes_comment   # builds the model on the meta device

            click.echo(dump_yaml(cfg) + sizes_comment(cfg), nl=False)
            return 0
        if resume_ckpt is not None and (done := nothing_to_train(cfg, resume_ckpt)):
            from blueberry.console import notice

            notice(done)   # nothing is written: not the config, not the summary, no W&B part
            return 0
        return run_training(cfg, resume_ckpt, changes)
    return command


def run_training(cfg: RunConfig, resume_ckpt: Path | None, allowed_changes: dict | None = None) -> int:
    from blueberry.rundir import ensure_writable_dir
    from blueberry.train.progress import plain_every_s

    # Before any import or data work: a run that cannot be recorded must not start.
    plain_every_s()   # BLUEBERRY_PROGRESS_S, read by the progress display once training runs
    if resume_ckpt is None:
        ensure_writable_dir(cfg.out_dir, "out_dir", create=False)   # the run dir is made once the config holds
    else:
        ensure_writable_dir(resume_ckpt.parent.parent, "resume")
    if cfg.cache_dir:   # named by the user: refused here for every task, not found unwritable mid-run
        ensure_writable_dir(cfg.cache_dir, "cache_dir", "set --cache_dir or $BLUEBERRY_CACHE to a writable folder",
                            create=False)

    from blueberry.tasks import load_task
    from blueberry.train.launcher_watch import watch_launcher
    from blueberry.train.trainer import train as train_task

    watch_launcher()   # a rank whose launcher is killed stops like a preempted one, not as an orphan

    _, code = train_task(cfg, load_task(cfg.task), resume_ckpt, allowed_changes)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # torch's gloo teardown aborts at interpreter exit in ~1 of 4 two-rank runs after all work
        # is done (NOTES.md); leave without running it.
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


for _task, _cls in TASK_CONFIGS.items():
    _make_train_command(_task, _cls)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--split", default=None, help="Split to evaluate (scanline: val, test or train; lm: val). "
                                             "Default: test when the run has a test split, else val.")
@click.option("--checkpoint", "which", default="best", show_default=True,
              help="best, latest, or a checkpoint dir of the run.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Folder for eval-SPLIT.json, the figures (plots/) and the evaluation's W&B files (eval/wandb/). "
                   "Default: the run dir (for an Artifact reference, runs/artifacts/NAME).")
def evaluate(run_dir, split, which, out_dir):
    """Evaluate a run's checkpoint on one split; prints the metrics and writes RUN_DIR/eval-SPLIT.json.
    RUN_DIR may be a model Artifact reference (ENTITY/PROJECT/model-ID:ALIAS), downloaded first."""
    from rich.console import Console
    from rich.table import Table

    from blueberry.train.evaluate import evaluate_run

    metrics, path = evaluate_run(run_dir, split, which, out_dir)
    split = path.stem.removeprefix("eval-")
    table = Table(title=f"{Path(run_dir).name} — {split} ({which} checkpoint)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        if "/layer" not in name:   # per-expert loads are in the JSON; the table stays readable
            table.add_row(name, f"{value:.4f}")
    Console().print(table)
    click.echo(f"wrote {path}")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True), metavar="PATH...")
@click.option("--dry-run", is_flag=True, help="List the offline W&B runs that would be uploaded; needs no key.")
@click.option("--project", default=None, help="Upload every run to this W&B project instead of its own.")
@click.option("--entity", default=None, help="Upload every run to this W&B entity instead of its own.")
def sync(paths, dry_run, project, entity):
    """Upload every offline W&B run under run dirs and sweep dirs (each trial's runs and each evaluation's
    eval/wandb/, which a bare `wandb sync` does not find) with W&B's own sync. Runs W&B marked synced are
    skipped, so running it again uploads only what is new. Exits 1 when W&B left a run unsynced."""
    from blueberry.wandb_sync import sync as sync_runs

    return sync_runs(list(paths), dry_run=dry_run, project=project, entity=entity, echo=click.echo)


@main.command()
@click.option("--preset", default="lm-tiny", show_default=True, help="LM preset whose model to size.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file of field: value, applied over the preset.")
@click.option("--world-size", type=click.IntRange(min=1), default=8, show_default=True, help="Ranks to shard over.")
@click.option("--vocab-size", type=click.IntRange(min=1), default=None,
              help="Vocabulary size (default: the config's tokenizer, which must then be bpe:N or cached).")
@click.option("--expert-parallel", type=click.IntRange(min=1), default=None,
              help="Also estimate expert parallelism of this degree (default: the config's expert_parallel).")
def memory(preset, config_file, world_size, vocab_size, expert_parallel):
    """Estimate per-rank bytes of parameters, gradients and optimizer state under DDP, FSDP2 and expert parallelism."""
    from blueberry.config import LMConfig
    from blueberry.memory import estimate_table

    cfg = resolve(LMConfig, file_values=read_config_file(config_file) if config_file else {},
                  cli_values={"preset": preset}, source=config_file or "config")
    click.echo(estimate_table(cfg, world_size, vocab_size, expert_parallel))


@main.command(help="""Coordinate check of a parametrization: train a few steps at several widths and compare
each module's mean |activation| with its size at the base width. Exits 0 when every ratio after the
last step lies in [0.5, 2], else 1 naming the modules. Writes OUT/coords.json and OUT/coords.png.
The model, optimizer and parametrization fields are options (--param mup, --optimizer muon, --lr ...);
widths replace d_model, with d_ff and expert_d_ff kept in the config's ratio to it. Defaults over the
preset: n_layers 2, seq_len 32, batch_size 2. The LR is constant (no warmup or schedule).""")
@click.option("--widths", default=",".join(map(str, (16, 32, 64, 128))), show_default=True,
              help="Comma-separated d_model values to train.")
@click.option("--base-width", "base_width", type=int, default=32, show_default=True,
              help="The base width (one of --widths): ratios are taken to it, and it is the base of mup/completep.")
@click.option("--steps", type=int, default=5, show_default=True, help="Optimizer steps at each width.")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds per width (from --seed on), averaged.")
@click.option("--drop", "drop_rules", multiple=True, metavar="RULE",
              help="Leave one rule of the parametrization out (repeatable), to see what it holds in place: "
                   "init, lr, logits, muon, attention, residual, eps, weight_decay.")
@click.option("--out", "coords_dir", type=click.Path(file_okay=False), default="coords", show_default=True,
              help="Folder for coords.json and coords.png.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file of field: value, applied over the preset and the defaults above.")
@config_options(TASK_CONFIGS["lm"])
def coords(widths, base_width, steps, seeds, drop_rules, coords_dir, config_file, **options):
    from blueberry.models.param import RULES
    from blueberry.rundir import ensure_writable_dir
    from blueberry.transfer.coords import DEFAULTS, check_options, check_setup, parse_widths

    unknown = [r for r in drop_rules if r not in RULES]
    if unknown:
        raise UserError(f"--drop {unknown[0]}: not a rule; rules: {', '.join(RULES)}")
    cli_values = {k: v for k, v in options.items() if v is not None}
    check_options(list(cli_values))
    file_values = read_config_file(config_file) if config_file else {}
    cfg = resolve(TASK_CONFIGS["lm"], file_values={**DEFAULTS, **file_values}, cli_values=cli_values,
                  source=config_file or "config")
    width_list = parse_widths(widths)
    check_setup(cfg, width_list, base_width, steps, seeds)   # before any training
    ensure_writable_dir(coords_dir, "--out")

    from rich.console import Console

    from blueberry.transfer.coords import failure_line, ratio_table, run_check, write_outputs

    check = run_check(cfg, width_list, base_width, steps, seeds, frozenset(drop_rules))
    files = write_outputs(check, Path(coords_dir))
    Console().print(ratio_table(check))
    click.echo(f"wrote {files['json']} and {files['png']}")
    if not check.passed:
        click.echo(failure_line(check), err=True)
        return 1
    click.echo(f"coords: passed (param={check.param}): every module within 0.5-2 x its size at width {base_width}")
    return 0


@main.group()
def checkpoint():
    """Work with a run's checkpoints."""


@checkpoint.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--checkpoint", "which", default="latest", show_default=True,
              help="latest or best of the run dir PATH (ignored when PATH is a checkpoint dir).")
def consolidate(path, which):
    """Write a sharded checkpoint (FSDP2, or an async save) as one ordinary CHECKPOINT/model.safetensors."""
    from blueberry.train.checkpoint.pick import pick_path

    ckpt = pick_path(Path(path), which)   # before importing torch: a damaged checkpoint is one line at once
    from blueberry.train.checkpoint.formats import consolidate

    click.echo(f"wrote {consolidate(ckpt)}")


@main.group()
def sweep():
    """Run W&B sweep YAMLs: on W&B (create/agent) or without a server (local)."""


@sweep.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(files):
    """Check sweep YAMLs against W&B's sweep spec and the options of the command they run."""
    from blueberry.sweep.objective import objective_line
    from blueberry.sweep.spec import load_sweep, sweep_warnings, validate_sweep

    problems = []
    for path in files:
        config = load_sweep(path)
        found = validate_sweep(config, source=path)
        problems += found
        # warnings first, so that a refused file ends with its errors, as every refusal does
        for line in [f"warning: {w}" for w in sweep_warnings(config, source=path)] + [f"error: {e}" for e in found]:
            click.echo(line, err=True)
        if not found:
            objective = objective_line(config)
            click.echo(f"{path}: ok" + (f"; {objective}" if objective else ""))
    return 2 if problems else 0


@sweep.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--project", default=None, help="W&B project (default: the YAML's project, else blueberry, the trainer's).")
@click.option("--entity", default=None, help="W&B entity (default: the YAML's, else yours).")
def create(file, project, entity):
    """Register a sweep with W&B (needs the server); prints its id and the agent command."""
    from blueberry.sweep import cloud
    from blueberry.sweep.spec import load_valid_sweep

    full_id = cloud.create(load_valid_sweep(file), file, project=project, entity=entity)
    click.echo(f"sweep {full_id}")
    click.echo(f"run agents with:  blueberry sweep agent {full_id}   (or: wandb agent {full_id})")


@sweep.command()
@click.argument("sweep_id")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Trials this agent runs, then exits.")
@click.option("--max-consecutive-failures", "--max-consecutive-failed-runs", "max_consecutive_failures",
              type=click.IntRange(min=1), default=None, metavar="N",
              help="Stop the agent once N runs in a row failed (wandb agent --max-consecutive-failed-runs).")
def agent(sweep_id, count, max_consecutive_failures):
    """Run `wandb agent SWEEP_ID`, forwarding signals to the agent's and its trial's process group."""
    from blueberry.sweep import cloud

    return cloud.agent(sweep_id, count, max_consecutive_failures)


@sweep.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Trials run at once.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Trials this process starts at most.")
@click.option("--dir", "sweep_dir", type=click.Path(file_okay=False), default=None,
              help="Sweep dir (state, trials, runs). Default runs/sweeps/NAME; an existing one is resumed "
                   "or joined (several processes may share it).")
@click.option("--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Append --KEY=VALUE to every trial (repeatable; later wins), e.g. max_steps=20.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random/bayes proposals.")
@click.option("--report/--no-report", "write_report", default=True, show_default=True,
              help="When the sweep ends, write its report (HTML, CSV, JSON, figures) to SWEEP_DIR/report.")
@click.option("--launch-config", type=click.Path(dir_okay=False, exists=True), default=None, metavar="FILE",
              help="Accelerate config to use instead of the one the command names (accelerate launch --config_file), "
                   "e.g. launch/cpu-2proc.yaml to smoke-test a GPU sweep here.")
@click.option("--max-consecutive-failures", "--max-consecutive-failed-runs", "max_consecutive_failures",
              type=click.IntRange(min=1), default=None, metavar="N",
              help="Give up once N trials in a row failed (a bad node), as `wandb agent --max-consecutive-failed-runs`: "
                   "exit 1, running trials stopped (they resume), trials not started left for the next run. "
                   "Default: no limit; as the agent, a runner also gives up when nearly all of its first "
                   "WANDB_AGENT_MAX_INITIAL_FAILURES (5) trials failed, or 3 failed in its first minute "
                   "(WANDB_AGENT_DISABLE_FLAPPING=true turns that off).")
def local(file, workers, count, sweep_dir, overrides, seed, write_report, launch_config, max_consecutive_failures):
    """Run a sweep YAML here, no W&B server: trials as subprocesses started from this directory (as
    `wandb agent` starts them), state and run dirs in the sweep dir. Exits 1 when a trial failed."""
    from blueberry.rundir import ensure_writable_dir
    from blueberry.sweep.display import SweepDisplay
    from blueberry.sweep.local import LocalRunner, default_sweep_dir, sweep_name
    from blueberry.sweep.state import SweepDir

    overrides = list(overrides)
    config = checked_local_sweep(file, overrides, launch_config)
    path = Path(sweep_dir) if sweep_dir else default_sweep_dir(config, Path(file), overrides)
    ensure_writable_dir(path if path.exists() else path.parent, "--dir")   # before any trial starts
    state = SweepDir.open(path, config, name=sweep_name(config, Path(file)), overrides=overrides,
                          seed=seed, launch_config=launch_config)
    click.echo(f"sweep dir {path}", err=True)
    display = SweepDisplay(state.name, state.metric, state.goal, overrides)
    runner = LocalRunner(state, workers=workers, count=count, show=display,
                         max_consecutive_failures=max_consecutive_failures)
    code = runner.run()
    trials = state.trials()
    display.close(trials)
    failed = [t for t in trials if t.status == "failed"]
    if runner.gave_up:
        blamed = runner.failures.blamed
        click.echo(f"error: sweep stopped: {runner.gave_up}: "
                   + ", ".join(f"{path}/trials/{t}/output.log" for t in blamed[:5]) + (" ..." if len(blamed) > 5 else "")
                   + "; running trials were stopped and resume, trials not started are left: run the same command "
                     "to go on", err=True)
    elif failed:
        click.echo(f"error: {len(failed)} of {len(trials)} trials failed: "
                   + ", ".join(f"{t.id} (exit {t.exit_code})" for t in failed[:5]) + (" ..." if len(failed) > 5 else "")
                   + f"; their output: {path}/trials/TRIAL/output.log", err=True)
    diverged = [t.id for t in trials if t.status == "diverged"]
    if diverged:   # a finding of the study, not a failure of the sweep: the exit code stays 0
        click.echo(f"note: {len(diverged)} of {len(trials)} trials diverged (non-finite loss): {', '.join(diverged[:8])}"
                   + (" ..." if len(diverged) > 8 else ""), err=True)
    if write_report and code in (0, 1):   # an interrupted sweep is resumed, and reported, later
        report_sweep(state)
    return code


def checked_local_sweep(file: str, overrides: list[str], launch_config: str | None) -> dict:
    """The sweep `sweep local` runs, after everything it refuses before a sweep dir or trial exists: the
    YAML, the overrides, the launch config, WANDB_AGENT_KILL_DELAY and WANDB_AGENT_MAX_INITIAL_FAILURES.
    `slurm submit sweep` checks a job's arguments with it."""
    from blueberry.sweep.agent_env import check_agent_env
    from blueberry.sweep.local import with_launch_config
    from blueberry.sweep.spec import load_valid_sweep
    from blueberry.sweep.trial_options import check_overrides

    config = load_valid_sweep(file)
    check_overrides(config, overrides)
    if launch_config:
        from blueberry.sweep.command import sweep_command

        with_launch_config([str(c) for c in sweep_command(config)], launch_config)
    check_agent_env()
    return config


def report_sweep(state) -> None:
    """The sweep's report in SWEEP_DIR/report. It never changes the sweep's exit code: a failure is a
    one-line warning. While another runner still has trials running, that runner writes it."""
    import time

    now = time.time()
    live = [t for t in state.trials() if t.is_live(now)]
    if live:
        click.echo(f"report: {len(live)} trial(s) still running in another runner, which writes the report when "
                   f"it ends; a report of the trials so far: blueberry report {state.path}", err=True)
        return
    try:
        from blueberry.report.build import build_report, written_line

        result = build_report([state.path])
    except Exception as e:   # the sweep's results are safe on disk whatever happened here
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        why = why if isinstance(e, UserError) else f"{type(e).__name__}: {why}"
        click.echo(f"warning: sweep report not written ({why}); try: blueberry report {state.path}", err=True)
        return
    click.echo(written_line(result))


@main.group()
def slurm():
    """Submit the sbatch scripts in slurm/ (train, multinode, sweep agents) and follow the jobs."""


@slurm.command(context_settings={"ignore_unknown_options": True})
@click.argument("kind", type=click.Choice(["train", "multinode", "sweep"]))
@click.option("--nodes", type=click.IntRange(min=1), help="Nodes (multinode).")
@click.option("--gpus", type=click.IntRange(min=1), help="GPUs per node: requests --gres=gpu:N, one process each.")
@click.option("--procs", type=click.IntRange(min=1), help="Processes per node on CPU-only nodes (no GPU request).")
@click.option("--time", "time_limit", help="Time limit, e.g. 04:00:00.")
@click.option("--partition", help="Partition.")
@click.option("--account", help="Account to charge.")
@click.option("--array", help="Array indices for sweep agents, e.g. 0-7.")
@click.option("--job-name", help="Job name (keep the bb- prefix for `slurm status`).")
@click.option("--task", type=click.Choice(sorted(TASK_CONFIGS)), help="Task to train (train, multinode).")
@click.option("--mode", type=click.Choice(["local", "wandb"]), help="sweep: local workers on a shared sweep dir, or wandb agent.")
@click.option("--sbatch", "extra", multiple=True, metavar="KEY=VALUE", help="Any other #SBATCH option, e.g. --sbatch mem=64G.")
@click.option("--dry-run", is_flag=True, help="Print the filled script instead of submitting it.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def submit(kind, nodes, gpus, procs, time_limit, partition, account, array, job_name, task, mode, extra, dry_run, args):
    """Fill slurm/KIND.sbatch and submit it; ARGS after `--` go to the job (train: trainer options;
    sweep: the sweep YAML, then `sweep local` options)."""
    from blueberry import slurm as slurm_jobs

    sbatch = {k: v for k, v in {"nodes": nodes, "time": time_limit, "partition": partition, "account": account,
                                "array": array, "job-name": job_name}.items() if v is not None}
    if gpus:
        sbatch["gres"] = f"gpu:{gpus}"
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--sbatch {item!r}: write KEY=VALUE, e.g. mem=64G")
        sbatch[key.lstrip("-")] = value
    if "time" in sbatch:   # --time or --sbatch time=...: sbatch would refuse the job
        sbatch["time"] = slurm_jobs.check_time_limit(sbatch["time"])
    env = {k: v for k, v in {"GPUS": gpus, "CPU_PROCS": procs, "TASK": task, "MODE": mode}.items() if v is not None}
    if kind == "sweep" and mode != "wandb" and not args and not os.environ.get("SWEEP_FILE"):
        raise UserError("slurm submit sweep: give the sweep YAML after --, e.g. -- sweeps/moe-lr-search.yaml")
    if kind in ("train", "multinode"):
        check_train_args(task or "lm", list(args), f"slurm submit {kind}")
    if kind == "sweep":
        check_sweep_args(mode or "local", list(args))
    script = slurm_jobs.render(kind, sbatch, env, list(args))
    if dry_run:
        click.echo(script, nl=False)
        return 0
    job = slurm_jobs.submit(kind, script, Path.cwd())
    click.echo(f"submitted {kind} job {job}")
    click.echo("logs in logs/, run dirs in runs/; follow with: blueberry slurm status", err=True)


def check_train_args(task: str, args: list[str], where: str) -> None:
    """Parse and resolve `blueberry train TASK ARGS` as the job will, without training: a typo fails
    here, at once, not in the queue hours later."""
    command = train.commands[task]
    try:
        ctx = command.make_context(f"train {task}", list(args))
    except click.UsageError as e:
        if isinstance(e, click.NoSuchOption):
            _suggest_field(e)
        raise UserError(f"{where}: the job's options: {' '.join(e.format_message().split())}") from None
    params = dict(ctx.params)
    cls = TASK_CONFIGS[task]
    cli_values = {k: v for k, v in params.items() if v is not None and k in field_map(cls)}
    try:
        file_values = read_config_file(params["config_file"]) if params.get("config_file") else {}
        resolve(cls, file_values=file_values, recipe=parse_recipe(params["recipe"]) if params.get("recipe") else None,
                cli_values=cli_values, source=params.get("config_file") or "config")
    except UserError as e:
        raise UserError(f"{where}: the job's options: {e}") from None


def check_sweep_args(mode: str, args: list[str]) -> None:
    """Parse the job's `sweep local FILE OPTIONS` (or `sweep agent ID OPTIONS`) as the job will and
    check what those commands check before they start: a bad YAML, override or option fails at submit."""
    command = sweep.commands["agent" if mode == "wandb" else "local"]
    # as slurm/sweep-agents.sbatch: SWEEP_FILE / SWEEP_ID (exported to the job) stand for the first argument
    first = os.environ.get("SWEEP_ID" if mode == "wandb" else "SWEEP_FILE")
    if first and (not args or args[0] != first):
        args = [first, *args]
    try:
        ctx = command.make_context(f"sweep {command.name}", list(args))
    except click.UsageError as e:
        raise UserError(f"slurm submit sweep: the job's `sweep {command.name}` arguments: "
                        f"{' '.join(e.format_message().split())}") from None
    if mode != "wandb":
        checked_local_sweep(ctx.params["file"], list(ctx.params["overrides"]), ctx.params["launch_config"])


@slurm.command()
def status():
    """List your blueberry jobs (bb-*) with their state and run dirs."""
    from rich.console import Console
    from rich.table import Table

    from blueberry import slurm as slurm_jobs

    table = Table(title="blueberry jobs")
    for column in ("job", "name", "state", "elapsed", "limit", "nodes", "reason", "workdir"):
        table.add_column(column)
    table.add_column("run dirs", overflow="fold")
    for job in slurm_jobs.jobs():
        runs = ", ".join(str(p.relative_to(job["workdir"])) for p in slurm_jobs.run_dirs_of(job)) or "-"
        table.add_row(job["id"], job["name"], job["state"], job["elapsed"], job["limit"], job["nodes"],
                      job["reason"], job["workdir"], runs)
    Console().print(table)


REPORT_HELP = """Report on runs: PATH is run dirs, folders of run dirs, or sweep dirs (or --wandb for a W&B
project). Prints a table (the config fields that differ, best and final metric, step of best, degradation
after it, steps, tokens, wall time, throughput, params), a ranking that groups seed repeats and marks
differences within seed noise, and health warnings; writes CSV, JSON, figures and one self-contained HTML."""


class PathsOrCommands(click.Group):
    """`GROUP [OPTIONS] PATH...` runs the group's hidden default command, `GROUP COMMAND ...` a
    subcommand: a first argument that names no subcommand belongs to the default command, which
    also lends the group its usage and options in --help."""

    default_command = "paths"

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx, formatter):
        default = self.commands[self.default_command]
        formatter.write_usage(ctx.command_path, " ".join(default.collect_usage_pieces(ctx)))
        formatter.write_usage(ctx.command_path, "COMMAND [ARGS]...", prefix="   or: ")
        self.format_help_text(ctx, formatter)
        default.format_options(ctx, formatter)
        self.format_commands(ctx, formatter)


class GroupDefault(click.Command):
    """The default command of a PathsOrCommands group runs under the group's name (in usage and errors)."""

    def make_context(self, info_name, args, parent=None, **extra):
        return super().make_context(parent.info_name, args, parent=parent.parent, **extra)


@main.group(cls=PathsOrCommands, help=REPORT_HELP)
def report():
    pass


@report.command(name=PathsOrCommands.default_command, cls=GroupDefault, hidden=True, help=REPORT_HELP)
@click.argument("paths", nargs=-1, type=click.Path(), metavar="[PATH]...")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the report. Default: SWEEP_DIR/report or RUN_DIR/report for one path, else ./report.")
@click.option("--metric", default=None, metavar="NAME",
              help="Metric to rank by, e.g. val/loss or val/accuracy. Default: the sweep's metric, else the runs' own.")
@click.option("--wandb", "wandb_project", metavar="ENTITY/PROJECT", default=None,
              help="Report on this W&B project's runs (needs the server) instead of PATHs.")
@click.option("--sweep", "sweep_id", metavar="ID", default=None, help="With --wandb: only this sweep's runs.")
@click.option("--group", default=None, metavar="NAME", help="With --wandb: only this run group (`sweep local` trials: the sweep name).")
@click.option("--per-run-figures/--no-per-run-figures", default=True, show_default=True,
              help="A 4-panel figure per run (val loss vs time and step, accuracy, LR).")
def report_paths(paths, out_dir, metric, wandb_project, sweep_id, group, per_run_figures):
    from blueberry.report.build import build_report, print_report, report_loaded
    from blueberry.rundir import ensure_writable_dir

    if wandb_project:
        if paths:
            raise UserError("report: give PATHs or --wandb ENTITY/PROJECT, not both")
        from blueberry.report.load import load_wandb

        # before asking W&B for runs (build_report checks its folder before reading the PATHs)
        ensure_writable_dir(out_dir or "report", "--out")

        loaded = load_wandb(wandb_project, sweep_id, group=group)
        source = wandb_project + (f" sweep {sweep_id}" if sweep_id else "") + (f" group {group}" if group else "")
        result = report_loaded(loaded, out_dir or "report", metric, sources=[source], per_run_figures=per_run_figures)
    elif sweep_id or group:
        raise UserError("report: --sweep and --group choose W&B runs; use them with --wandb ENTITY/PROJECT")
    elif not paths:
        raise UserError("report: give run dirs, folders of run dirs or sweep dirs (PATH...), or --wandb ENTITY/PROJECT")
    else:
        result = build_report(list(paths), out_dir, metric, per_run_figures=per_run_figures)
    print_report(result)


@report.command(name="transfer")
@click.argument("paths", nargs=-1, required=True, type=click.Path(), metavar="SWEEP_DIR...")
@click.option("--target", type=click.FloatRange(min=0, min_open=True), default=None, metavar="WIDTH",
              help="Predict the best LR at this width (with its 95% interval), e.g. 1024.")
@click.option("--width-field", "width_field", default="d_model", show_default=True, metavar="FIELD",
              help="The config field that is the width.")
@click.option("--metric", default=None, metavar="NAME",
              help="Metric to fit. Default: the sweep's metric, else the runs' own (val/loss).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for transfer.json, transfer.html and plots/transfer.png. Default: SWEEP_DIR/report.")
def report_transfer(paths, target, width_field, metric, out_dir):
    """Does the best LR move with width? For a sweep over width x log-spaced LR x seeds: each width's lr*
    (a quadratic in log LR near its best, bootstrap interval) and near-optimal band (noise verdicts),
    then log lr* = a + b log(width) with b's 95% interval, the verdict (shift-free, SP-like or
    unclear), each width's best loss, and the LR predicted at --target. Give two sweeps (sp and mup)
    to fit each apart and see their best losses side by side."""
    from blueberry.report.build import build_transfer_report, print_transfer
    from blueberry.rundir import ensure_writable_dir

    if out_dir:   # made once the runs make a transfer study
        ensure_writable_dir(out_dir, "--out", create=False)
    fits, files = build_transfer_report(list(paths), out_dir, metric, target, width_field)
    print_transfer(fits)
    click.echo(f"transfer report written to {files['html']}; beside it: {files['json'].name}, "
               + ", ".join(f"plots/{p.name}" for p in files["png"]))


@report.command(name="wandb-report")
@click.option("--project", default=None, metavar="NAME",
              help="W&B project. Default: the --sweep-file's project:, else blueberry (the trainer's).")
@click.option("--entity", default=None, metavar="NAME", help="W&B entity (default: yours).")
@click.option("--sweep-file", type=click.Path(exists=True), default=None, metavar="PATH",
              help="The sweep YAML (or `sweep local` sweep dir) the runs come from: its parameters, metric and project.")
@click.option("--sweep", "sweep_id", metavar="ID", default=None, help="Only this sweep's runs.")
@click.option("--group", default=None, metavar="NAME", help="Only this run group (`sweep local` trials: the sweep name).")
@click.option("--metric", default=None, metavar="NAME",
              help="Summary key of parallel coordinates and importance; for X_best the line plots show X. "
                   "Default: the --sweep-file's metric, else its task's best metric (val/loss for lm).")
@click.option("--param", "params", multiple=True, metavar="FIELD",
              help="Config field for parallel coordinates (repeatable). Default: the swept parameters.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Where the spec goes when the report cannot be saved. Default: ./wandb-report-PROJECT[-SWEEP].json.")
@click.option("--offline", is_flag=True, help="Do not contact W&B: write the spec file only.")
def wandb_report(project, entity, sweep_file, sweep_id, group, metric, params, out_file, offline):
    """Build a W&B Report: val curves, parallel coordinates over the swept parameters, parameter
    importance and a run comparer. Without the W&B server it writes the report's spec to a file."""
    from blueberry.report.wandb_report import build_wandb_report

    result = build_wandb_report(project, entity, sweep_id, metric, list(params) or None, out_file,
                                True if offline else None, group=group, sweep_file=sweep_file)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(result.message)


if __name__ == "__main__":
    main()

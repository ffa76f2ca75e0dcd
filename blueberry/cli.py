"""The `blueberry` command. Thin: parse, then call the library. Heavy imports happen inside commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from blueberry.config import (TASK_CONFIGS, RunConfig, dump_yaml, field_map, load_preset, parse_recipe,
                              preset_names, preset_task, read_config_file, resolve)
from blueberry.errors import UserError


class Blueberry(click.Group):
    """Errors a user can cause end in one line on stderr and exit code 2, never a traceback."""

    def main(self, args=None, prog_name=None, **kwargs):
        try:
            code = super().main(args, prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            where = f"{e.ctx.command_path}: " if getattr(e, "ctx", None) else ""
            click.echo(f"error: {where}{' '.join(e.format_message().split())}", err=True)
            sys.exit(e.exit_code)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        sys.exit(code if isinstance(code, int) else 0)


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
    @config_options(cls)
    def command(config_file, recipe, print_config, **options):
        cli_values = {k: v for k, v in options.items() if v is not None}
        cfg, resume_ckpt = resolve_train_config(cls, cli_values, config_file, parse_recipe(recipe) if recipe else None)
        if print_config:
            click.echo(dump_yaml(cfg), nl=False)
            return 0
        return run_training(cfg, resume_ckpt)
    return command


def resolve_train_config(cls: type[RunConfig], cli_values: dict, config_file: str | None, recipe: dict | None = None):
    """The config to train and, when resuming, the checkpoint: a resumed run starts from its saved
    config.yaml, with the file, recipe and explicit options on top."""
    from blueberry.train.checkpoint import find_resume_checkpoint

    file_values = read_config_file(config_file) if config_file else {}
    cfg = resolve(cls, file_values=file_values, recipe=recipe, cli_values=cli_values, source=config_file or "config")
    ckpt = find_resume_checkpoint(cfg.resume, cfg.out_dir, cfg.name) if cfg.resume else None
    if ckpt is None:
        return cfg, None
    saved = read_config_file(ckpt.parent.parent / "config.yaml")
    per_invocation = ("task", "resume", "stop_at_step")   # where this process stops is not inherited
    cfg = resolve(cls, base={k: v for k, v in saved.items() if k not in per_invocation}, file_values=file_values,
                  recipe=recipe, cli_values=cli_values, source=config_file or "config")
    return cfg, ckpt


def run_training(cfg: RunConfig, resume_ckpt: Path | None) -> int:
    from blueberry.tasks import load_task
    from blueberry.train.trainer import train as train_task

    _, code = train_task(cfg, load_task(cfg.task), resume_ckpt)
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
@click.option("--split", default="test", show_default=True, help="Split to evaluate (scanline: val or test; lm: val).")
@click.option("--checkpoint", "which", default="best", show_default=True,
              help="best, latest, or a checkpoint dir of the run.")
def evaluate(run_dir, split, which):
    """Evaluate a run's checkpoint on one split; prints the metrics and writes RUN_DIR/eval-SPLIT.json."""
    from rich.console import Console
    from rich.table import Table

    from blueberry.train.evaluate import evaluate_run

    metrics, path = evaluate_run(run_dir, split, which)
    table = Table(title=f"{Path(run_dir).name} — {split} ({which} checkpoint)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        if "/layer" not in name:   # per-expert loads are in the JSON; the table stays readable
            table.add_row(name, f"{value:.4f}")
    Console().print(table)
    click.echo(f"wrote {path}")


@main.group()
def sweep():
    """Run W&B sweep YAMLs: on W&B (create/agent) or without a server (local)."""


def _load_valid_sweep(path: str) -> dict:
    from blueberry.sweep.spec import load_sweep, validate_sweep

    config = load_sweep(path)
    problems = validate_sweep(config, source=path)
    if problems:
        raise UserError(problems[0] + (f" (and {len(problems) - 1} more: blueberry sweep validate {path})"
                                       if len(problems) > 1 else ""))
    return config


@sweep.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(files):
    """Check sweep YAMLs against W&B's sweep spec and the options of the command they run."""
    from blueberry.sweep.spec import load_sweep, sweep_warnings, validate_sweep

    problems = []
    for path in files:
        config = load_sweep(path)
        found = validate_sweep(config, source=path)
        problems += found
        for line in found + sweep_warnings(config, source=path):
            click.echo(line, err=True)
        if not found:
            click.echo(f"{path}: ok")
    return 2 if problems else 0


@sweep.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--project", default=None, help="W&B project (default: the YAML's project).")
@click.option("--entity", default=None, help="W&B entity (default: the YAML's, else yours).")
def create(file, project, entity):
    """Register a sweep with W&B (needs the server); prints its id and the agent command."""
    from blueberry.sweep import cloud

    full_id = cloud.create(_load_valid_sweep(file), file, project=project, entity=entity)
    click.echo(f"sweep {full_id}")
    click.echo(f"run agents with:  blueberry sweep agent {full_id}   (or: wandb agent {full_id})")


@sweep.command()
@click.argument("sweep_id")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Trials this agent runs, then exits.")
def agent(sweep_id, count):
    """Run `wandb agent SWEEP_ID`, forwarding signals to the agent's and its trial's process group."""
    from blueberry.sweep import cloud

    return cloud.agent(sweep_id, count)


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
def local(file, workers, count, sweep_dir, overrides, seed):
    """Run a sweep YAML here, no W&B server: trials as subprocesses, state in the sweep dir."""
    from blueberry.sweep.display import SweepDisplay
    from blueberry.sweep.local import LocalRunner, default_sweep_dir
    from blueberry.sweep.state import SweepDir

    config = _load_valid_sweep(file)
    overrides = list(overrides)
    path = Path(sweep_dir) if sweep_dir else default_sweep_dir(config, Path(file), overrides)
    state = SweepDir.open(path, config, name=str(config.get("name") or Path(file).stem), overrides=overrides,
                          seed=seed)
    click.echo(f"sweep dir {path}", err=True)
    display = SweepDisplay(state.name, state.metric, state.goal)
    code = LocalRunner(state, workers=workers, count=count, overrides=overrides, show=display).run()
    display.close(state.trials())
    return code


if __name__ == "__main__":
    main()

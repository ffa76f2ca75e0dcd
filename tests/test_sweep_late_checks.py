"""Issue 20, the checks that came late: a sweep command whose launcher turns `wandb agent`'s stop into
a crash, the learning_rate -> lr hint in sweep validate and --override, `slurm submit sweep` and
`report wandb-report` checking what `sweep local` and `sweep validate` check, report folders that
cannot be written, and the metric the shipped sweeps optimise. Real CLI subprocesses; W&B's own
Agent code builds the trial argv."""

import json
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from blueberry.sweep.command import as_delivered, build_command
from conftest import run_cli
from test_sweep_command import wandb_agent_argv  # noqa: F401  (W&B's own Agent._command_run, a fixture)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(str(p) for p in (REPO / "sweeps").glob("*.yaml"))


def _yaml(folder: Path, name: str, text: str) -> str:
    (folder / name).write_text(textwrap.dedent(text))
    return name


# --- item 16: a launcher that turns the agent's SIGTERM into a crash ---------------------------------

PLAIN_LAUNCHERS = {
    "accelerate": ["accelerate", "launch", "--config_file", "launch/8gpu.yaml", "-m", "blueberry.cli", "train", "lm"],
    "env-accelerate": ["${env}", "accelerate", "launch", "-m", "blueberry.cli", "train", "lm"],
    "accelerate-launch": ["/opt/venv/bin/accelerate-launch", "-m", "blueberry.cli", "train", "lm"],
    "module": ["${interpreter}", "-m", "accelerate.commands.launch", "-m", "blueberry.cli", "train", "lm"],
    "torchrun": ["torchrun", "--nproc_per_node", "8", "-m", "blueberry.cli", "train", "lm"],
}


def test_validate_warns_about_a_launcher_that_exits_1_on_sigterm(cli):
    for name, command in PLAIN_LAUNCHERS.items():
        config = {"method": "grid", "project": "blueberry", "metric": {"name": "val/loss", "goal": "minimize"},
                  "parameters": {"lr": {"values": [0.001]}}, "command": [*command, "${args}"]}
        (cli.cwd / f"{name}.yaml").write_text(yaml.safe_dump(config))
    res = cli("sweep", "validate", *(f"{name}.yaml" for name in PLAIN_LAUNCHERS))
    assert res.returncode == 0, res.stderr   # a warning: the sweep runs, but a stop reads as a crash
    lines = res.stderr.strip().splitlines()
    assert len(lines) == len(PLAIN_LAUNCHERS), lines   # one line each
    at = {"accelerate": 0, "env-accelerate": 1, "accelerate-launch": 0, "module": 1, "torchrun": 0}
    for name, i in at.items():
        (line,) = [ln for ln in lines if ln.startswith(f"{name}.yaml: ")]
        assert line.startswith(f"{name}.yaml: command[{i}]: "), line
        assert "exits 1" in line and "blueberry.launch" in line, line


def test_shipped_sweeps_use_the_launcher_the_agent_can_stop(cli, wandb_agent_argv):  # noqa: F811
    res = cli("sweep", "validate", *SHIPPED)
    assert res.returncode == 0 and res.stdout.count(": ok") == len(SHIPPED), res.stderr
    assert "blueberry.launch" not in res.stderr   # no shipped sweep starts a plain launcher
    config = yaml.safe_load((REPO / "sweeps" / "moe-muon-vs-adam-8gpu.yaml").read_text())
    params = {"preset": "moe-exp8", "recipe": {"name": "adam_baseline", "optimizer": "adamw"}, "seed": 0}
    agent_argv, _ = wandb_agent_argv(config["command"], as_delivered(params))
    assert agent_argv[:7] == ["/usr/bin/env", "python", "-m", "blueberry.launch", "--config_file", "launch/8gpu.yaml",
                              "-m"]
    assert build_command(config, params, interpreter="python") == agent_argv   # sweep local starts the same

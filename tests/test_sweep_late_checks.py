"""Issue 20, the checks that came late: a sweep command whose launcher turns `wandb agent`'s stop into
a crash, the learning_rate -> lr hint in sweep validate and --override, `slurm submit sweep` and
`report wandb-report` checking what `sweep local` and `sweep validate` check, report folders that
cannot be written, and the metric the shipped sweeps optimise. Real CLI subprocesses; W&B's own
Agent code builds the trial argv."""

import json
import subprocess
import sys
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
        (line,) = [ln for ln in lines if ln.startswith(f"warning: {name}.yaml: ")]
        assert line.startswith(f"warning: {name}.yaml: command[{i}]: "), line
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


# --- item 6: the learning_rate -> lr hint, and `slurm submit sweep` / `report wandb-report` checked ---

BAD_SWEEP = """
    method: grid
    command: [blueberry, train, lm, "${args}"]
    parameters:
      lrr: {values: [0.1]}
"""


def _one_error(res, *pieces: str) -> str:
    """The single `error:` line of a refused command (exit 2), holding every piece."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for piece in pieces:
        assert piece in lines[0], (piece, lines[0])
    return lines[0]


def test_learning_rate_is_called_lr_in_validate_and_override(cli):
    _yaml(cli.cwd, "lr.yaml", """
        method: grid
        project: blueberry
        command: [blueberry, train, lm, "${args}"]
        parameters:
          learning_rate: {values: [0.001]}
    """)
    res = cli("sweep", "validate", "lr.yaml")
    assert res.returncode == 2
    assert "lr.yaml: parameters.learning_rate: not an option of 'blueberry train lm' (blueberry calls it lr)" \
        in res.stderr
    res = cli("sweep", "local", str(REPO / "sweeps" / "quickstart.yaml"), "--dir", "sw",
              "--override", "learning_rate=0.01")
    _one_error(res, "--override learning_rate=0.01", "(blueberry calls it lr)")
    assert not (cli.cwd / "sw").exists()
    # the trainer's own hint, from the same table (config.ALIASES)
    assert "'--lr'" in cli("train", "lm", "--learning_rate", "0.01").stderr
    assert "(blueberry calls it lr)" in cli("train", "lm", "--recipe", "{learning_rate: 0.01}").stderr


def test_slurm_submit_sweep_checks_what_sweep_local_checks(cli):
    quick = str(REPO / "sweeps" / "quickstart.yaml")
    _yaml(cli.cwd, "bad.yaml", BAD_SWEEP)
    refused = {   # the job's arguments -> pieces of the one error line
        ("missing.yaml",): ["missing.yaml: sweep file not found"],
        ("bad.yaml",): ["bad.yaml: parameters.lrr: not an option of 'blueberry train lm' (did you mean lr?)"],
        (quick, "--override", "learning_rate=1"): ["--override learning_rate=1", "(blueberry calls it lr)"],
        (quick, "--override", "max_steps=-5"): ["max_steps=-5: must be >= 1"],
        (quick, "--override", "out_dir=x"): ["run dirs in SWEEP_DIR/trials"],
        (quick, "--workers", "0"): ["slurm submit sweep", "--workers", "0"],
        (quick, "--wrokers", "2"): ["slurm submit sweep", "--wrokers"],
        (quick, "--launch-config", "nope.yaml"): ["nope.yaml"],
        (quick, "--launch-config", str(REPO / "launch" / "cpu-2proc.yaml")): ["--launch-config", "no --config_file"],
    }
    for args, pieces in refused.items():
        res = cli("slurm", "submit", "sweep", "--dry-run", "--", *args)
        _one_error(res, *pieces)
        assert "#SBATCH" not in res.stdout
    res = cli("slurm", "submit", "sweep", "--dry-run", "--", quick, "--override", "learning_rate=1",
              env={"WANDB_AGENT_KILL_DELAY": "soon"})
    assert res.returncode == 2
    res = cli("slurm", "submit", "sweep", "--mode", "wandb", "--dry-run", "--", "me/proj/abc", "--cuont", "2")
    _one_error(res, "--cuont")
    _one_error(cli("slurm", "submit", "sweep", "--mode", "wandb", "--dry-run"), "SWEEP_ID")
    # the script's SWEEP_FILE / SWEEP_ID variables stand for the first argument, as in the job
    res = cli("slurm", "submit", "sweep", "--dry-run", "--", "--override", "lrr=1", env={"SWEEP_FILE": quick})
    _one_error(res, "--override lrr=1")
    res = cli("slurm", "submit", "sweep", "--mode", "wandb", "--dry-run", "--", "--count", "2",
              env={"SWEEP_ID": "me/proj/abc"})
    assert res.returncode == 0 and "set -- --count 2" in res.stdout, res.stderr

    res = cli("slurm", "submit", "sweep", "--array", "0-3", "--dry-run", "--", quick, "--override", "max_steps=5",
              "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert "#SBATCH --array=0-3" in res.stdout and f"set -- {quick} --override max_steps=5 --workers 2" in res.stdout
    assert not (cli.cwd / "runs").exists()   # a dry run creates nothing
    res = cli("slurm", "submit", "sweep", "--mode", "wandb", "--dry-run", "--", "me/proj/abc", "--count", "2")
    assert res.returncode == 0 and "set -- me/proj/abc --count 2" in res.stdout, res.stderr


def test_wandb_report_refuses_a_bad_sweep_file_param_or_metric(cli):
    quick = str(REPO / "sweeps" / "quickstart.yaml")
    _yaml(cli.cwd, "bad.yaml", BAD_SWEEP)
    _yaml(cli.cwd, "scan.yaml", """
        method: grid
        project: blueberry
        metric: {name: val/balanced_accuracy, goal: maximize}
        command: [blueberry, train, scanline, "${args}"]
        parameters:
          dropout: {values: [0.1]}
    """)
    base = ("report", "wandb-report", "--offline", "--out", "spec.json")
    cases = {
        ("--sweep-file", "bad.yaml"): ["bad.yaml: parameters.lrr: not an option of 'blueberry train lm'"],
        ("--sweep-file", quick, "--param", "learning_rate"): ["--param learning_rate", "(blueberry calls it lr)"],
        ("--param", "nonsense_field"): ["--param nonsense_field"],
        ("--sweep-file", quick, "--param", "n_expert"): ["--param n_expert", "(did you mean n_experts?)"],
        ("--sweep-file", "scan.yaml", "--param", "n_experts"): ["--param n_experts", "blueberry train scanline"],
        ("--sweep-file", quick, "--metric", "val/los"): ["--metric", "'val/los'", "did you mean val/loss?"],
        ("--metric", "val/bleu"): ["--metric", "'val/bleu'"],
        ("--sweep-file", "scan.yaml", "--metric", "val/perplexity"): ["'val/perplexity'", "blueberry train scanline"],
    }
    for args, pieces in cases.items():
        _one_error(cli(*base, *args), *pieces)
        assert not (cli.cwd / "spec.json").exists()
    ok = cli(*base, "--sweep-file", "scan.yaml", "--param", "dropout", "--param", "recipe",
             "--metric", "val/recall/nodule")
    assert ok.returncode == 0, ok.stderr
    spec = json.loads((cli.cwd / "spec.json").read_text())
    assert (spec["params"], spec["metric"]) == (["dropout", "recipe"], "val/recall/nodule")


# --- item 3: a report folder that cannot be written is one line, before any work --------------------

def _read_only_cli(folder: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`blueberry ARGS` with `folder` mounted read-only in a private mount namespace: a real EROFS
    even for root, whom chmod does not stop (tests may run as root)."""
    script = f'mount --bind "{folder}" "{folder}" && mount -o remount,bind,ro "{folder}" && exec "$@"'
    return subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script, "sh", sys.executable,
                           "-m", "blueberry.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_report_refuses_a_report_folder_it_cannot_write(cli):
    from report_fixtures import make_run, make_sweep

    run = make_run(cli.cwd / "runs", "a")
    sweep = make_sweep(cli.cwd / "sw", trials=[{"params": {"lr": 1e-3}}, {"params": {"lr": 3e-3}}])
    for path in (run, sweep):   # the default folder, PATH/report, on a read-only disk
        res = _read_only_cli(path, "report", str(path), cwd=cli.cwd)
        _one_error(res, f"--out={path}/report: cannot write there (Read-only file system)")
        assert not (path / "report").exists()
    (cli.cwd / "afile").write_text("")
    _one_error(cli("report", str(run), "--out", "afile/rep"), "--out=afile/rep", "a file is in the way")
    assert cli("report", str(run)).returncode == 0 and (run / "report" / "report.html").exists()   # writable: works


def test_wandb_report_refuses_an_out_it_cannot_write(cli):
    ro = cli.cwd / "ro"
    ro.mkdir()
    args = ("report", "wandb-report", "--offline", "--sweep-file", str(REPO / "sweeps" / "quickstart.yaml"))
    res = _read_only_cli(ro, *args, "--out", "ro/spec.json", cwd=cli.cwd)
    _one_error(res, "--out=ro: cannot write there (Read-only file system)")
    res = _read_only_cli(cli.cwd, *args, cwd=cli.cwd)   # the default, ./wandb-report-PROJECT.json
    _one_error(res, "cannot write there (Read-only file system)")
    (cli.cwd / "afile").write_text("")
    _one_error(cli(*args, "--out", "afile/spec.json"), "--out=afile", "a file is in the way")
    assert not list(ro.iterdir())


# --- item 11: the shipped sweeps name the metric itself; W&B's controller takes each run's best -------

def test_shipped_sweeps_optimise_the_metric_not_its_running_best(cli):
    from blueberry.sweep.objective import DEFAULT_BEST
    from blueberry.sweep.trial_options import sweep_options

    for path in SHIPPED:
        config = yaml.safe_load(Path(path).read_text())
        task, _ = sweep_options(config)
        assert config["metric"]["name"] == DEFAULT_BEST[task], path   # val/loss, val/balanced_accuracy
    res = cli("sweep", "validate", *SHIPPED)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    bayes = [ln for ln in res.stdout.splitlines() if ln.startswith(str(REPO / "sweeps" / "moe-bayes.yaml"))]
    assert "optimises each run's lowest val/loss over its history" in bayes[0] and "hyperband" in bayes[0]


def test_validate_notes_a_hyperband_sweep_on_a_running_best(cli):
    for name, metric, early in (("hb", "val/loss_best", True), ("grid", "val/loss_best", False),
                                ("raw", "val/loss", True)):
        config = {"method": "random", "project": "blueberry", "metric": {"name": metric, "goal": "minimize"},
                  "command": ["blueberry", "train", "lm", "${args}"], "parameters": {"lr": {"values": [0.001, 0.01]}},
                  **({"early_terminate": {"type": "hyperband", "min_iter": 2}} if early else {})}
        (cli.cwd / f"{name}.yaml").write_text(yaml.safe_dump(config))
    res = cli("sweep", "validate", "hb.yaml", "grid.yaml", "raw.yaml")
    assert res.returncode == 0 and res.stdout.count(": ok") == 3, res.stderr
    (line,) = res.stderr.strip().splitlines()   # only the hyperband sweep on a running best
    assert line.startswith("warning: hb.yaml: metric.name: ") and "name val/loss" in line and "hyperband" in line


def test_report_ranks_a_raw_metric_sweep_by_each_runs_best_as_sweep_local_and_wandb(tmp_path):
    """A run that reached the lowest val/loss and then regressed is the sweep's best run for W&B's
    controller (metric_extremum) and `sweep local` alike; the report must rank it first too."""
    from blueberry import rundir
    from blueberry.report.build import build_report
    from blueberry.sweep.display import ranked
    from blueberry.sweep.objective import run_value
    from blueberry.sweep.state import Trial
    from report_fixtures import make_sweep

    sweep = make_sweep(tmp_path / "sw", metric="val/loss", trials=[
        {"params": {"lr": 1e-3}, "val": {10: 3.0, 20: 2.6, 30: 2.6}},
        {"params": {"lr": 3e-3}, "val": {10: 3.0, 20: 2.0, 30: 3.5}},   # best 2.0, then a late regression
    ])
    trials = []
    for folder in sorted((sweep / "trials").iterdir()):
        (run,) = (folder / "runs").iterdir()
        history = [row["val/loss"] for row in rundir.read_metrics(run) if "val/loss" in row]
        trials.append(Trial(id=folder.name, params={}, value=run_value(history, "minimize")))
    assert [t.id for t in ranked(trials, "minimize")] == ["t0001", "t0000"]   # sweep local's ranking
    result = build_report([sweep], per_run_figures=False, html=False)
    assert [row["name"] for row in result.analysis.table] == ["t0001", "t0000"]
    assert result.analysis.metric.rank_by == "best"
    assert [row["final"] for row in result.analysis.table] == [3.5, 2.6]   # the regression stays in view


def test_wandb_report_defaults_to_the_tasks_metric(cli):
    _yaml(cli.cwd, "scan.yaml", """
        method: grid
        project: blueberry
        command: [blueberry, train, scanline, "${args}"]
        parameters:
          dropout: {values: [0.1, 0.2]}
    """)
    for args, metric in ((("--sweep-file", "scan.yaml"), "val/balanced_accuracy"), ((), "val/loss")):
        res = cli("report", "wandb-report", "--offline", "--out", "spec.json", *args)
        assert res.returncode == 0, res.stderr
        assert json.loads((cli.cwd / "spec.json").read_text())["metric"] == metric

"""`blueberry sync PATH...` finds every offline W&B run under run dirs and sweep dirs (a trial's runs, an
evaluation's eval/wandb/), which a bare `wandb sync` does not; what it would upload is listed with
--dry-run, runs W&B already marked synced are skipped, and without a key or a reachable server it stops
in one line before trying any run. The upload itself needs the W&B server and is not tested here."""

import pytest
import yaml

from conftest import TINY, run_cli

SWEEP = {"name": "syncme", "method": "grid", "metric": {"name": "val/loss_best", "goal": "minimize"},
         "parameters": {"lr": {"values": [0.001, 0.002]}},
         "command": ["${env}", "${interpreter}", "-m", "blueberry.cli", "train", "lm", "${args}"]}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """A real `sweep local` sweep of two tiny trials, and one trial evaluated (its own W&B run)."""
    cwd = tmp_path_factory.mktemp("sync")
    (cwd / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    overrides = [f"--override={a[2:]}" for a in TINY] + ["--override=max_steps=2", "--override=eval_every=2"]
    res = run_cli("sweep", "local", "sweep.yaml", "--dir", "sw", "--no-report", *overrides, cwd=cwd)
    assert res.returncode == 0, res.stderr
    trial_runs = sorted((cwd / "sw").glob("trials/*/runs/*"))
    assert len(trial_runs) == 2
    res = run_cli("evaluate", str(trial_runs[0]), "--split=val", cwd=cwd)
    assert res.returncode == 0, res.stderr
    return cwd


def offline_runs(cwd):
    return sorted(p.relative_to(cwd) for p in (cwd / "sw").rglob("offline-run-*") if p.is_dir())


def test_dry_run_lists_every_nested_offline_run_and_skips_what_wandb_marked_synced(sweep_dir):
    found = offline_runs(sweep_dir)
    assert len(found) == 3 and sum("/eval/wandb/" in str(p) for p in found) == 1   # 2 trials + 1 evaluation
    res = run_cli("sync", "sw", "--dry-run", cwd=sweep_dir, env={"WANDB_MODE": None})   # no key needed
    assert res.returncode == 0, res.stderr
    listed = [line.strip() for line in res.stdout.splitlines() if line.startswith("  ")]
    assert listed == [str(p) for p in found]
    assert res.stdout.splitlines()[0] == "would sync 3 offline W&B runs:"

    # W&B's own sync writes RUN.wandb.synced beside each run it uploaded; those are not uploaded twice.
    (wandb_file,) = (sweep_dir / found[1]).glob("*.wandb")
    marker = wandb_file.with_name(wandb_file.name + ".synced")
    marker.touch()
    try:
        res = run_cli("sync", "sw", "--dry-run", cwd=sweep_dir)
        listed = [line.strip() for line in res.stdout.splitlines() if line.startswith("  ")]
        assert listed == [str(found[0]), str(found[2])]
        assert "would sync 2 offline W&B runs (1 already synced, skipped):" in res.stdout
    finally:
        marker.unlink()


def test_without_a_key_or_a_server_it_stops_in_one_line_before_any_run(sweep_dir):
    no_key = run_cli("sync", "sw", cwd=sweep_dir, env={"WANDB_MODE": None})
    lines = no_key.stderr.strip().splitlines()
    assert no_key.returncode == 2 and lines == [
        "error: sync: no W&B API key (WANDB_API_KEY or `wandb login`) and this needs the W&B server; "
        "for a self-hosted server set WANDB_BASE_URL; --dry-run lists what would be uploaded"], no_key.stderr
    # WANDB_MODE=offline (set for training) does not apply to an upload the user asked for.
    unreachable = run_cli("sync", "sw", cwd=sweep_dir, env={"WANDB_MODE": "offline", "WANDB_API_KEY": "x" * 40,
                                                             "WANDB_BASE_URL": "http://127.0.0.1:9"})
    lines = unreachable.stderr.strip().splitlines()
    assert unreachable.returncode == 2 and lines == [
        "error: sync: cannot reach the W&B server (http://127.0.0.1:9); for a self-hosted server set "
        "WANDB_BASE_URL; --dry-run lists what would be uploaded"], unreachable.stderr
    assert not list((sweep_dir / "sw").rglob("*.wandb.synced"))


def test_a_path_without_offline_runs_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    res = run_cli("sync", "empty", "--dry-run", cwd=tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: sync: no offline W&B runs under empty")

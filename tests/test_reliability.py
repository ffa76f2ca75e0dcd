"""Faults, through the real CLI: divergence, damaged checkpoints, a changed corpus on resume, two
processes on one run, a full disk, Ctrl-C. Each must end in one line and a run record that is true
(summary.json status) and usable (the kept checkpoints load and evaluate)."""

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from blueberry import rundir
from conftest import TINY, run_dirs


def _steps(run: Path) -> list[int]:
    return [r["step"] for r in rundir.read_metrics(run) if "train/loss" in r]


def _weights_finite(ckpt: Path) -> bool:
    import numpy as np

    return all(np.isfinite(a).all() for a in load_file(str(ckpt / "model.safetensors")).values())


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("log_every", [1, 50], ids=["caught-at-logging", "caught-at-checkpoint"])
def test_divergence_stops_keeps_finite_checkpoints_and_a_usable_best(cli, log_every):
    """lr=1e4 makes the loss NaN within a few steps. With log_every=1 the logging read sees it; with
    log_every=50 no log comes before the checkpoint at step 2 or 4, whose finiteness check stops it."""
    res = cli("train", "lm", *TINY, "--lr=1e4", "--max_steps=30", "--eval_every=50", "--save_every=2",
              "--keep_last=1", f"--log_every={log_every}", env={"BLUEBERRY_PROGRESS_S": "0"})
    assert res.returncode == 3, res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    summary = rundir.read_summary(run)
    assert summary["status"] == "diverged"
    step = summary["step"]
    assert step < 30 and f"at step {step}" in summary["reason"]
    assert f"diverged: {summary['reason']}" in res.stderr and "blueberry evaluate" in res.stderr
    # Nothing non-finite was written, so nothing finite was rotated out by it.
    kept = rundir.checkpoints(run)
    assert kept and all(_weights_finite(p) for _, p in kept)
    assert all(s < step for s, _ in kept)
    # The step-0 evaluation is the best, saved as such, and `evaluate` reads it.
    assert summary["best"]["step"] == 0 and os.readlink(run / "checkpoints" / "best") == "step-0000000"
    ev = cli("evaluate", str(run))
    assert ev.returncode == 0, ev.stderr
    saved = json.loads((run / "eval-val.json").read_text())
    assert saved["step"] == 0 and math.isfinite(saved["metrics"]["val/loss"])
    # In a log (stderr not a terminal): plain progress lines, no carriage-return frames.
    assert "\r" not in res.stderr and re.search(rf"step {step}/30 \(\d+%\)", res.stderr)


def test_damaged_checkpoints_are_named_and_the_newest_intact_one_is_used(cli):
    res = cli("train", "lm", *TINY, "--max_steps=6", "--eval_every=50", "--save_every=2", "--keep_last=3",
              "--stop_at_step=6", "--name=dmg")
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    ckpts = dict(rundir.checkpoints(run))
    assert sorted(ckpts) == [2, 4, 6]          # the step-0 best gave way to the better step 6
    assert all((p / "manifest.json").is_file() for p in ckpts.values())

    # Half the model file of step 6 gone: named in one line, and the run resumes from step 4.
    model = ckpts[6] / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    res = cli("train", "lm", "--resume", str(run), "--max_steps=8")
    assert res.returncode == 0, res.stderr
    assert f"skipping a damaged checkpoint: {model}: " in res.stderr and "truncated or damaged" in res.stderr
    assert _steps(run) == list(range(1, 9))                       # steps 5 and 6 re-run once, not twice
    assert rundir.read_summary(run)["status"] == "finished"

    # An empty pickle in a checkpoint that names it in its manifest: one line, not "aborted" / 130.
    step8 = rundir.latest_checkpoint(run)
    (step8 / "custom_checkpoint_0.pkl").write_bytes(b"")
    res = cli("train", "lm", "--resume", str(step8))
    assert res.returncode == 2 and "aborted" not in res.stderr
    (line,) = _error_lines(res.stderr)
    assert f"{step8 / 'custom_checkpoint_0.pkl'}: 0 bytes" in line
    # evaluate: a damaged best gives way to the newest intact checkpoint, and says so.
    best = (run / "checkpoints" / "best").resolve()
    (best / "model.safetensors").write_bytes(b"\0" * 100)
    res = cli("evaluate", str(run))
    assert res.returncode == 0, res.stderr
    assert f"best checkpoint is damaged: {best / 'model.safetensors'}" in res.stderr
    used = json.loads((run / "eval-val.json").read_text())["checkpoint"]
    assert used != best.name and f"using the newest intact checkpoint instead: {run / 'checkpoints' / used}" in res.stderr
    # The same without a manifest (a checkpoint of an older blueberry): the load itself fails, in one line.
    (step8 / "manifest.json").unlink()
    res = cli("train", "lm", "--resume", str(step8), "--max_steps=10")
    assert res.returncode == 2 and "aborted" not in res.stderr
    (line,) = _error_lines(res.stderr)
    assert f"checkpoint {step8}: cannot be loaded" in line


def test_resume_refuses_a_changed_corpus_and_leaves_config_untouched(cli):
    corpus = cli.cwd / "corpus.jsonl"
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(600)]
    docs = [json.dumps({"text": " ".join(rng.choice(words) for _ in range(60))}) for _ in range(300)]
    corpus.write_text("\n".join(docs) + "\n")
    args = [*TINY, f"--data={corpus}", "--max_steps=4", "--eval_every=50"]
    first = cli("train", "lm", *args, "--stop_at_step=2", "--name=c")
    assert first.returncode == 0, first.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    config = (run / "config.yaml").read_bytes()

    corpus.write_text("\n".join(reversed(docs)) + "\n")   # same path and options, the documents in another order
    res = cli("train", "lm", "--resume", str(run))
    assert res.returncode == 2
    (line,) = _error_lines(res.stderr)
    assert "the corpus and tokenizer differ from what it trained on: the documents" in line
    assert "--allow-changed data,tokenizer" in line and "(fingerprint corpus " in line
    assert "split " not in line.split("(fingerprint")[1]   # the split follows the corpus: not named apart
    assert (run / "config.yaml").read_bytes() == config and rundir.read_summary(run)["status"] == "stopped"
    # Each fingerprint is excused by its own name only: allowing an unrelated field excuses nothing.
    other = cli("train", "lm", "--resume", str(run), "--allow-changed", "optimizer")
    assert other.returncode == 2 and "--allow-changed optimizer,data,tokenizer" in _error_lines(other.stderr)[0]
    meant = cli("train", "lm", "--resume", str(run), "--allow-changed", "data,tokenizer")
    assert meant.returncode == 0, meant.stderr
    (change,) = rundir.read_summary(run)["allowed_changes"]
    assert change["step"] == 2 and set(change["fields"]) == {"data", "tokenizer"}


def test_a_run_dir_is_locked_while_it_trains(cli):
    first = cli("train", "lm", *TINY, "--max_steps=2000", "--eval_every=1000", "--stop_at_step=1", "--name=lk")
    assert first.returncode == 0, first.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    # stop_at_step is checked against the run's own max_steps (2000), not the preset's (200)
    planned = cli("train", "lm", "--resume", str(run), "--stop_at_step=500", "--print-config")
    assert planned.returncode == 0, planned.stderr
    assert "max_steps: 2000" in planned.stdout and "stop_at_step: 500" in planned.stdout
    env = {**os.environ, "BLUEBERRY_PROGRESS_S": "0"}
    trainer = subprocess.Popen([sys.executable, "-m", "blueberry.cli", "train", "lm", "--resume", str(run)],
                               cwd=cli.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and max(_steps(run), default=0) < 3:
            time.sleep(0.3)
        assert (run / ".lock").read_text().strip() == str(trainer.pid)
        second = cli("train", "lm", "--name=lk", "--resume=auto")
        assert second.returncode == 2
        (line,) = _error_lines(second.stderr)
        assert f"another process (pid {trainer.pid}) is training in this run dir" in line
    finally:
        trainer.send_signal(signal.SIGTERM)
        _, err = trainer.communicate(timeout=120)
    assert trainer.returncode == 75, err
    assert rundir.read_summary(run)["status"] == "preempted"
    # The lock went with the process: the run resumes at once.
    res = cli("train", "lm", "--resume", str(run), "--stop_at_step", str(rundir.read_summary(run)["step"] + 1))
    assert res.returncode == 0, res.stderr


def test_ctrl_c_checkpoints_and_says_how_to_resume(cli):
    env = {**os.environ, "BLUEBERRY_PROGRESS_S": "0"}
    trainer = subprocess.Popen([sys.executable, "-m", "blueberry.cli", "train", "lm", *TINY, "--max_steps=2000",
                                "--eval_every=1000", "--name=cc"], cwd=cli.cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dirs(cli.cwd / "runs") if (cli.cwd / "runs").exists() else []):
        time.sleep(0.3)
    (run,) = run_dirs(cli.cwd / "runs")
    while time.time() < deadline and max(_steps(run), default=0) < 2:
        time.sleep(0.3)
    trainer.send_signal(signal.SIGINT)
    _, err = trainer.communicate(timeout=120)
    assert trainer.returncode == 130, err
    summary = rundir.read_summary(run)
    step = summary["step"]
    assert summary["status"] == "interrupted" and step >= 2
    assert f"interrupted at step {step}, checkpoint saved; resume with: blueberry train lm --resume runs/{run.name}" in err
    assert rundir.latest_checkpoint(run).name == f"step-{step:07d}"
    res = cli("train", "lm", "--resume", str(run), "--stop_at_step", str(step + 2))
    assert res.returncode == 0, res.stderr
    assert _steps(run) == list(range(1, step + 3))


@pytest.mark.parametrize("async_save", ["false", "true"], ids=["sync", "async"])
def test_disk_full_at_a_checkpoint_fails_in_one_line_and_keeps_the_record(cli, async_save):
    """A real full disk: a 2 MiB tmpfs, mounted in a private mount namespace (no root needed). An
    asynchronous save's failure is found when the next save (or the end) waits for it."""
    disk = cli.cwd / "disk"
    disk.mkdir()
    out = cli.cwd / "copy"
    script = (f'mount -t tmpfs -o size=2m tmpfs {disk} && "$@" > {cli.cwd}/stderr 2>&1; echo $? > {cli.cwd}/rc; '
              f"cp -a {disk} {out}")
    cmd = ["unshare", "--mount", "--map-root-user", "sh", "-c", script, "sh", sys.executable, "-m", "blueberry.cli",
           "train", "lm", *TINY, "--max_steps=40", "--eval_every=100", "--save_every=1", "--keep_last=100",
           f"--out_dir={disk}", "--wandb_mode=disabled", f"--async_save={async_save}"]
    subprocess.run(cmd, check=True, timeout=300, env={**os.environ, "BLUEBERRY_PROGRESS_S": "0"})
    rc, err = int((cli.cwd / "rc").read_text()), (cli.cwd / "stderr").read_text()
    assert rc == 1, err
    (line,) = _error_lines(err)
    assert "not written (the disk is full" in line and "earlier checkpoints are intact" in line
    (run,) = run_dirs(out)
    summary = rundir.read_summary(run)
    failed_at = summary["step"]
    assert summary["status"] == "failed" and summary["reason"] in line and failed_at < 40
    assert not list((run / "checkpoints").glob("*.incomplete"))            # the partial copy is gone
    not_written = int(re.search(r"checkpoints/step-(\d+): not written", line).group(1))
    assert not_written == failed_at - (async_save == "true")              # async: found at the next save
    kept = rundir.checkpoints(run)
    assert [s for s, _ in kept] == list(range(not_written))              # every earlier one is there, intact
    from blueberry.train.checkpoint import damage
    assert all(damage(p) is None for _, p in kept)
    shutil.rmtree(out)


def test_an_explicit_max_steps_wins_over_the_presets_epochs_and_evaluate_picks_test(cli):
    small = ["--n_images=24", "--image_size=32", "--lines_per_sample=4", "--model=sequential", "--d_model=16",
             "--n_heads=2", "--n_layers=1", "--d_ff=32", "--cnn_channels=8", "--batch_size=8",
             "--eval_batches=2"]
    res = cli("train", "scanline", *small, "--max_steps=2")   # scanline-tiny sets epochs: 4
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    summary = rundir.read_summary(run)
    assert (summary["step"], summary["max_steps"]) == (2, 2)
    ev = cli("evaluate", str(run))                            # no --split: the run has a test split
    assert ev.returncode == 0, ev.stderr
    assert json.loads((run / "eval-test.json").read_text())["split"] == "test"

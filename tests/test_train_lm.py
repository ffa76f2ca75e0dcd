"""`blueberry train lm` end to end, through the real CLI in a fresh interpreter: the run dir, the
offline W&B run read back, the LR schedule in optimizer steps, checkpoints, resume, early stopping."""

import json
import math
import os

import pytest
import torch
import yaml

from blueberry import rundir
from conftest import TINY, run_cli, run_dirs, wandb_offline_run
from probes import probes


def _rows(run_dir, key):
    return {r["step"]: r[key] for r in rundir.read_metrics(run_dir) if key in r}


def _cosine(step, peak, warmup, max_steps, min_ratio):
    """The LR that produced row `step` (1-based: the update of optimizer step index step-1)."""
    s = step - 1
    if s < warmup:
        return peak * (s + 1) / warmup
    p = min(1.0, (s - warmup) / (max_steps - 1 - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished 12-step run with grad_accum 2, shared by the tests that only read it."""
    cwd = tmp_path_factory.mktemp("t1")
    env = {"WANDB_MODE": None}   # no mode, no key: the trainer must go offline and say so
    res = run_cli("train", "lm", *TINY, "--max_steps=12", "--grad_accum=2", "--eval_every=6", "--lr=1e-2",
                  "--warmup_steps=3", "--min_lr_ratio=0.1", "--keep_last=1", "--save_every=4", "--name=t1",
                  "--wandb_group=g1", "--wandb_tags=a,b", "--wandb_project=proj",
                  "--eval_batches=2", cwd=cwd, env=env)   # 2 x 4 windows: part of the val split
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cwd / "runs")
    return run, res


@probes("wandb_project", "wandb_tags")
def test_train_writes_run_dir_metrics_checkpoints_and_offline_wandb(finished):
    run, res = finished
    assert "no W&B API key found: logging offline" in res.stderr
    assert run.name.startswith("t1-")

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["task"], config["lr"], config["grad_accum"], config["max_steps"]) == ("lm", 1e-2, 2, 12)

    # Every optimizer step logged once; the LR at warmup end, midpoint and last step is the formula's.
    lrs = _rows(run, "lr")
    assert sorted(lrs) == list(range(1, 13))
    for step in (3, 7, 12):
        assert lrs[step] == pytest.approx(_cosine(step, 1e-2, 3, 12, 0.1), rel=1e-9)
    assert lrs[12] == pytest.approx(1e-3)       # the schedule ran to its end in optimizer steps
    # (that tokens_seen counts the tokens the batches held: test_fields_reach_code's grad_accum probe)
    tokens = _rows(run, "tokens_seen")
    assert [tokens[s] for s in sorted(tokens)] == [tokens[1] * s for s in sorted(tokens)]
    assert sorted(_rows(run, "val/loss")) == [0, 6, 12]

    summary = rundir.read_summary(run)
    assert summary["status"] == "finished" and summary["step"] == 12
    val = _rows(run, "val/loss")
    assert summary["best"]["value"] == min(val.values()) and summary["best"]["step"] == min(val, key=val.get)
    assert summary["params"]["total"] > summary["params"]["active"] > 0
    assert summary["data"]["leak_fraction"] < 0.01 and summary["data"]["unique_train_tokens"] > 0

    # keep_last=1 keeps the last step and whatever `best` points at; no half-written folders.
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    best_target = os.readlink(run / "checkpoints" / "best")
    assert set(names) == {"best", "step-0000012", best_target}
    assert (run / "plots" / "moe__expert_load.png").stat().st_size > 1000

    # The offline W&B run mirrors the run dir: full config, every row at its optimizer step, summary.
    wb_summary, history = wandb_offline_run(run)
    assert {k: wb_summary["config"][k] for k in config} == config
    assert wb_summary["project"] == "proj" and wb_summary["tags"] == ["a", "b"]
    wb_loss = {h["step"]: h["train/loss"] for h in history if "train/loss" in h}
    assert wb_loss == pytest.approx(_rows(run, "train/loss"))
    assert wb_summary["summary"]["val/loss_best"] == pytest.approx(min(val.values()))
    assert wb_summary["summary"]["params/active"] == summary["params"]["active"]


def _whole_split_val_loss(run, ckpt):
    """The oracle: the checkpoint's mean next-token loss over EVERY val window, computed here by hand."""
    import torch.nn.functional as F
    from accelerate import Accelerator
    from safetensors.torch import load_file

    from blueberry.config import LMConfig, resolve
    from blueberry.models.lm import Decoder
    from blueberry.tasks.lm import LMTask

    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved.pop("task")
    cfg = resolve(LMConfig, base=saved)
    data = LMTask().build_data(cfg, Accelerator(cpu=True))
    model = Decoder(cfg, data.payload["vocab_size"]).eval()
    model.load_state_dict(load_file(ckpt / "model.safetensors"))
    val = data.payload["val"]
    x, y = val.batch(range(len(val)))
    with torch.no_grad():
        return F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()


def test_evaluate_reads_the_whole_split_of_the_best_checkpoint(finished, cli):
    """`evaluate` reads the whole split; the fixture's in-training evals read 8 windows of it."""
    run, _ = finished
    res = cli("evaluate", str(run), "--split=val")
    assert res.returncode == 0, res.stderr
    saved = json.loads((run / "eval-val.json").read_text())
    best = rundir.read_summary(run)["best"]
    assert saved["step"] == best["step"]
    whole = _whole_split_val_loss(run, (run / "checkpoints" / "best").resolve())
    assert saved["metrics"]["val/loss"] == pytest.approx(whole, rel=1e-5)
    assert saved["metrics"]["val/loss"] != pytest.approx(best["value"], rel=1e-3)   # not the 8-window sample
    assert "val/loss" in res.stdout
    wrong = cli("evaluate", str(run), "--split=test")
    assert wrong.returncode == 2 and "split=test: lm runs have val" in wrong.stderr


@probes("resume", "stop_at_step")
def test_resume_continues_exactly_like_an_uninterrupted_run(cli):
    knobs = [*TINY, "--max_steps=8", "--grad_accum=2", "--eval_every=4", "--optimizer=muon", "--dropout=0.1",
             "--bias_update_rate=0.01", "--router=sigmoid"]
    whole = cli("train", "lm", *knobs, "--name=whole")
    assert whole.returncode == 0, whole.stderr

    first = cli("train", "lm", *knobs, "--name=parts", "--stop_at_step=3")
    assert first.returncode == 0, first.stderr
    (parts,) = [p for p in run_dirs(cli.cwd / "runs") if p.name.startswith("parts-")]
    assert rundir.read_summary(parts)["status"] == "stopped"
    # auto finds the unfinished run by name; an explicit option on top moves the stop point.
    second = cli("train", "lm", *knobs, "--name=parts", "--resume=auto", "--stop_at_step=6")
    assert second.returncode == 0, second.stderr
    third = cli("train", "lm", "--resume", str(parts))   # a run dir alone: its saved config
    assert third.returncode == 0, third.stderr

    assert [p.name for p in run_dirs(cli.cwd / "runs")].count(parts.name) == 1
    (whole_dir,) = [p for p in run_dirs(cli.cwd / "runs") if p.name.startswith("whole-")]
    expected, got = _rows(whole_dir, "train/loss"), _rows(parts, "train/loss")
    assert sorted(got) == list(range(1, 9))                   # continuous steps, none twice
    assert got == pytest.approx(expected, abs=1e-5)
    assert _rows(parts, "tokens_seen")[8] == _rows(whole_dir, "tokens_seen")[8]
    # training moved the sigmoid router's balancing bias, and the resumed run carried it over exactly
    biases = [_router_biases(run / "checkpoints" / "step-0000008") for run in (whole_dir, parts)]
    assert biases[0] and all(b.abs().max() > 0 for b in biases[0].values())
    assert biases[0].keys() == biases[1].keys()
    for name, bias in biases[0].items():
        assert torch.equal(bias, biases[1][name]), name
    assert rundir.read_summary(parts)["status"] == "finished"
    steps = [json.loads(line)["step"] for line in (parts / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)


def _router_biases(ckpt):
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(ckpt / "model.safetensors").items() if k.endswith("router.bias")}


@probes("early_stop_patience", "early_stop_min_delta")
def test_early_stopping_stops_and_says_so(cli):
    res = cli("train", "lm", *TINY, "--max_steps=40", "--eval_every=2", "--early_stop_patience=2",
              "--early_stop_min_delta=100")
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    summary = rundir.read_summary(run)
    # Step 0 sets the best; no later eval beats it by 100, so two evals later (step 4) it stops.
    assert summary["status"] == "early_stopped" and summary["step"] == 4


def test_unreachable_wandb_server_falls_back_offline(cli):
    env = {"WANDB_MODE": None, "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9",
           "WANDB_INIT_TIMEOUT": "10"}
    res = cli("train", "lm", *TINY, "--max_steps=2", "--eval_every=2", env=env, timeout=240)
    assert res.returncode == 0, res.stderr
    assert "W&B init failed in online mode" in res.stderr and "retrying offline" in res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    assert rundir.read_summary(run)["wandb"]["mode"] == "offline"
    wandb_offline_run(run)


def test_under_wandb_agent_it_joins_the_sweep_run(cli):
    env = {"WANDB_SWEEP_ID": "sweep1", "WANDB_RUN_ID": "trial7abc"}
    res = cli("train", "lm", *TINY, "--max_steps=2", "--eval_every=2", "--lr=0.002", env=env)
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    wb_summary, _ = wandb_offline_run(run)
    assert wb_summary["run_id"] == "trial7abc"
    assert wb_summary["config"]["lr"] == 0.002
    assert rundir.read_summary(run)["wandb"]["id"] == "trial7abc"


@probes("wandb_mode")
def test_wandb_disabled_still_writes_the_run_dir(cli):
    res = cli("train", "lm", *TINY, "--max_steps=2", "--eval_every=2", "--wandb_mode=disabled")
    assert res.returncode == 0, res.stderr
    (run,) = run_dirs(cli.cwd / "runs")
    assert not (run / "wandb").exists()
    assert len(_rows(run, "train/loss")) == 2


def test_missing_data_file_is_one_line_exit_2(cli):
    res = cli("train", "lm", "--data=nothing-here.jsonl", "--max_steps=2")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: ") and "nothing-here.jsonl" in res.stderr

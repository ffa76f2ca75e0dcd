"""`blueberry train scanline` end to end with the scanline-tiny preset (the default), through the
real CLI: the same trainer, run dir and offline W&B run as the LM; then `blueberry evaluate` on the
held-out test images, whose balanced accuracy must clearly beat chance (0.25 for 4 classes)."""

import json
import math

import pytest
import yaml

from blueberry import rundir
from conftest import run_cli, run_dirs, wandb_offline_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("scanline")
    res = run_cli("train", "scanline", cwd=cwd, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = run_dirs(cwd / "runs")
    return cwd, run


def test_preset_trains_with_per_class_metrics_gap_and_confusion_matrix(trained):
    _, run = trained
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["task"], config["preset"], config["model"]) == ("scanline", "scanline-tiny", "cnn_lstm")
    train_windows = rundir.read_summary(run)["data"]["windows"]["train"]
    # the epoch budget, turned into optimizer steps: 4 epochs of batches of 32 windows
    assert config["epochs"] == 4 and config["max_steps"] == math.ceil(4 / (32 / train_windows))

    rows = rundir.read_metrics(run)
    evals = [r for r in rows if "val/balanced_accuracy" in r]
    assert len(evals) >= 4                       # step 0 and once per epoch
    last = evals[-1]
    for key in ("val/loss", "val/accuracy", "val/auroc", "val/recall/atoms", "val/recall/defects",
                "train_eval/balanced_accuracy", "gap/loss", "gap/balanced_accuracy"):
        assert key in last, key
    assert last["gap/balanced_accuracy"] == pytest.approx(last["train_eval/balanced_accuracy"] - last["val/balanced_accuracy"])
    assert last["val/balanced_accuracy"] > evals[0]["val/balanced_accuracy"] + 0.1    # it learned
    assert (run / "plots" / "val__confusion_matrix.png").stat().st_size > 1000

    summary = rundir.read_summary(run)
    assert summary["status"] == "finished" and summary["best"]["metric"] == "val/balanced_accuracy"
    assert summary["best"]["value"] == max(r["val/balanced_accuracy"] for r in evals)
    assert summary["params"]["total"] == summary["params"]["active"] > 1000
    stats = summary["data"]
    assert stats["class_names"] == ["atoms", "asymmetries", "rows", "defects"]
    assert stats["class_weights"][0] > stats["class_weights"][1]          # rare atoms weigh more
    assert sum(stats["images"].values()) == 300 and min(stats["images"].values()) > 0

    wb_summary, history = wandb_offline_run(run)
    assert wb_summary["config"]["model"] == "cnn_lstm"
    media = list(run.glob("wandb/offline-run-*/files/media/images/val/confusion_matrix_*.png"))
    assert len(media) == len(evals)                                  # the W&B image at every evaluation
    assert max(r.get("val/balanced_accuracy", 0) for r in history) == summary["best"]["value"]


def test_evaluate_test_split_beats_chance_clearly(trained):
    cwd, run = trained
    res = run_cli("evaluate", str(run), "--split", "test", cwd=cwd, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((run / "eval-test.json").read_text())["metrics"]
    assert metrics["test/balanced_accuracy"] > 0.4 and metrics["test/auroc"] > 0.7
    assert "test/balanced_accuracy" in res.stdout
    assert (run / "plots" / "test__confusion_matrix.png").exists()

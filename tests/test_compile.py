"""--compile=true: the model is compiled (in place), trains as the eager model does, and its checkpoints
load into an uncompiled model. The MoE layer's fp32 grouped GEMMs run outside the graph (torch
traces torch._grouped_mm in bf16 only); this run covers that graph break."""

import pytest
import torch

from blueberry import rundir
from probes import probes
from test_fields_reach_code import train_inprocess


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _losses(run_dir):
    return [r["train/loss"] for r in rundir.read_metrics(run_dir) if "train/loss" in r]


@probes("compile")
def test_compile_true_compiles_the_model_and_trains_like_eager(tmp_path, fresh_dynamo):
    from torch._dynamo.utils import counters

    from blueberry.train.evaluate import evaluate_run

    eager = train_inprocess(tmp_path / "eager", max_steps=6, eval_every=100, bias_update_rate=0.01)
    assert counters["stats"]["unique_graphs"] == 0
    compiled = train_inprocess(tmp_path / "compiled", compile="true", max_steps=6, eval_every=100,
                               bias_update_rate=0.01)
    assert counters["stats"]["unique_graphs"] > 0               # dynamo compiled the model's forward
    assert _losses(compiled) == pytest.approx(_losses(eager), rel=1e-4)
    assert _losses(compiled)[-1] < _losses(compiled)[0]
    # In-place compile keeps state_dict keys: the checkpoint loads strictly into a plain model.
    metrics, _ = evaluate_run(compiled, "val", which="latest")
    assert metrics["val/loss"] < _losses(compiled)[0]

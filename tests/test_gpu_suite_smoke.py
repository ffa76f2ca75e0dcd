"""`python -m benchmarks.gpu_suite --smoke`: every part of the GPU suite runs at tiny shapes on the CPU, in
an interpreter where wandb and datasets cannot be imported (the GPU image has neither), and the one JSON
it writes holds each part's figures."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
# As on the GPU image: `import wandb` / `import datasets` fail in the suite's own interpreter.
BLOCKED = ("import sys; sys.modules.update(wandb=None, datasets=None); "
           "from benchmarks.gpu_suite import main; main(sys.argv[1:])")


def test_gpu_suite_smoke_runs_every_part_without_wandb_or_datasets(tmp_path):
    out = tmp_path / "suite.json"
    proc = subprocess.run([sys.executable, "-c", BLOCKED, "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = json.loads(out.read_text())["parts"]
    assert sorted(parts) == ["expert_parallel", "moe_layer", "peers", "train_e2e", "train_step"]
    for name, part in parts.items():
        assert "error" not in part, f"{name}: {part['error']}"
    assert parts["moe_layer"]["speedup_vs_mask_loop"]["exp3"] > 0
    compared = parts["moe_layer"]["record"]["shapes"]["exp3"]["max_abs_err_vs_blueberry_fp32"]
    assert {"blueberry-grouped", "blueberry-loop", "mask-loop"} <= set(compared)     # both dispatch paths checked
    assert parts["train_step"]["tokens_per_s"] > 0
    case = parts["peers"]["record"]["cases"]["lm-tiny:mixtral"]
    assert case["params"]["blueberry"] == case["params"]["mixtral"] > 0
    assert parts["peers"]["speedups"]["lm-tiny:mixtral"] > 0
    e2e = parts["train_e2e"]
    assert e2e["exit_code"] == 0 and e2e["steps_logged"] == 3 and e2e["last_tokens_per_s"] > 0
    assert e2e["final_val_loss"] > 0
    ep = parts["expert_parallel"]   # 2 gloo ranks here, 2 NCCL ranks on a GPU machine
    assert ep["steps"] == 4 and ep["max_loss_gap_ep_vs_one_process"] < 1e-4 and ep["EP=2_tokens_per_s"] > 0

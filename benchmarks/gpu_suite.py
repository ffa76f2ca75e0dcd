"""The GPU figures in one command (about 8 minutes on one H100-class GPU), written to one JSON.

    python -m benchmarks.gpu_suite                  # on a GPU machine
    python -m benchmarks.gpu_suite --smoke          # the same code at tiny shapes on the CPU (CI runs it)

Parts, each the project's own benchmark called as a function:
  moe_layer   benchmarks.moe_layer in bf16, 16384 tokens, both shapes (goal: >= 3 x the mask loop)
  train_step  benchmarks.train_step: moe-exp8 at seq 512, bf16, compiled; tokens/s and MFU
              (goal: >= 400k tokens/s on an H100)
  peers       benchmarks.peers: every case in bf16 (goal: >= 1.5 x each peer)
  train_e2e   `blueberry train lm --preset moe-exp8 --mixed_precision bf16 --compile=true` for 20 steps
              in a fresh interpreter, synthetic data with an 8192-token BPE (the hub is not needed); its
              wall time, its exit code and the last logged tokens/s. The first build of the token cache
              needs `datasets` and `rensa`: where one is missing this part names it and the rest runs.
  expert_parallel  moe-exp8's shape, fp32, 20 steps on 2 GPUs over NCCL: `--expert_parallel=2` and plain
              DDP, against one process on the same global batches; the largest train-loss gap to one
              process (goal: < 1e-4) and each layout's tokens/s. Needs 2 GPUs (NCCL puts one rank on
              each); with fewer it says so. --smoke: 2 CPU ranks over gloo at tiny shapes.

Nothing here imports wandb or datasets (the GPU image has neither); a part that fails is recorded with
its error and the suite goes on, so one JSON always comes back.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).parent.parent
# The tiny model of the smoke mode, as CLI options (tests/conftest.py TINY's shape).
SMOKE_MODEL = {"d_model": "32", "n_layers": "1", "n_heads": "2", "expert_d_ff": "64", "d_ff": "64",
               "seq_len": "32", "batch_size": "4"}


def _moe_layer(smoke: bool, out: Path) -> dict:
    from benchmarks import moe_layer

    argv = ["--out", str(out)]
    argv += (["--device", "cpu", "--dtype", "fp32", "--tokens", "64", "--iters", "1", "--warmup", "0",
              "--shapes", "exp3"] if smoke else ["--dtype", "bf16", "--tokens", "16384", "--iters", "20"])
    moe_layer.main(argv)
    record = json.loads(out.read_text())
    return {"record": record, "speedup_vs_mask_loop": {s: v["ratios"]["speedup_vs_mask_loop"]
                                                       for s, v in record["shapes"].items()}}


def _train_step(smoke: bool, out: Path) -> dict:
    from benchmarks import train_step

    if smoke:
        argv = ["--device", "cpu", "--presets", "lm-tiny", "--compile", "off", "--steps", "1", "--warmup", "1",
                "--vocab", "256", *[f"--set={k}={v}" for k, v in SMOKE_MODEL.items()]]
    else:
        argv = ["--presets", "moe-exp8", "--seq-len", "512", "--compile", "on", "--mixed-precision", "bf16",
                "--steps", "10", "--warmup", "3"]
    train_step.main([*argv, "--out", str(out)])
    record = json.loads(out.read_text())
    preset = next(iter(record["presets"].values()))
    mode = preset["modes"].get("compile") or preset["modes"]["eager"]
    return {"record": record, "tokens_per_s": mode["tokens_per_s"], "mfu": mode.get("mfu"),
            "goal_400k_tokens_per_s": preset.get("goal_400k_tokens_per_s")}


def _peers(smoke: bool, out: Path) -> dict:
    from benchmarks import peers

    argv = ["--device", "cpu", "--smoke", "--cases", "lm-tiny:mixtral"] if smoke else ["--rounds", "8"]
    record = peers.main([*argv, "--out", str(out)])
    return {"record": record, "speedups": {case: v[f"speedup_vs_{v['peer']}"] for case, v in record["cases"].items()}}


def _train_e2e(smoke: bool, out: Path) -> dict:
    if smoke:
        args = ["--preset=lm-tiny", *[f"--{k}={v}" for k, v in SMOKE_MODEL.items()], "--tokenizer=bpe:300",
                "--synthetic_docs=300", "--eval_batches=2", "--max_steps=3", "--mixed_precision=bf16",
                "--compile=false"]
    else:
        args = ["--preset=moe-exp8", "--data=synthetic", "--tokenizer=bpe:8192", "--max_steps=20",
                "--mixed_precision=bf16", "--compile=true", "--warmup_steps=5", "--eval_every=20"]
    cmd = [sys.executable, "-m", "blueberry.cli", "train", "lm", *args, "--log_every=1", "--wandb_mode=disabled",
           f"--out_dir={out / 'runs'}"]
    env = {**os.environ, "BLUEBERRY_CACHE": str(out / "cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out, timeout=900)
    result = {"command": " ".join(["blueberry", *cmd[3:]]), "exit_code": proc.returncode,
              "wall_s": time.time() - t0}
    runs = sorted((out / "runs").glob("*/metrics.jsonl"))
    if proc.returncode or not runs:
        missing = re.search(r"No module named '([\w.]+)'", proc.stderr)
        if missing:
            result["missing_module"] = missing.group(1)    # the GPU image lacks datasets: bring its wheel
        result["error"] = (proc.stderr or proc.stdout).strip()[-2000:]
        return result
    rows = [json.loads(line) for line in runs[-1].read_text().splitlines() if line.strip()]
    rates = [r["train/tokens_per_s"] for r in rows if "train/tokens_per_s" in r]
    summary = json.loads((runs[-1].parent / "summary.json").read_text())
    result.update(steps_logged=len(rates), last_tokens_per_s=rates[-1] if rates else None,
                  run_wall_time_s=summary.get("wall_time_s"), final_val_loss=summary.get("final", {}).get("val/loss"))
    return result


def _expert_parallel(smoke: bool, out: Path) -> dict:
    import torch

    if not smoke and torch.cuda.device_count() < 2:
        return {"skipped": f"needs 2 GPUs for 2 NCCL ranks; this machine has {torch.cuda.device_count()}"}
    if smoke:
        model = [*[f"--{k}={v}" for k, v in SMOKE_MODEL.items()], "--tokenizer=bpe:300", "--synthetic_docs=300",
                 "--max_steps=4"]
        two = ["--config_file", str(ROOT / "launch" / "cpu-2proc.yaml")]
    else:
        model = ["--preset=moe-exp8", "--tokenizer=bpe:8192", "--batch_size=8", "--seq_len=512", "--max_steps=20"]
        two = ["--multi_gpu", "--num_processes=2"]
    common = ["-m", "blueberry.cli", "train", "lm", *model, "--data=synthetic", "--dropout=0", "--eval_batches=1",
              "--eval_every=1000", "--log_every=1", "--wandb_mode=disabled", "--mixed_precision=no"]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", *two, "--main_process_port=0"]
    env = {**os.environ, "BLUEBERRY_CACHE": str(out / "cache"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    layouts = {"one process": [sys.executable, *common, "--grad_accum=2"],
               "EP=2": [*accelerate, *common, "--expert_parallel=2"]}
    if not smoke:   # the comparison that needs real devices
        layouts["DDP"] = [*accelerate, *common]
    result, losses = {}, {}
    for name, cmd in layouts.items():
        run_out = out / name.replace(" ", "_").replace("=", "")
        proc = subprocess.run([*cmd, f"--out_dir={run_out}"], env=env, capture_output=True, text=True, cwd=out,
                              timeout=900)
        if proc.returncode:
            return {**result, "error": f"{name}: {(proc.stderr or proc.stdout).strip()[-2000:]}"}
        (metrics,) = run_out.glob("*/metrics.jsonl")
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        losses[name] = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
        rates = [r["train/tokens_per_s"] for r in rows if "train/tokens_per_s" in r][2:]   # past start-up
        result[f"{name}_tokens_per_s"] = sorted(rates)[len(rates) // 2] if rates else None
    gap = max(abs(losses["EP=2"][s] - losses["one process"][s]) for s in losses["one process"])
    return {**result, "max_loss_gap_ep_vs_one_process": gap, "goal_gap_below_1e-4": gap < 1e-4,
            "steps": len(losses["EP=2"])}


PARTS = {"moe_layer": _moe_layer, "train_step": _train_step, "peers": _peers, "train_e2e": _train_e2e,
         "expert_parallel": _expert_parallel}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks that every part runs")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/gpu_suite-<device>.json)")
    args = parser.parse_args(argv)
    import torch

    from benchmarks.common import device_label, environment, pick_device

    device = torch.device("cpu") if args.smoke else pick_device(None)
    if device.type != "cuda" and not args.smoke:
        print("no GPU here: the suite's figures need one (run with --smoke to check the code on the CPU)")
    record = {"benchmark": "gpu_suite", **environment(device), "smoke": args.smoke, "parts": {}}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="blueberry-gpu-suite-") as tmp:
        for name in args.parts.split(","):
            if name not in PARTS:
                raise SystemExit(f"--parts: {name!r} is not one of {', '.join(PARTS)}")
            print(f"\n=== {name} ===", flush=True)
            t0 = time.time()
            part_dir = Path(tmp) / name
            part_dir.mkdir()
            try:
                result = PARTS[name](args.smoke, part_dir if name in ("train_e2e", "expert_parallel")
                                     else part_dir / f"{name}.json")
            except Exception as e:   # noqa: BLE001 - one failed part must not lose the others' figures
                traceback.print_exc()
                result = {"error": f"{type(e).__name__}: {e}"}
            result["part_wall_s"] = time.time() - t0
            record["parts"][name] = result
    record["wall_s"] = time.time() - started
    print("\n=== summary ===")
    for name, result in record["parts"].items():
        shown = {k: v for k, v in result.items() if k != "record"}
        print(f"{name}: {json.dumps(shown, default=str)[:400]}")
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / \
        f"gpu_suite{'-smoke' if args.smoke else ''}-{device_label(device)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"\nwrote {path} ({record['wall_s']:.0f} s)")
    return record


if __name__ == "__main__":
    main()

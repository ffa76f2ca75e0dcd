"""Two CPU ranks, four layouts: tokens/s of the real `blueberry train lm` under DDP, FSDP2, expert
parallelism (EP=2, DDP for the rest) and EP=2 + FSDP2, at moe-exp8's model shape.

    python -m benchmarks.parallel                                   # moe-exp8 shape, 12 steps, each layout twice
    python -m benchmarks.parallel --steps 20 --repeats 3 -- --batch_size=4

Every run is `accelerate launch --config_file launch/{cpu,fsdp-cpu}-2proc.yaml -m blueberry.cli train lm
--preset moe-exp8` offline (synthetic data, bpe:8192) with a CPU-sized batch (batch_size 2, seq_len 128,
grad_accum 1, dropout 0), plus --expert_parallel=2 for the EP layouts. The figure is train/tokens_per_s
from each run's metrics.jsonl (both ranks, evaluation excluded), the median over the steps after the
first few (benchmarks/ranks.py); layouts alternate, so other load on the machine hits them alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import print_table, write_json
from benchmarks.ranks import SKIP_FIRST, tokens_per_s

REPO = Path(__file__).resolve().parents[1]
# layout -> (launch config, extra options)
LAYOUTS = {"DDP": ("cpu-2proc.yaml", []), "FSDP2": ("fsdp-cpu-2proc.yaml", []),
           "EP=2 + DDP": ("cpu-2proc.yaml", ["--expert_parallel=2"]),
           "EP=2 + FSDP2": ("fsdp-cpu-2proc.yaml", ["--expert_parallel=2"])}
CPU_SIZED = ["--data=synthetic", "--tokenizer=bpe:8192", "--synthetic_docs=2000", "--batch_size=2", "--seq_len=128",
             "--grad_accum=1", "--dropout=0", "--eval_batches=1"]


def command(layout: str, args, out_dir: Path) -> list[str]:
    config, options = LAYOUTS[layout]
    return [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", str(REPO / "launch" / config),
            "--main_process_port", "0", "-m", "blueberry.cli", "train", "lm", f"--preset={args.preset}", *CPU_SIZED,
            f"--max_steps={args.steps}", f"--eval_every={args.steps}", "--log_every=1", "--wandb_mode=disabled",
            f"--out_dir={out_dir}", *options, *args.extra]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parallel", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="moe-exp8")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (default 12)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each layout, alternating (default 2)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/parallel-cpu.json)")
    parser.add_argument("extra", nargs="*", help="more `blueberry train lm` options, after --")
    args = parser.parse_args(argv)
    if args.steps <= SKIP_FIRST + 2:
        raise SystemExit(f"--steps: give more than {SKIP_FIRST + 2}")
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    rates: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    with tempfile.TemporaryDirectory(prefix="bb-parallel-") as tmp:
        for i in range(args.repeats):
            for j, layout in enumerate(LAYOUTS):
                out_dir = Path(tmp) / f"l{j}-{i}"
                res = subprocess.run(command(layout, args, out_dir), cwd=tmp, env=env, capture_output=True, text=True)
                if res.returncode != 0:
                    raise SystemExit(f"{layout} failed:\n{res.stderr[-3000:]}")
                rates[layout].append(statistics.median(tokens_per_s(out_dir)))
                print(f"run {i + 1}, {layout}: {rates[layout][-1]:,.0f} tokens/s", flush=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    print()
    print_table(["layout (2 CPU ranks)", "tokens/s (median of runs)", "runs", "/ DDP"],
                [[k, median[k], ", ".join(f"{v:,.0f}" for v in rates[k]), median[k] / median["DDP"]] for k in LAYOUTS])
    record = {"benchmark": "parallel", "preset": args.preset, "steps": args.steps, "options": CPU_SIZED + args.extra,
              "cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0], "tokens_per_s": rates,
              "median": median, "over_ddp": {k: median[k] / median["DDP"] for k in LAYOUTS}}
    print(f"wrote {write_json(record, args.out, 'parallel', 'cpu')}")


if __name__ == "__main__":
    main()

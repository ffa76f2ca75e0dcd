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

import os
import statistics
import sys
from pathlib import Path

from benchmarks.common import print_table, write_json
from benchmarks.ranks import alternate, parse_args

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
    args = parse_args(argv, "python -m benchmarks.parallel", __doc__.split("\n")[0], "moe-exp8", 12, "layout")
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    rates = alternate(LAYOUTS, lambda layout, out_dir: (command(layout, args, out_dir), env), args.repeats)
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

"""Two CPU ranks against one process: tokens/s of the real `blueberry train lm` (lm-tiny by default).

    python -m benchmarks.ranks                                 # lm-tiny, 30 steps, each kind twice, alternating
    python -m benchmarks.ranks --steps 100 --repeats 3 -- --seq_len=256

One process: `python -m blueberry.cli train lm ...`, with torch's own thread count and again with
OMP_NUM_THREADS=1. Two ranks: `accelerate launch --config_file launch/cpu-2proc.yaml -m blueberry.cli
train lm ...` (gloo, as tests/test_distributed.py launches them; torchrun gives each rank one thread).
Each rank keeps batch_size, so two ranks train twice the tokens per step; the figure compared is
train/tokens_per_s from each run's metrics.jsonl (all ranks together, evaluation excluded), the median
over the logged steps after the first few. Runs alternate, so load from other processes hits both alike.
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
from blueberry import rundir

REPO = Path(__file__).resolve().parents[1]
SKIP_FIRST = 3     # steps whose windows hold start-up costs
KINDS = {"1 process": (1, None), "1 process, 1 thread": (1, 1), "2 ranks": (2, None)}   # (ranks, threads)


def command(ranks: int, args, out_dir: Path) -> list[str]:
    train = ["-m", "blueberry.cli", "train", "lm", f"--preset={args.preset}", f"--max_steps={args.steps}",
             f"--eval_every={args.steps}", "--log_every=1", "--wandb_mode=disabled", f"--out_dir={out_dir}",
             *args.extra]
    if ranks == 1:
        return [sys.executable, *train]
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    return [accelerate, "launch", "--config_file", str(REPO / "launch" / "cpu-2proc.yaml"),
            "--main_process_port", "0", *train]


def tokens_per_s(out_dir: Path) -> list[float]:
    (run,) = [p for p in out_dir.iterdir() if p.is_dir()]
    return [r["train/tokens_per_s"] for r in rundir.read_metrics(run)
            if "train/tokens_per_s" in r and r["step"] > SKIP_FIRST]


def parse_args(argv, prog: str, description: str, preset: str, steps: int, repeats_of: str) -> argparse.Namespace:
    """The options every run-alternating benchmark takes (this one and benchmarks/parallel.py)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--preset", default=preset)
    parser.add_argument("--steps", type=int, default=steps, help=f"optimizer steps per run (default {steps})")
    parser.add_argument("--repeats", type=int, default=2, help=f"runs of each {repeats_of}, alternating (default 2)")
    parser.add_argument("--out", help=f"JSON path (default benchmarks/results/{prog.rsplit('.', 1)[-1]}-cpu.json)")
    parser.add_argument("extra", nargs="*", help="more `blueberry train lm` options, after --")
    args = parser.parse_args(argv)
    if args.steps <= SKIP_FIRST + 2:
        raise SystemExit(f"--steps: give more than {SKIP_FIRST + 2}")
    return args


def alternate(kinds, launch, repeats: int) -> dict[str, list[float]]:
    """Each kind's runs, `repeats` rounds of one run per kind, so load from other processes hits all alike;
    launch(kind, out_dir) -> (command, environment). Returns each run's median tokens/s per kind."""
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="bb-ranks-") as tmp:
        for i in range(repeats):
            for j, kind in enumerate(kinds):
                out_dir = Path(tmp) / f"k{j}-{i}"
                cmd, env = launch(kind, out_dir)
                res = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
                if res.returncode != 0:
                    raise SystemExit(f"{kind} failed:\n{res.stderr[-3000:]}")
                run_rates = tokens_per_s(out_dir)
                rates[kind].append(statistics.median(run_rates))
                quartiles = statistics.quantiles(run_rates, n=4)
                print(f"run {i + 1}, {kind}: {statistics.median(run_rates):,.0f} tokens/s (steps {SKIP_FIRST + 1}-"
                      f"{SKIP_FIRST + len(run_rates)}, p25-p75 {quartiles[0]:,.0f}-{quartiles[2]:,.0f})", flush=True)
    return rates


def main(argv=None) -> None:
    args = parse_args(argv, "python -m benchmarks.ranks", __doc__.split("\n")[0], "lm-tiny", 30, "kind")
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}

    def launch(kind: str, out_dir: Path):
        ranks, threads = KINDS[kind]
        return command(ranks, args, out_dir), ({**env, "OMP_NUM_THREADS": str(threads)} if threads else env)

    rates = alternate(KINDS, launch, args.repeats)
    median = {k: statistics.median(v) for k, v in rates.items()}
    one, two = median["1 process"], median["2 ranks"]
    print()
    print_table(["processes", "tokens/s (median of runs)", "runs", "/ 1 process"],
                [[k, median[k], ", ".join(f"{v:,.0f}" for v in rates[k]), median[k] / one] for k in KINDS])
    print(f"2 ranks / 1 process: {two / one:.2f}x; 2 ranks / 1 process with 1 thread: "
          f"{two / median['1 process, 1 thread']:.2f}x")
    record = {"benchmark": "ranks", "preset": args.preset, "steps": args.steps, "extra": args.extra,
              "cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
              "tokens_per_s": rates, "median": median, "ratio_2_over_1": two / one,
              "ratio_2_over_1_thread": two / median["1 process, 1 thread"]}
    print(f"wrote {write_json(record, args.out, 'ranks', 'cpu')}")


if __name__ == "__main__":
    main()

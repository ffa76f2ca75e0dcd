"""Which value should a sweep name as its metric: the raw `val/loss` or the running best `val/loss_best`?
(issue 20 item 11). Simulated noisy sweeps, each run twice through blueberry's hyperband (the rule W&B's
controller runs, tests/test_sweep_engine.py): once on the raw curves, once on their running best.

    python -m benchmarks.sweep_target                 # 400 sweeps, a few seconds
    python -m benchmarks.sweep_target --sweeps 2000 --noise 0.05

A sweep: 16 runs of 27 evaluations, 4 at a time (a run starts when a slot frees, as agents take runs),
hyperband min_iter 2, eta 3 (judged at evaluations 2, 6, 18, after every evaluation of any run, as
`sweep local` polls). A run's curve: a floor set by its hyperparameters, an exponential descent, a late
regression in a share of runs (overfitting, an LR too high for the end of the schedule), and Gaussian
evaluation noise. Both targets see the same curves; the runs they stop may differ, and so may the
runs that go on to the end. Printed: sweeps whose stopped set differs; runs whose noise-free curve
ends more than 2 noise sigmas above its minimum (the regression `<metric>_best` hides in the W&B
summary and its parallel-coordinates panel); and whether W&B's Bayes input (SweepRun.metric_extremum: the best of
the history and summary) differs — it cannot, min(raw) == min(running min).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from blueberry.sweep.hyperband import runs_to_stop
from blueberry.sweep.objective import run_value

RESULTS = Path(__file__).parent / "results"
HYPERBAND = {"metric": {"name": "val/loss", "goal": "minimize"},
             "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 3}}


def sweep_curves(rng: np.random.Generator, runs: int, evals: int, noise: float,
                 regress_share: float) -> tuple[np.ndarray, np.ndarray]:
    """([runs, evals] validation losses of one sweep, the same without the evaluation noise)."""
    t = np.arange(1, evals + 1)
    floor = 3.0 + rng.uniform(0.0, 0.6, runs)[:, None]               # what the hyperparameters reach
    descent = rng.uniform(1.0, 3.0, runs)[:, None] * np.exp(-t / rng.uniform(2.0, 8.0, runs)[:, None])
    start = rng.integers(evals // 3, evals, runs)[:, None]            # where a regressing run turns
    slope = rng.uniform(0.005, 0.04, runs)[:, None] * (rng.random(runs) < regress_share)[:, None]
    regression = slope * np.clip(t - start, 0, None)
    clean = floor + descent + regression
    return clean + rng.normal(0.0, noise, (runs, evals)), clean


def run_sweep(curves: np.ndarray, running_best: bool, slots: int) -> tuple[set[int], dict[int, list[float]]]:
    """(runs hyperband stopped, raw history of every run) with `slots` runs at a time."""
    seen = np.minimum.accumulate(curves, axis=1) if running_best else curves
    queue = list(range(len(curves)))
    running: dict[int, int] = {}   # run -> evaluations logged
    raw: dict[int, list[float]] = {}
    stopped: set[int] = set()
    while queue or running:
        while queue and len(running) < slots:
            running[queue.pop(0)] = 0
        for run in list(running):
            running[run] += 1
            raw[run] = curves[run, :running[run]].tolist()
            if running[run] == curves.shape[1]:
                del running[run]
            histories = {r: seen[r, :len(raw[r])].tolist() for r in raw}
            for r in runs_to_stop(HYPERBAND, histories, set(running)):
                stopped.add(r)
                del running[r]
    return stopped, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweeps", type=int, default=400)
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--evals", type=int, default=27)
    parser.add_argument("--slots", type=int, default=4, help="runs at a time")
    parser.add_argument("--noise", type=float, default=0.03, help="sigma of the evaluation noise")
    parser.add_argument("--regress-share", type=float, default=0.3, help="share of runs that regress late")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    differ = best_differs = hidden = finished_runs = bayes_differs = 0
    picked_true = {"raw": [], "best": []}      # noise-free best value of the run each target's sweep picks
    truly_best_stopped = {"raw": 0, "best": 0}   # sweeps whose truly best run hyperband stopped
    for _ in range(args.sweeps):
        curves, clean = sweep_curves(rng, args.runs, args.evals, args.noise, args.regress_share)
        stopped_raw, raw = run_sweep(curves, running_best=False, slots=args.slots)
        stopped_best, raw_b = run_sweep(curves, running_best=True, slots=args.slots)
        differ += stopped_raw != stopped_best   # (Python bools: the counts stay ints for the JSON)
        # the sweep's best run as W&B's controller judges runs (best of history), under each target
        pick = {name: min(h, key=lambda r: run_value(h[r], "minimize")) for name, h in (("raw", raw), ("best", raw_b))}
        best_differs += pick["raw"] != pick["best"]
        truly_best = int(clean.min(axis=1).argmin())
        for name, stopped in (("raw", stopped_raw), ("best", stopped_best)):
            picked_true[name].append(float(clean[pick[name]].min()))
            truly_best_stopped[name] += truly_best in stopped
        # Bayes' input per run: the extremum of the target's history is the same number either way
        bayes_differs += any(run_value(h, "minimize") != run_value(np.minimum.accumulate(h).tolist(), "minimize")
                             for h in raw.values())
        for r in raw:   # runs that ran to the end under the raw target and truly got worse at the end
            if r not in stopped_raw:
                finished_runs += 1
                hidden += bool(clean[r, -1] - clean[r].min() > 2 * args.noise)
    result = {"sweeps": args.sweeps, "runs": args.runs, "evals": args.evals, "slots": args.slots, "noise": args.noise,
              "regress_share": args.regress_share, "seed": args.seed, "hyperband": HYPERBAND["early_terminate"],
              "stopped_set_differs": differ, "best_run_differs": best_differs, "bayes_input_differs": bayes_differs,
              "finished_runs": finished_runs, "final_worse_than_best_by_2_sigma": hidden,
              "truly_best_run_stopped": truly_best_stopped,
              "picked_run_true_best_mean": {k: float(np.mean(v)) for k, v in picked_true.items()},
              "python": platform.python_version()}
    print(f"{args.sweeps} sweeps of {args.runs} runs x {args.evals} evaluations, {args.slots} at a time, "
          f"noise sigma {args.noise}, {args.regress_share:.0%} of runs regress late; hyperband min_iter 2, eta 3")
    print(f"  hyperband stops a different set of runs:          {differ} of {args.sweeps} sweeps")
    print(f"  the sweep's best run (W&B's extremum) differs:    {best_differs} of {args.sweeps} sweeps")
    print(f"  the truly best run was stopped by hyperband:      raw {truly_best_stopped['raw']}, "
          f"_best {truly_best_stopped['best']} of {args.sweeps} sweeps")
    print(f"  noise-free best of the run the sweep picks, mean: raw {np.mean(picked_true['raw']):.4f}, "
          f"_best {np.mean(picked_true['best']):.4f}")
    print(f"  Bayes input (metric_extremum) differs:            {bayes_differs} of {args.sweeps} sweeps")
    print(f"  finished runs that end > 2 sigma worse than their best, noise aside (a summary and parallel-"
          f"coordinates value of {{metric}}_best shows their best instead): {hidden} of {finished_runs}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "sweep_target.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

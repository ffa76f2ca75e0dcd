"""Does the best learning rate transfer across width? b of log lr* = a + b log(width) under sp and muP,
AdamW and Muon, and the LR predicted for a held-out width against the one measured there.

    python -m benchmarks.transfer                                   # the full grid: hours on one core
    python -m benchmarks.transfer --corpora synthetic --studies lr-transfer-mup,lr-transfer --heldout-seeds 1
    python -m benchmarks.transfer --analyse-only                    # refit the sweep dirs already run

Each study is a shipped sweep YAML (sweeps/STUDY.yaml: widths 32/64/128 x 7 LRs a factor 2 apart x
2 seeds, 100 steps) run by `blueberry sweep local` with one worker, as a user runs it; corpus
`shakespeare` adds --override data=<the 37 works in ../shared>. The held-out width is the same YAML
with its width recipe replaced by d_model 256 (expert_d_ff 512) and --heldout-seeds seeds, over the
same LR grid, fixed before any fit is made. Then `blueberry report transfer`'s fit (report/transfer.py)
on the three widths predicts lr* at 256 with its interval, and the per-width fit of the 256 runs
measures it. A sweep dir already complete is reused (sweep local resumes), so a stopped benchmark
continues where it was. Run it niced on one core: OMP_NUM_THREADS=1 nice -n 10 python -m benchmarks.transfer
Results: benchmarks/results/transfer-cpu.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STUDIES = ("lr-transfer-mup", "lr-transfer", "lr-transfer-mup-muon", "lr-transfer-muon")
CORPORA = ("synthetic", "shakespeare")
SHAKESPEARE = REPO.parent / "shared" / "data" / "text" / "shakespeare"
HELDOUT = {"name": "w256", "d_model": 256, "expert_d_ff": 512}


def sweep_dirs(root: Path, corpus: str, study: str) -> tuple[Path, Path]:
    return root / corpus / study, root / corpus / f"{study}-w{HELDOUT['d_model']}"


def heldout_yaml(study: str, seeds: int, path: Path) -> Path:
    """The study's YAML at the held-out width only (same LRs, `seeds` seeds)."""
    config = yaml.safe_load((REPO / "sweeps" / f"{study}.yaml").read_text())
    config["name"] = f"{study}-w{HELDOUT['d_model']}"
    config["parameters"]["recipe"] = {"values": [dict(HELDOUT)]}
    config["parameters"]["seed"] = {"values": list(range(seeds))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_sweep(yaml_path: Path, sweep_dir: Path, overrides: list[str]) -> float:
    """`blueberry sweep local` on one core; returns the wall seconds."""
    args = [sys.executable, "-m", "blueberry.cli", "sweep", "local", str(yaml_path), "--dir", str(sweep_dir),
            "--workers", "1", "--no-report", "--override", "wandb_mode=disabled"]
    for item in overrides:
        args += ["--override", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(args[3:])}", flush=True)
    res = subprocess.run(args, cwd=REPO, env=env)
    if res.returncode not in (0, 1):
        raise SystemExit(f"sweep local exited {res.returncode} on {yaml_path}")
    return time.time() - t0


def analyse(root: Path, corpus: str, study: str) -> dict | None:
    from blueberry.report.load import load_runs
    from blueberry.report.transfer import transfer_analyses

    main_dir, held_dir = sweep_dirs(root, corpus, study)
    if not (main_dir / "sweep.yaml").exists():
        return None
    (fit,) = transfer_analyses(load_runs([main_dir]).runs, target=HELDOUT["d_model"])
    out = {"corpus": corpus, "study": study, "fit": fit.to_json()}
    if (held_dir / "sweep.yaml").exists():
        (held,) = transfer_analyses(load_runs([held_dir]).runs)
        measured = held.widths[0] if held.widths else None
        out["heldout"] = measured.to_json() if measured else None
        if measured and measured.lr_star and fit.prediction:
            out["grid_steps_off"] = math.log2(measured.lr_star / fit.prediction.lr)
    return out


def markdown(results: list[dict]) -> str:
    lines = ["| corpus | study | b [95% CI] | verdict | lr* w32 / w64 / w128 | best loss w32 / w64 / w128 | "
             "predicted lr* at 256 [95% CI] | measured lr* at 256 [95% CI] | off (x2 steps) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        f = r["fit"]
        widths = f["widths"]
        lrs = " / ".join(_g(w["lr_star"]) for w in widths)
        losses = " / ".join(_g(w["best_loss"]) for w in widths)
        p = f.get("prediction") or {}
        held = r.get("heldout") or {}
        lines.append(f"| {r['corpus']} | {r['study']} | {_g(f['b'])} [{_g(f['b_low'])}, {_g(f['b_high'])}] | "
                     f"{f['verdict']} | {lrs} | {losses} | {_g(p.get('lr'))} [{_g(p.get('low'))}, {_g(p.get('high'))}] | "
                     f"{_g(held.get('lr_star'))} [{_g(held.get('lr_low'))}, {_g(held.get('lr_high'))}] | "
                     f"{_g(r.get('grid_steps_off'))} |")
    return "\n".join(lines)


def _g(x) -> str:
    return "—" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--studies", default=",".join(STUDIES))
    ap.add_argument("--heldout-seeds", type=int, default=2, help="Seeds at the held-out width 256 (0 = skip it); "
                    "the issue's grid has 2, the run in the docs 1 (time).")
    ap.add_argument("--dir", default=str(REPO / "runs" / "benchmarks" / "transfer"), help="Where the sweep dirs go.")
    ap.add_argument("--shakespeare", default=str(SHAKESPEARE), help="Folder of the Shakespeare text.")
    ap.add_argument("--analyse-only", action="store_true", help="Fit the sweep dirs already there; run nothing.")
    ap.add_argument("--out", default=str(RESULTS / "transfer-cpu.json"))
    args = ap.parse_args()
    root = Path(args.dir)
    corpora, studies = args.corpora.split(","), args.studies.split(",")
    timings = {}
    if not args.analyse_only:
        for corpus in corpora:
            overrides = [f"data={args.shakespeare}"] if corpus == "shakespeare" else []
            for study in studies:
                main_dir, held_dir = sweep_dirs(root, corpus, study)
                timings[f"{corpus}/{study}"] = run_sweep(REPO / "sweeps" / f"{study}.yaml", main_dir, overrides)
                if args.heldout_seeds:
                    path = heldout_yaml(study, args.heldout_seeds, root / corpus / f"{study}-w256.yaml")
                    timings[f"{corpus}/{study}-w256"] = run_sweep(path, held_dir, overrides)
    results = [r for corpus in corpora for study in studies if (r := analyse(root, corpus, study))]
    record = {"what": "lr transfer across width (issue 21)", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "heldout_width": HELDOUT["d_model"], "heldout_seeds": args.heldout_seeds, "results": results,
              "sweep_seconds": timings, "load_avg_1min": os.getloadavg()[0]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(markdown(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Bad-input audit: every option of every command given values it must refuse, through the real CLI.

    python -m benchmarks.bad_inputs                 # ~700 invocations, 2 at a time (~10 min on 2 cores)
    python -m benchmarks.bad_inputs --only train    # commands whose path starts with this

The cases are generated, not hand-picked: each field of `train lm`, `train scanline` and `coords` gets
a value of the wrong type, NaN for floats, each side of its bounds (from the config's own metadata),
an unknown choice, and for string fields the bad values in STRINGS; the other commands' options get
their click types' bad values and the values in OTHERS. A case passes when, as in
tests/test_bad_inputs.py: exit 2, no traceback, one `error:` line that ends the output, no new file
or run dir in the working folder, and the finished run the command names is byte-for-byte unchanged.

Writes benchmarks/results/bad_inputs.json (counts and every failing case) and prints the counts.
Not a test: it takes minutes. tests/test_bad_inputs.py holds a row for each fault it found.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from blueberry.rundir import record_digest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

LM = ["--d_model=32", "--n_layers=1", "--n_heads=2", "--expert_d_ff=64", "--d_ff=64", "--seq_len=32",
      "--batch_size=4", "--synthetic_docs=300", "--tokenizer=bpe:300", "--eval_batches=2", "--warmup_steps=1",
      "--max_steps=2", "--eval_every=2"]
SCANLINE = ["--n_images=40", "--image_size=32", "--lines_per_sample=2", "--model=sequential", "--d_model=16",
            "--n_layers=1", "--n_heads=2", "--batch_size=8", "--max_steps=2", "--eval_every=2", "--warmup_steps=1"]
COORDS = ["--widths=16,32", "--base-width=16", "--steps=1", "--seeds=1"]

# Bad values of string fields (a field absent here takes any string: a name, a W&B project, a column).
STRINGS = {
    "preset": ["no-such-preset"],
    "name": ["a/b", ".."],
    "out_dir": ["/proc/blueberry-runs"],
    "resume": ["/nonexistent/run"],
    "best_metric": ["val/nope"],
    "data": ["/nonexistent/data.txt", "hf:"],
    "tokenizer": ["bpe:abc", "bpe:-5", "bpe:0", "bpe:257"],
    "cache_dir": ["/proc/blueberry-cache"],
    "class_shares": ["0.5,abc", "1,2", "-1,1,1,1"],
    "class_weights": ["abc", "1,2", "1,1,1,-1"],
    "wandb_tags": [],
}

# (argv after `blueberry`, needs the finished run); {run}, {file} and {cwd} are filled in per case.
OTHERS = [
    (["evaluate", "{run}", "--split=bogus"], True),
    (["evaluate", "{run}", "--checkpoint=/nonexistent"], True),
    (["evaluate", "{run}", "--checkpoint=bogus"], True),
    (["evaluate", "{run}", "--out=/proc/blueberry-eval"], True),
    (["evaluate", "{run}", "--out={file}/eval"], True),
    (["evaluate", "{run}", "--split=bogus", "--out={cwd}/new"], True),          # refused: --out not made
    (["evaluate", "{run}", "--checkpoint=bogus", "--out={cwd}/new"], True),
    (["evaluate", "{cwd}/missing"], False),
    (["evaluate", "{file}"], False),
    (["sync", "/nonexistent"], False),
    (["sync", "{file}"], False),
    (["memory", "--preset=no-such-preset"], False),
    (["memory", "--config={cwd}/missing.yaml"], False),
    (["memory", "--world-size=0"], False),
    (["memory", "--world-size=abc"], False),
    (["memory", "--vocab-size=0"], False),
    (["memory", "--expert-parallel=0"], False),
    (["memory", "--expert-parallel=3"], False),
    (["coords", *COORDS, "--widths=abc"], False),
    (["coords", *COORDS, "--widths=16"], False),
    (["coords", *COORDS, "--widths=0,16"], False),
    (["coords", *COORDS, "--base-width=0"], False),
    (["coords", *COORDS, "--base-width=24"], False),
    (["coords", *COORDS, "--steps=0"], False),
    (["coords", *COORDS, "--seeds=0"], False),
    (["coords", *COORDS, "--drop=bogus"], False),
    (["coords", *COORDS, "--out=/proc/blueberry-coords"], False),
    (["coords", *COORDS, "--config={cwd}/missing.yaml"], False),
    (["checkpoint", "consolidate", "{run}", "--checkpoint=bogus"], True),
    (["checkpoint", "consolidate", "/nonexistent"], False),
    (["checkpoint", "consolidate", "{cwd}"], False),
    (["sweep", "validate", "{cwd}/missing.yaml"], False),
    (["sweep", "validate", "{cwd}/broken.yaml"], False),
    (["sweep", "validate", "{cwd}/badsweep.yaml"], False),
    (["sweep", "create", "{cwd}/missing.yaml"], False),
    (["sweep", "create", "{cwd}/badsweep.yaml"], False),
    (["sweep", "agent", "x/y/z", "--count=0"], False),
    (["sweep", "agent", "x/y/z", "--max-consecutive-failures=0"], False),
    (["sweep", "local", "{cwd}/missing.yaml"], False),
    (["sweep", "local", "{cwd}/badsweep.yaml"], False),
    (["sweep", "local", "{repo}/sweeps/quickstart.yaml", "--workers=0"], False),
    (["sweep", "local", "{repo}/sweeps/quickstart.yaml", "--count=0"], False),
    (["sweep", "local", "{repo}/sweeps/quickstart.yaml", "--seed=abc"], False),
    (["sweep", "local", "{repo}/sweeps/quickstart.yaml", "--dir=/proc/blueberry-sweep"], False),
    (["sweep", "local", "{repo}/sweeps/quickstart.yaml", "--override=lr"], False),
    (["sweep", "local", "{repo}/sweeps/quickstart.yaml", "--override=learning_rate=0.1"], False),
    (["sweep", "local", "{repo}/sweeps/quickstart.yaml", "--override=lr=abc"], False),
    (["sweep", "local", "{repo}/sweeps/quickstart.yaml", "--launch-config={cwd}/missing.yaml"], False),
    (["sweep", "local", "{repo}/sweeps/quickstart.yaml", "--max-consecutive-failures=0"], False),
    (["slurm", "submit", "bogus"], False),
    (["slurm", "submit", "train", "--dry-run", "--nodes=0"], False),
    (["slurm", "submit", "train", "--dry-run", "--gpus=0"], False),
    (["slurm", "submit", "train", "--dry-run", "--procs=0"], False),
    (["slurm", "submit", "train", "--dry-run", "--time=abc"], False),
    (["slurm", "submit", "train", "--dry-run", "--task=bogus"], False),
    (["slurm", "submit", "train", "--dry-run", "--mode=bogus"], False),
    (["slurm", "submit", "train", "--dry-run", "--", "--lr=abc"], False),
    (["slurm", "submit", "sweep", "--dry-run", "{cwd}/badsweep.yaml"], False),
    (["slurm", "submit", "sweep", "--dry-run", "{cwd}/missing.yaml"], False),
    (["report", "paths", "{cwd}/missing"], False),
    (["report", "paths", "{run}", "--out=/proc/blueberry-report"], True),
    (["report", "paths", "{run}", "--metric=val/nope"], True),
    (["report", "transfer", "{cwd}/missing"], False),
    (["report", "transfer", "{run}", "--target=-1"], True),
    (["report", "transfer", "{run}", "--target=abc"], True),
    (["report", "transfer", "{run}", "--out=/proc/blueberry-transfer"], True),
    (["report", "transfer", "{run}", "--out={cwd}/new"], True),
    (["report", "transfer", "{run}", "--metric=val/nope", "--out={cwd}/new"], True),
    (["report", "paths", "{run}", "--metric=val/nope", "--out={cwd}/new"], True),
    (["coords", *COORDS, "--steps=0", "--out={cwd}/new"], False),
    (["sweep", "local", "{repo}/sweeps/quickstart.yaml", "--override=lr=abc", "--dir={cwd}/new"], False),
    (["train", "lm", *LM, "--data=/nonexistent/data.txt", "--out_dir={cwd}/new/runs"], False),
    (["report", "wandb-report", "--offline", "--sweep-file={cwd}/missing.yaml"], False),
    (["report", "wandb-report", "--offline", "--sweep-file={cwd}/badsweep.yaml"], False),
    (["report", "wandb-report", "--offline", "--metric=val/nope"], False),
    (["report", "wandb-report", "--offline", "--param=bogus_field"], False),
    (["report", "wandb-report", "--offline", "--out=/proc/blueberry-report.json"], False),
]

SETUP = {"broken.yaml": "lr: 0.1\n bad: [\n", "a-file": "not a folder\n",
         "badsweep.yaml": "method: grid\nmetric: {name: val/loss, goal: minimize}\n"
                          "parameters:\n  learning_rate: {values: [0.1]}\n"
                          "command: [\"${env}\", \"${interpreter}\", \"-m\", \"blueberry.cli\", \"train\", \"lm\", \"${args}\"]\n"}


def _bounds(meta: dict, kind: type) -> list[str]:
    out = []
    if meta.get("min") is not None:
        low = meta["min"] if meta.get("min_exclusive") else meta["min"] - (1 if kind is int else 0.5)
        out.append(str(kind(low)))
    if meta.get("max") is not None:
        out.append(str(kind(meta["max"] + 1)))
    return out


def field_values(field: dataclasses.Field) -> list[str]:
    """The values a config field must refuse."""
    meta, kind = field.metadata, str(field.type)
    if meta.get("choices"):
        return ["bogus-choice"]
    if kind == "bool":
        return ["maybe"]
    if kind == "int":
        return ["abc", "2.5", *_bounds(meta, int)]
    if kind == "float":
        return ["abc", "nan", *_bounds(meta, float)]
    return STRINGS.get(field.name, [])


def cases() -> list[dict]:
    from blueberry.config import LMConfig, ScanlineConfig

    out = []
    for command, cls, shape in ((["train", "lm"], LMConfig, LM), (["train", "scanline"], ScanlineConfig, SCANLINE),
                                (["coords"], LMConfig, COORDS)):
        for field in dataclasses.fields(cls):
            for value in field_values(field):
                out.append({"argv": [*command, *shape, f"--{field.name}={value}"], "run": False})
    # a resume takes the same checks, and must also leave the run it names untouched
    out += [{"argv": ["train", "lm", "--resume={run}", f"--{name}={value}"], "run": True}
            for name, value in (("lr", "abc"), ("lr", "nan"), ("max_steps", "0"), ("d_model", "-1"),
                                ("tokenizer", "bpe:abc"), ("best_metric", "val/nope"), ("name", "a/b"))]
    out += [{"argv": argv, "run": run} for argv, run in OTHERS]
    return out


def check(case: dict, root: Path, finished: Path, index: int, timeout: float) -> dict:
    cwd = root / f"case-{index:04d}"
    cwd.mkdir()
    for name, text in SETUP.items():
        (cwd / name).write_text(text)
    run = None
    if case["run"]:
        run = cwd / "runs" / finished.name
        shutil.copytree(finished, run, symlinks=True)
    before_run = record_digest(run) if run else None
    before = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
    where = dict(run=run, cwd=cwd, file=cwd / "a-file", repo=REPO)
    argv = [a.format(**where) for a in case["argv"]]
    start = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-m", "blueberry.cli", *argv], cwd=cwd, capture_output=True,
                             text=True, timeout=timeout)
        code, err = res.returncode, res.stderr
    except subprocess.TimeoutExpired as e:
        code, err = "timeout", (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    faults = []
    if "Traceback" in err:
        faults.append("traceback")
    if code != 2:
        faults.append("wrong exit")
    elif len(errors) != 1 or err.rstrip().splitlines()[-1] != errors[0]:
        faults.append("not one line")
    if run is not None and record_digest(run) != before_run:
        faults.append("run changed")
    if sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*")) != before:
        faults.append("wrote files")
    shutil.rmtree(cwd, ignore_errors=True)
    shown = " ".join(case["argv"]).replace(" ".join(LM), "LM").replace(" ".join(SCANLINE), "SCANLINE") \
        .replace(" ".join(COORDS), "COORDS")
    return {"argv": shown, "exit": code, "faults": faults, "error": errors[-1] if errors else err.strip()[-300:],
            "seconds": round(time.perf_counter() - start, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="Only commands whose words start with this (e.g. 'train lm').")
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--out", default=str(RESULTS / "bad_inputs.json"))
    args = ap.parse_args()
    todo = [c for c in cases() if " ".join(c["argv"]).startswith(args.only)]
    with tempfile.TemporaryDirectory(prefix="bb-bad-inputs-") as tmp:
        root = Path(tmp)
        made = subprocess.run([sys.executable, "-m", "blueberry.cli", "train", "lm", *LM, "--name=done",
                               f"--out_dir={root / 'runs'}"], capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        (finished,) = (root / "runs").iterdir()
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda ic: check(ic[1], root, finished, ic[0], args.timeout), enumerate(todo)))
    counts = {"cases": len(results), "right": sum(not r["faults"] for r in results)}
    for fault in ("traceback", "wrong exit", "not one line", "run changed", "wrote files"):
        counts[fault] = sum(fault in r["faults"] for r in results)
    Path(args.out).write_text(json.dumps({"counts": counts, "failing": [r for r in results if r["faults"]],
                                          "all": results}, indent=1) + "\n")
    for r in results:
        if r["faults"]:
            print(f"{', '.join(r['faults'])}: exit {r['exit']}: blueberry {r['argv']}\n    {r['error'][:300]}")
    print(json.dumps(counts))


if __name__ == "__main__":
    main()

"""A stand-in trial program for sweep-runner tests: logs `val/loss` = values[i] at evaluation i
into runs/fake/metrics.jsonl (like a blueberry run dir) in its trial folder (BLUEBERRY_TRIAL_DIR, set
by `sweep local`), sleeping between evaluations; it also records the directory it was started in.

    python fake_trial.py --values=1,0.5 --sleep=0.1 --fail=false --ignore_term=false --x=anything

--fail=true exits 1 (a crash), --fail=diverge exits 3 (blueberry's exit code for a diverged run).
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--values", default="1.0")
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--fail", default="false")
parser.add_argument("--ignore_term", default="false")   # a trial that never ends on SIGTERM
args, _ = parser.parse_known_args()
if args.ignore_term == "true":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

run = Path(os.environ.get("BLUEBERRY_TRIAL_DIR", ".")) / "runs" / "fake"
run.mkdir(parents=True, exist_ok=True)
(run / "cwd.txt").write_text(os.getcwd())
with open(run / "metrics.jsonl", "a", buffering=1) as f:
    for i, value in enumerate(float(v) for v in args.values.split(",")):
        f.write(json.dumps({"step": i, "val/loss": value}) + "\n")
        time.sleep(args.sleep)
if args.fail in ("true", "diverge"):
    sys.exit(3 if args.fail == "diverge" else 1)

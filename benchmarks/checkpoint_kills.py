"""Asynchronous checkpoints under random SIGKILLs, and how long a save holds up training.

    python -m benchmarks.checkpoint_kills kills --kills 50     # 2 CPU ranks, >100 MB of state
    python -m benchmarks.checkpoint_kills blocking             # moe-exp8's shape, sync against async

kills: a reference run saves every step (async_save, 2 gloo ranks under `python -m blueberry.launch`).
Then runs of the same config are killed with SIGKILL to every process of the run (launcher, ranks and
the ranks' checkpoint writer processes) at random moments, 20-25 steps after they (re)started plus a
random fraction of a step, twice per run; each kill is followed by `--resume auto`, which must pick
the newest complete checkpoint: the 20 losses logged after it must equal the reference's bit for bit.
After every kill the run dir must hold only intact checkpoints and at most one .incomplete folder.
Results: benchmarks/results/checkpoint_kills-cpu.json.

blocking: the same short run with async_save false and true, a save every step; each save's time in
the training loop (the trainer records it: summary.json checkpoints.blocked_s_median), median of the
saves after the first. Results: benchmarks/results/checkpoint_blocking-cpu.json.

tests/test_async_checkpoints.py runs the kill loop small, with these functions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# >100 MB of model and AdamW state (10.5M parameters), steps of a fraction of a second on 2 CPU ranks.
KILL_SHAPE = ["--preset=moe-exp3", "--data=synthetic", "--tokenizer=bpe:2048", "--seq_len=64", "--batch_size=2",
              "--eval_every=1000", "--eval_batches=1", "--warmup_steps=5", "--log_every=1"]


def launch(out: Path, args: list[str], ranks: int = 2) -> subprocess.Popen:
    """`blueberry train lm ARGS` on `ranks` gloo ranks (Accelerate); every process it starts carries a
    token of this launch in its environment (kill() finds them by it); stderr goes to a log beside `out`."""
    config = {1: [], 2: ["--config_file", str(REPO / "launch" / "cpu-2proc.yaml"), "--main_process_port", "0"]}
    prefix = [sys.executable, "-m", "blueberry.launch", *config[ranks]] if ranks > 1 else [sys.executable]
    out.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    log = out.parent / f"stderr-{token[:8]}.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen([*prefix, "-m", "blueberry.cli", "train", "lm", *args, f"--out_dir={out}"],
                                   cwd=out.parent, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                   env={**os.environ, "OMP_NUM_THREADS": "1", LAUNCH_TOKEN: token})
    process.token, process.log = token, log
    return process


LAUNCH_TOKEN = "BLUEBERRY_BENCH_LAUNCH"


def finish(process: subprocess.Popen, timeout: float = 1800) -> None:
    process.wait(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"training failed (exit {process.returncode}): {process.log.read_text()[-3000:]}")


def the_run(out: Path) -> Path | None:
    runs = sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []
    if len(runs) > 1:
        raise RuntimeError(f"{out}: {len(runs)} run dirs, one expected")
    return runs[0] if runs else None


def losses(run: Path) -> dict[int, float]:
    from blueberry import rundir

    return {r["step"]: r["train/loss"] for r in rundir.read_metrics(run) if "train/loss" in r}


def resume_point(out: Path) -> tuple[int, int | None]:
    """(step of the newest complete checkpoint, config.yaml's inode) of the run in `out`, (0, None) if none:
    a resume rewrites config.yaml once it has loaded, so a new inode means it has."""
    from blueberry import rundir

    run = the_run(out)
    latest = rundir.latest_checkpoint(run) if run else None
    step = int(latest.name.split("-")[1]) if latest else 0
    return step, (run / rundir.CONFIG).stat().st_ino if run else None


def wait_until_logged(process: subprocess.Popen, out: Path, step: int, old_inode: int | None,
                      timeout: float = 900) -> bool:
    """Until the (resumed) run in `out` has logged `step`; False when the process ended first."""
    from blueberry import rundir

    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        run = the_run(out)
        resumed = run is not None and (old_inode is None or (run / rundir.CONFIG).stat().st_ino != old_inode)
        if resumed and max(losses(run), default=0) >= step:
            return True
        time.sleep(0.05)
    return False


def kill(process: subprocess.Popen) -> None:
    """SIGKILL every process of the run at once, as a node failure or SLURM's kill of a job's cgroup
    does: the launcher's process group, and each rank's own (torchrun starts every rank in a new
    session) with the rank's checkpoint writer."""
    import psutil

    os.killpg(process.pid, signal.SIGKILL)   # first: no new rank is started after the list below
    for _ in range(5):
        try:
            left = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            left = []
        left += [p for p in _orphans_of(process) if p not in left]
        if not left:
            break
        for p in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(left, timeout=10)
    process.wait(timeout=60)


def _orphans_of(process: subprocess.Popen) -> list:
    """Processes of this launch that left its tree (the ranks of a launcher killed first)."""
    import psutil

    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.environ().get(LAUNCH_TOKEN) == process.token:
                found.append(p)
    return found


def record_problems(run: Path) -> list[str]:
    """What a kill may never leave: a damaged complete checkpoint, or more than one .incomplete folder."""
    from blueberry import rundir
    from blueberry.train.checkpoint import damage, layout

    problems = [p for _, ckpt in rundir.checkpoints(run) if (p := damage(ckpt))]
    incomplete = list((run / rundir.CHECKPOINTS).glob("*" + layout.INCOMPLETE))
    if len(incomplete) > 1:
        problems.append(f"{len(incomplete)} .incomplete folders")
    return problems


def kill_cycle(out: Path, args: list[str], rng: random.Random, after: int, step_s: float) -> dict:
    """Resume the run in `out` (or start it), let it log `after` more steps (a random number when
    `after` is a range), SIGKILL it a random fraction of a step later; what happened."""
    resumed_at, inode = resume_point(out)
    process = launch(out, [*args, "--resume=auto"])
    target = resumed_at + after
    if not wait_until_logged(process, out, target, inode):
        finish(process)
        return {"resumed_at": resumed_at, "killed": False}
    time.sleep(rng.uniform(0, step_s))
    kill(process)
    return {"resumed_at": resumed_at, "killed": True, "killed_after": target,
            "problems": record_problems(the_run(out))}


def run_kills(n_kills: int, steps: int, seed: int, work: Path) -> dict:
    rng = random.Random(seed)
    reference = work / "reference" / "runs"
    t0 = time.time()
    finish(launch(reference, [*KILL_SHAPE, f"--max_steps={steps}", "--save_every=1", "--async_save=true",
                              "--wandb_mode=disabled", "--name=ref"]))
    ref_run = the_run(reference)
    expected = losses(ref_run)
    step_s = (time.time() - t0) / steps
    state_mb = sum(p.stat().st_size for p in (ref_run / "checkpoints").rglob("*") if p.is_file()) / 2**20 / 2
    cycles, run_index = [], 0
    args = [*KILL_SHAPE, f"--max_steps={steps}", "--save_every=1", "--async_save=true", "--wandb_mode=disabled",
            "--name=k"]
    # until n_kills, and then until the run of the last kill has been resumed and checked
    while sum(c["killed"] for c in cycles) < n_kills or (cycles and cycles[-1]["killed"]):
        out = work / f"killed-{run_index}" / "runs"
        resumed_at, _ = resume_point(out)
        if resumed_at + 45 > steps:   # no room for a kill that leaves 20 steps to check after it: finish
            finish(launch(out, [*args, "--resume=auto"]))
            cycle = {"resumed_at": resumed_at, "killed": False}
        else:
            cycle = kill_cycle(out, args, rng, after=20 + rng.randint(0, 5), step_s=step_s)
        got = losses(the_run(out))
        run_index += not cycle["killed"]   # a finished run: the next cycle starts a new one
        window = range(cycle["resumed_at"] + 1, cycle["resumed_at"] + 21)
        cycle["identical_20"] = all(got.get(s) == expected[s] for s in window)
        cycles.append(cycle)
        print(f"{'kill ' + str(sum(c['killed'] for c in cycles)) if cycle['killed'] else 'finish'}: resumed at "
              f"{cycle['resumed_at']}, next 20 identical: {cycle['identical_20']}, "
              f"problems: {cycle.get('problems')}", flush=True)
    killed = [c for c in cycles if c["killed"]]
    after_kill = [c for c in cycles if c["resumed_at"] > 0]   # each continues from a checkpoint a kill left
    return {"kills": len(killed), "runs_with_problems": sum(bool(c["problems"]) for c in killed),
            "resumes_after_a_kill": len(after_kill), "identical_20_after_a_kill": sum(c["identical_20"] for c in after_kill),
            "identical_20_all": sum(c["identical_20"] for c in cycles), "cycles_total": len(cycles),
            "state_mb_per_checkpoint": state_mb, "steps_per_run": steps, "step_s": step_s, "seed": seed,
            "cycles": cycles}


def run_blocking(work: Path, saves: int = 6) -> dict:
    """moe-exp8's model (bpe:8192 on the synthetic corpus), one process, a save every step."""
    shape = ["--preset=moe-exp8", "--data=synthetic", "--tokenizer=bpe:8192", "--seq_len=64", "--batch_size=1",
             "--grad_accum=1", "--eval_every=1000", "--eval_batches=1", f"--max_steps={saves}", "--save_every=1",
             "--save_best=false", "--wandb_mode=disabled", "--keep_last=2"]
    results = {}
    for mode in ("false", "true"):
        out = work / f"blocking-{mode}" / "runs"
        finish(launch(out, [*shape, f"--async_save={mode}", f"--name=b{mode}"], ranks=1))
        from blueberry import rundir

        run = the_run(out)
        summary = rundir.read_summary(run)
        size = sum(p.stat().st_size for p in rundir.latest_checkpoint(run).rglob("*") if p.is_file())
        results["async" if mode == "true" else "sync"] = {**summary["checkpoints"], "checkpoint_mb": size / 2**20}
    results["async_over_sync"] = results["async"]["blocked_s_median"] / results["sync"]["blocked_s_median"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["kills", "blocking"])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--steps", type=int, default=80, help="steps of each run (kills): room for 2 kills, each "
                        "followed by 20 checked steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temp dir)")
    args = parser.parse_args()
    import tempfile

    sys.path.insert(0, str(REPO))
    work = args.work or Path(tempfile.mkdtemp(prefix="blueberry-ckpt-bench-"))
    os.environ.setdefault("BLUEBERRY_CACHE", str(work / "cache"))
    if args.what == "kills":
        result = run_kills(args.kills, args.steps, args.seed, work)
        name = "checkpoint_kills-cpu.json"
    else:
        result = run_blocking(work)
        name = "checkpoint_blocking-cpu.json"
    result["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "cycles"}, indent=1))


if __name__ == "__main__":
    main()

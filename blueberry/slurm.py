"""`blueberry slurm submit|status`: fill one of the sbatch scripts in slurm/ and submit it.

The scripts are plain sbatch files a user can also submit by hand; `submit` only replaces or adds
#SBATCH lines, sets the scripts' environment knobs and the job's arguments, keeps the filled
script under logs/submitted/ (what ran, reproducibly), and calls sbatch.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

from blueberry import rundir
from blueberry.errors import UserError

SCRIPTS = {"train": "train.sbatch", "multinode": "multinode.sbatch", "sweep": "sweep-agents.sbatch"}


def blueberry_home() -> Path:
    """The checkout that holds slurm/ and launch/: $BLUEBERRY_HOME, else the package's parent."""
    home = Path(os.environ.get("BLUEBERRY_HOME") or Path(__file__).resolve().parents[1])
    if not (home / "slurm" / "lib.sh").exists():
        raise UserError(f"BLUEBERRY_HOME={home}: no slurm/ scripts there; point it at a blueberry checkout")
    return home


# sbatch --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
# days-hours:minutes:seconds (man sbatch), or no limit
_TIME = re.compile(r"(\d+(:\d+){0,2}|\d+-\d+(:\d+){0,2}|unlimited|infinite)", re.IGNORECASE)


def check_time_limit(value: str) -> str:
    """`value` when sbatch accepts it as --time; else UserError (sbatch would refuse the job)."""
    if not _TIME.fullmatch(value.strip()):
        raise UserError(f"--time={value}: not a SLURM time; use MINUTES, HH:MM:SS or DAYS-HH[:MM[:SS]], "
                        "e.g. 04:00:00 or 1-12")
    return value.strip()


def render(kind: str, sbatch: dict[str, str], env: dict[str, str], args: list[str]) -> str:
    """The script of `kind` with `sbatch` options as #SBATCH lines (replacing the script's own),
    `env` exported and `args` as the job's arguments."""
    if kind not in SCRIPTS:
        raise UserError(f"kind={kind}: must be one of {', '.join(SCRIPTS)}")
    home = blueberry_home()
    lines = (home / "slurm" / SCRIPTS[kind]).read_text().splitlines()
    header_end = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    for key, value in sbatch.items():
        line = f"#SBATCH --{key}={value}"
        found = [i for i, old in enumerate(lines) if re.match(rf"#SBATCH --{re.escape(key)}(=|\s|$)", old)]
        if found:
            lines[found[0]] = line
        else:
            header_end += 1
            lines.insert(header_end, line)
    filled = [f"export {k}={shlex.quote(str(v))}" for k, v in {"BLUEBERRY_HOME": str(home), **env}.items()]
    filled.append("set -- " + " ".join(shlex.quote(a) for a in args))
    lines[header_end + 1:header_end + 1] = ["# filled in by `blueberry slurm submit`:", *filled]
    return "\n".join(lines) + "\n"


def submit(kind: str, script: str, cwd: Path) -> str:
    """Save the filled script under logs/submitted/ and sbatch it from `cwd`; returns the job id."""
    (cwd / "logs" / "submitted").mkdir(parents=True, exist_ok=True)
    path = cwd / "logs" / "submitted" / f"{kind}-{time.strftime('%Y%m%d_%H%M%S')}-{os.getpid()}.sbatch"
    path.write_text(script)
    try:
        result = subprocess.run(["sbatch", "--parsable", str(path)], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("sbatch: not found; run this on a SLURM login node (or use --dry-run)") from None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"sbatch {path}: {reason}")
    return result.stdout.strip().split(";")[0]


def jobs() -> list[dict[str, str]]:
    """This user's blueberry jobs (names starting bb-) from squeue."""
    fields = ["id", "name", "state", "elapsed", "limit", "nodes", "reason", "workdir"]
    try:
        result = subprocess.run(["squeue", "--me", "-h", "-o", "%i|%j|%T|%M|%l|%D|%R|%Z"],
                                capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("squeue: not found; run this on a SLURM login node") from None
    if result.returncode != 0:
        raise UserError(f"squeue: {(result.stderr.strip().splitlines() or ['failed'])[-1]}")
    rows = [dict(zip(fields, line.split("|", 7))) for line in result.stdout.splitlines() if line.strip()]
    return [r for r in rows if r["name"].startswith("bb-")]


def run_dirs_of(job: dict[str, str]) -> list[Path]:
    """The run dirs a job wrote: runs/*-j<id> under its working dir (array tasks: j<job>_<task>)."""
    runs = Path(job["workdir"]) / "runs"
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.iterdir() if p.is_dir() and rundir.has_job_tag(p.name, f"j{job['id']}"))

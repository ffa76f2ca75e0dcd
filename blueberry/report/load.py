"""Runs to report on, as `Run` records: from run dirs, folders of run dirs, sweep dirs, or W&B.

Reads only the run dir contract (blueberry/rundir.py) and the sweep dir (blueberry/sweep/state.py);
never imports torch or the trainer, so a report works on a login node with a copy of `runs/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blueberry import rundir
from blueberry.config import read_config_file
from blueberry.errors import UserError
from blueberry.sweep.spec import load_sweep
from blueberry.sweep.state import SweepDir

SWEEP_FILE = "sweep.yaml"


@dataclass
class Run:
    """One training run as the report sees it, whatever it was read from."""

    name: str                                   # unique within one report
    path: Path | None                           # the run dir (None for a W&B run)
    config: dict[str, Any]
    summary: dict[str, Any]
    rows: list[dict[str, Any]]                  # metrics.jsonl rows, `step` in each
    trial: dict[str, Any] | None = None         # trial.json of a sweep trial (id, params, status, ...)
    sweep: str | None = None                    # the sweep dir (or W&B sweep id) it came from
    url: str | None = None                      # W&B runs only

    @property
    def params(self) -> dict[str, Any]:
        """The sweep's parameters for this trial ({} outside a sweep); config.yaml holds what ran."""
        return dict((self.trial or {}).get("params") or {})

    @property
    def task(self) -> str:
        return str(self.config.get("task") or self.summary.get("task") or "")

    @property
    def unit(self) -> str:
        """'tokens' (lm) or 'samples' (scanline): the unit of `*_seen` and `train/*_per_s`."""
        if self.summary.get("unit"):
            return str(self.summary["unit"])
        return "samples" if self.task == "scanline" else "tokens"


@dataclass
class Loaded:
    """What `load_runs` found: the runs, the sweep metric when a sweep dir named one, what was skipped."""

    runs: list[Run]
    sweep_metric: str | None = None
    sweep_goal: str | None = None               # "minimize" | "maximize"
    skipped: list[str] = field(default_factory=list)   # one line each: path and why


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / rundir.METRICS).exists() or (path / rundir.SUMMARY).exists())


def is_sweep_dir(path: Path) -> bool:
    return path.is_dir() and (path / SWEEP_FILE).exists() and (path / "trials").is_dir()


def read_run(path: Path, name: str | None = None, trial: dict | None = None, sweep: str | None = None,
             skipped: list[str] | None = None) -> Run:
    """The run in `path`; UserError when its config.yaml is unreadable. Malformed metrics rows are
    left out, with a line in `skipped` naming them."""
    path = Path(path)
    config = read_config_file(path / rundir.CONFIG) if (path / rundir.CONFIG).exists() else {}
    try:
        summary = rundir.read_summary(path)
        summary = summary if isinstance(summary, dict) else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        summary = {}   # a summary is rewritten atomically, so this is a foreign file; the rows still count
    bad: list[int] = []
    rows = rundir.read_metrics(path, bad)
    if bad and skipped is not None:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        skipped.append(f"{path / rundir.METRICS}: {len(bad)} malformed row(s) left out (line {shown}; "
                       'a row is a JSON object with an integer "step")')
    return Run(name=name or path.name, path=path, config=config, summary=summary, rows=rows, trial=trial,
               sweep=sweep)


def _read_or_skip(path: Path, skipped: list[str], **kwargs) -> Run | None:
    """read_run, or None with a line in `skipped` when the run dir cannot be read: one bad run must
    not stop a report on the others."""
    try:
        return read_run(path, skipped=skipped, **kwargs)
    except (UserError, OSError) as e:
        skipped.append(f"{path}: run left out ({e})")
        return None


def _trial_run_dir(sweep: SweepDir, trial: dict) -> Path | None:
    """The run dir the sweep recorded for the trial, else the newest one under its runs/ folder."""
    if trial.get("run_dir"):
        recorded = sweep.path / trial["run_dir"]
        if is_run_dir(recorded):
            return recorded
    return sweep.newest_run_dir(str(trial.get("id", "")))


def read_sweep(path: Path) -> tuple[list[Run], dict[str, Any], list[str]]:
    """(runs, sweep.yaml, skipped) of a `blueberry sweep local` dir; trials without a run dir are skipped."""
    path = Path(path)
    config = load_sweep(path / SWEEP_FILE) or {}
    sweep = SweepDir(path, config, {})
    runs, skipped = [], []
    for trial_file in sorted((path / "trials").glob("t*/trial.json")):
        try:
            trial = json.loads(trial_file.read_text())
        except json.JSONDecodeError:
            skipped.append(f"{trial_file}: not valid JSON")
            continue
        run_path = _trial_run_dir(sweep, trial)
        if run_path is None:
            skipped.append(f"{trial_file.parent}: no run dir (trial {trial.get('status', '?')})")
            continue
        run = _read_or_skip(run_path, skipped, name=str(trial.get("id") or trial_file.parent.name), trial=trial,
                            sweep=str(path))
        if run is not None:
            runs.append(run)
    return runs, config, skipped


def load_runs(paths: list[str | Path], metric: str | None = None) -> Loaded:
    """Run dirs, folders holding run dirs (and/or sweep dirs, one level down), and sweep dirs.

    UserError when a path does not exist or holds none of these, or when sweeps optimising different
    metrics are mixed without `metric` saying which one to rank by. Run names are made unique: trial
    ids when one sweep is read, `<sweep>/<trial>` across sweeps, run dir names otherwise.
    """
    if not paths:
        raise UserError("report: give at least one run dir, folder of run dirs, or sweep dir")
    loaded = Loaded(runs=[])
    sweep_configs: list[tuple[Path, dict]] = []
    seen: set[Path] = set()

    def add_sweep(p: Path) -> None:
        runs, config, skipped = read_sweep(p)
        loaded.runs.extend(runs)
        loaded.skipped.extend(skipped)
        sweep_configs.append((p, config))

    def add_run(p: Path) -> None:
        run = _read_or_skip(p, loaded.skipped)
        if run is not None:
            loaded.runs.append(run)

    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"{p}: no such file or directory (give run dirs, folders of run dirs, or sweep dirs)")
        if p.resolve() in seen:
            continue
        seen.add(p.resolve())
        if is_sweep_dir(p):
            add_sweep(p)
        elif is_run_dir(p):
            add_run(p)
        elif p.is_dir():
            children = sorted(c for c in p.iterdir() if c.is_dir())
            found = False
            for c in children:
                if is_sweep_dir(c):
                    add_sweep(c)
                    found = True
                elif is_run_dir(c):
                    add_run(c)
                    found = True
            if not found:
                raise UserError(f"{p}: holds no run dir (a folder with {rundir.METRICS} or {rundir.SUMMARY}) "
                                f"and no sweep dir (a folder with {SWEEP_FILE} and trials/)")
        else:
            raise UserError(f"{p}: not a folder; give run dirs, folders of run dirs, or sweep dirs")

    if len(sweep_configs) > 1:   # trial ids repeat across sweeps
        for run in loaded.runs:
            if run.sweep:
                run.name = f"{Path(run.sweep).name}/{run.name}"
    metrics = {(c.get("metric") or {}).get("name") for _, c in sweep_configs} - {None}
    if len(metrics) > 1 and metric is None:
        raise UserError(f"{', '.join(str(p) for p, _ in sweep_configs)}: these sweeps optimise different metrics "
                        f"({', '.join(sorted(metrics))}); report on them separately or pass --metric")
    if sweep_configs:
        metric = next((c.get("metric") for _, c in sweep_configs if c.get("metric")), None) or {}
        loaded.sweep_metric = metric.get("name")
        loaded.sweep_goal = metric.get("goal", "minimize") if metric.get("name") else None
    _make_names_unique(loaded.runs)
    if not loaded.runs:
        raise UserError(f"{', '.join(str(p) for p in paths)}: no runs with a run dir to report on"
                        + (f" ({'; '.join(loaded.skipped)})" if loaded.skipped else ""))
    return loaded


def _make_names_unique(runs: list[Run]) -> None:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    used: dict[str, int] = {}
    for run in runs:
        if counts[run.name] > 1:
            used[run.name] = used.get(run.name, 0) + 1
            run.name = f"{run.name}#{used[run.name]}"


# --- W&B ----------------------------------------------------------------------------------------

def load_wandb(entity_project: str, sweep: str | None = None, *, group: str | None = None,
               max_runs: int = 500) -> Loaded:
    """The runs of a W&B project (optionally one sweep, or one run group — `sweep local` logs each
    trial with group = the sweep name) as the same records as run dirs.

    UserError fast when W&B is out of reach (no key, WANDB_MODE=offline, server unreachable).
    """
    from blueberry.network import require_wandb_server

    if entity_project.count("/") != 1 or not all(entity_project.split("/")):
        raise UserError(f"{entity_project!r}: give the W&B project as ENTITY/PROJECT")
    require_wandb_server(f"report {entity_project}",
                         "report on the local run dirs instead: blueberry report runs/ (or a sweep dir)")
    import wandb

    api = wandb.Api(timeout=30)
    filters: dict[str, Any] = {}
    if sweep:
        filters["sweep"] = sweep
    if group:
        filters["group"] = group
    loaded = Loaded(runs=[])
    for i, api_run in enumerate(api.runs(entity_project, filters=filters or None)):
        if i >= max_runs:
            loaded.skipped.append(f"{entity_project}: more than {max_runs} runs; the rest were left out")
            break
        loaded.runs.append(run_from_wandb(api_run, list(api_run.scan_history(page_size=1000))))
    if sweep:
        try:
            cfg = api.sweep(f"{entity_project}/{sweep}").config or {}
        except Exception as e:  # the runs are what matter; the metric can still come from --metric
            loaded.skipped.append(f"sweep {sweep}: config not readable ({type(e).__name__})")
            cfg = {}
        loaded.sweep_metric = (cfg.get("metric") or {}).get("name")
        loaded.sweep_goal = (cfg.get("metric") or {}).get("goal", "minimize") if loaded.sweep_metric else None
    _make_names_unique(loaded.runs)
    if not loaded.runs:
        raise UserError(f"{entity_project}: no runs" + (f" in sweep {sweep}" if sweep else "")
                        + (f" in group {group}" if group else ""))
    return loaded


def run_from_wandb(api_run: Any, history: list[dict[str, Any]]) -> Run:
    """A Run from a `wandb.apis.public.Run` and its history rows, shaped like a run dir.

    The trainer mirrors every metrics.jsonl row to W&B (step = the optimizer step) and puts
    `<best_metric>_best`, `best_step`, `status`, `params/*` and `data/*` in the W&B summary.
    """
    config = {k: v for k, v in dict(api_run.config).items() if not k.startswith("_")}
    wsum = {k: v for k, v in dict(api_run.summary).items() if not str(k).startswith("_")}
    rows = []
    for h in history:
        row = {k: v for k, v in h.items() if not k.startswith("_") and _is_scalar(v)}
        if "_step" in h:
            row["step"] = h["_step"]
        if len(row) > 1:
            rows.append(row)
    rows.sort(key=lambda r: r.get("step", 0))
    best_keys = [k for k in wsum if str(k).endswith("_best") and _is_scalar(wsum[k])]
    best: dict[str, Any] = {}
    if best_keys:
        key = best_keys[0]
        best = {"metric": key[: -len("_best")], "value": wsum[key], "step": wsum.get("best_step")}
    unit = "samples" if config.get("task") == "scanline" else "tokens"
    last = {}
    for row in rows:
        last.update(row)
    summary = {
        "status": wsum.get("status") or getattr(api_run, "state", None),
        "task": config.get("task"), "name": config.get("name") or api_run.name,
        "step": rows[-1]["step"] if rows else None, "max_steps": config.get("max_steps"),
        "best": best, "final": last,
        "wall_time_s": last.get("time", dict(api_run.summary).get("_runtime")),   # wsum drops _ keys
        "params": {k.split("/", 1)[1]: v for k, v in wsum.items() if str(k).startswith("params/")},
        "data": {k.split("/", 1)[1]: v for k, v in wsum.items() if str(k).startswith("data/")},
        "unit": unit, f"{unit}_seen": last.get(f"{unit}_seen"), "epochs": last.get("epochs"),
        "wandb": {"id": api_run.id, "mode": "online"},
    }
    return Run(name=api_run.name, path=None, config=config, summary=summary, rows=rows,
               sweep=getattr(getattr(api_run, "sweep", None), "id", None), url=getattr(api_run, "url", None))


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None

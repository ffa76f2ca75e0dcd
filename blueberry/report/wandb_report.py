"""A W&B Report of a project or sweep, built with wandb-workspaces: the val metric's curves,
parallel coordinates over the swept parameters, parameter importance and a run comparer.

Online it is saved and its URL returned. Offline (no key, WANDB_MODE=offline, server unreachable)
the same report is serialised to a JSON file instead — the W&B view spec the report model produces,
its run sets naming the project (without the server's internal id, which only the server knows) —
so the report can be checked, and built later online. The parameters come from the sweep: W&B's
copy of it online, else the sweep YAML or `sweep local` dir given as `sweep_file`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blueberry import rundir
from blueberry.errors import UserError, first_line
from blueberry.sweep.params import varied_parameters

# What an LR/optimizer study varies; used only when no sweep says what was swept.
DEFAULT_PARAMS = ("lr", "muon_lr", "optimizer", "seed")
SPEC_FORMAT = "blueberry-wandb-report/1"


@dataclass
class WandbReportResult:
    url: str | None                   # the saved report (online)
    spec_path: Path | None            # the JSON spec written instead (offline)
    offline_reason: str | None        # why it was not saved
    metric: str                       # summary key of parallel coordinates and importance
    curve: str                        # history key of the line plots
    params: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        if self.url:
            return f"W&B report saved: {self.url}"
        return f"W&B report not saved ({self.offline_reason}); its spec is in {self.spec_path}"


def build_wandb_report(project: str | None, entity: str | None = None, sweep: str | None = None,
                       metric: str | None = None, params: list[str] | None = None,
                       out: str | Path | None = None, offline: bool | None = None, *,
                       group: str | None = None, title: str | None = None,
                       sweep_file: str | Path | None = None) -> WandbReportResult:
    """Build the report of `entity/project` (only `sweep`'s runs, or only run group `group` — the
    group of `blueberry sweep local` trials is the sweep name).

    metric: a summary key; `X_best` (the trainer's best-so-far) puts X's curves on the line plots.
    None: the sweep_file's metric, else its task's best metric (val/loss without a sweep file): the
    raw metric, whose summary is the final value, so the panels show late regressions.
    params: config keys for parallel coordinates; None = the parameters `sweep_file` varies, else the
    W&B sweep's (online), else the config keys that differ between the project's runs (online), else
    DEFAULT_PARAMS.
    sweep_file: a sweep YAML, or a `sweep local` sweep dir (its sweep.yaml): its parameters, and its
    project: when `project` is None (else the trainer's default project).
    offline: None = decide by `require_wandb_server`; True = never touch the network; False = raise
    its UserError when W&B is out of reach.
    out: where the offline spec goes (default ./wandb-report-<project>[-<sweep>].json).
    """
    from blueberry.network import require_wandb_server

    local_sweep = _read_sweep_file(sweep_file) if sweep_file else {}
    if project is None:
        from blueberry.config import RunConfig

        project = local_sweep.get("project") or RunConfig.wandb_project
    if metric is None:
        metric = (local_sweep.get("metric") or {}).get("name") or default_metric(local_sweep)
    if not project or "/" in project:
        raise UserError(f"project={project!r}: give the W&B project name (and the entity separately)")
    check_params_and_metric(local_sweep, params or [], metric)
    default = f"wandb-report-{project}" + (f"-{sweep}" if sweep else f"-{group}" if group else "") + ".json"
    path = Path(out) if out else Path(default)
    rundir.ensure_writable_dir(path.parent, "--out")   # before contacting W&B or building the report
    reason = None
    if offline:
        reason = "offline requested"
    else:
        try:
            require_wandb_server("wandb-report", "the report spec is written to a file instead")
        except UserError as e:
            if offline is False:
                raise
            reason = str(e)
    online = reason is None
    curve = metric[: -len("_best")] if metric.endswith("_best") else metric
    notes: list[str] = []
    api = None
    if online:
        import wandb

        api = wandb.Api(timeout=30)
        entity = entity or api.default_entity
    if params is None and local_sweep:
        params = varied_parameters(local_sweep.get("parameters"))
    if not params:
        params = _swept_params(api, entity, project, sweep, group, notes) if online else None
        if not params:
            params = list(DEFAULT_PARAMS)
            notes.append(f"swept parameters not known (give the sweep YAML with --sweep-file): parallel "
                         f"coordinates use {', '.join(params)}")
    report = make_report(project, entity, sweep=sweep, group=group, metric=metric, curve=curve, params=params,
                         title=title, online=online, transfer=transfer_axes(params))
    result = WandbReportResult(url=None, spec_path=None, offline_reason=reason, metric=metric, curve=curve,
                               params=list(params), notes=notes)
    if online:
        try:
            report.save()
            result.url = report.url
        except Exception as e:  # a server-side refusal; the spec is still worth keeping
            result.offline_reason = f"saving failed: {first_line(e)}"
    if result.url is None:
        spec = {"format": SPEC_FORMAT, "entity": entity, "project": project, "sweep": sweep, "group": group,
                "metric": metric, "curve": curve, "params": list(params), "offline_reason": result.offline_reason,
                "notes": notes, "report": report_spec(report, project, entity)}
        rundir.write_atomic(path, json.dumps(spec, indent=2, default=str) + "\n")
        result.spec_path = path
    return result


def default_metric(sweep: dict[str, Any]) -> str:
    """The best metric of the sweep's `blueberry train TASK` (val/loss without one)."""
    from blueberry.sweep.objective import DEFAULT_BEST
    from blueberry.sweep.trial_options import sweep_options

    found = sweep_options(sweep) if sweep else None
    return DEFAULT_BEST[found[0] if found else "lm"]


def check_params_and_metric(sweep: dict[str, Any], params: list[str], metric: str) -> None:
    """Refuse a --param that is no config key of the runs and a --metric they never log, as `sweep
    validate` refuses them: against the sweep's `blueberry train TASK`, or every task without a sweep
    file. A sweep of another program is not checked (its config and metrics are its own)."""
    from blueberry.config import TASK_CONFIGS
    from blueberry.sweep.objective import metric_problem
    from blueberry.sweep.trial_options import option_hint, sweep_options, train_options

    found = sweep_options(sweep) if sweep else None
    if sweep and found is None:
        return
    tasks = [found[0]] if found else list(TASK_CONFIGS)
    commands = " or ".join(f"'blueberry train {t}'" for t in tasks)
    swept = set(sweep.get("parameters") or {})
    for name in params:
        if name not in swept and not any(name in train_options(t) for t in tasks):
            raise UserError(f"--param {name}: not an option of {commands}"
                            f"{_suggestion([option_hint(t, name) for t in tasks])}")
    problems = [metric_problem(t, metric, sweep) for t in tasks]
    if all(problems):
        raise UserError(f"--metric: {_suggestion(problems)}")


def _suggestion(texts: list[str]) -> str:
    """Of one message per task, the one that names a likely intended key, else the first."""
    return next((t for t in texts if "(did you mean" in t or "(blueberry calls it" in t), texts[0])


def runset_filter(sweep: str | None, group: str | None) -> str:
    """A Runset filter expression; quotes are dropped from ids, which never hold them."""
    parts = []
    if sweep:
        parts.append(f"Metric('Sweep') = '{sweep.replace(chr(39), '')}'")
    if group:
        parts.append(f"Metric('Group') = '{group.replace(chr(39), '')}'")
    return " and ".join(parts)


def transfer_axes(params: list[str]) -> tuple[str, str] | None:
    """(LR field, width field) when the swept parameters are a transfer study (one LR at several widths)."""
    from blueberry.report.transfer import WIDTH_FIELD

    lrs = [p for p in ("lr", "muon_lr") if p in params]
    return (lrs[0], WIDTH_FIELD) if WIDTH_FIELD in params and len(lrs) == 1 else None


def make_report(project: str, entity: str | None, *, sweep: str | None, group: str | None, metric: str,
                curve: str, params: list[str], title: str | None = None, online: bool = False,
                transfer: tuple[str, str] | None = None):
    """The wandb-workspaces Report object. Offline its run sets name no project: naming one makes
    the model look the project up on the server when it is serialised. `transfer` (LR field, width
    field) adds the LR-across-width panel: the metric against the LR, coloured by width."""
    import wandb_workspaces.reports.v2 as wr

    scope = f"sweep {sweep}" if sweep else f"group {group}" if group else f"project {project}"
    runset = wr.Runset(entity=(entity or "") if online else "", project=project if online else "",
                       name=scope, filters=runset_filter(sweep, group))
    direction = "lower" if curve.endswith(("loss", "perplexity")) else "higher"
    curves = wr.PanelGrid(runsets=[runset], panels=[
        wr.LinePlot(title=f"{curve} vs step", x="Step", y=[curve]),
        wr.LinePlot(title=f"{curve} vs wall time", x="RelativeTime(Wall)", y=[curve]),
        wr.LinePlot(title="learning rate", x="Step", y=["lr"], log_y=True),
    ])
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(p)) for p in params]
    columns.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(metric)))
    study = wr.PanelGrid(runsets=[runset], panels=[
        wr.ParallelCoordinatesPlot(title=f"{', '.join(params)} → {metric}", columns=columns),
        wr.ParameterImportancePlot(with_respect_to=metric),
        wr.RunComparer(diff_only="split"),
    ])
    blocks = [
        wr.P(f"Curves of {curve}; parallel coordinates, importance and the comparer use the run summary "
             f"{metric}. A gap between two runs means little unless it is larger than the spread across seeds."),
        wr.H2("Validation curves"), curves,
        wr.H2("Hyperparameters"), study,
    ]
    if transfer:
        lr, width = transfer
        blocks += [
            wr.H2("Learning rate across width"),
            wr.P(f"{metric} against {lr} (log), coloured by {width}: if the best {lr} moves left as {width} grows, "
                 f"it does not transfer. `blueberry report transfer SWEEP_DIR` fits the shift with its interval."),
            wr.PanelGrid(runsets=[runset], panels=[
                wr.ScatterPlot(title=f"{metric} vs {lr} by {width}", x=wr.Config(lr), y=wr.SummaryMetric(metric),
                               z=wr.Config(width), log_x=True)]),
        ]
    return wr.Report(
        project=project, entity=entity or "",
        title=title or f"blueberry: {scope}"[:128],
        description=f"{metric} ({direction} is better) over {', '.join(params)}",
        blocks=blocks)


def report_spec(report, project: str, entity: str | None) -> dict[str, Any]:
    """The W&B view spec (what `Report.save` uploads) as plain JSON, every run set naming `project`
    (the model names it only with the server's internal id, which needs the server)."""
    from wandb_workspaces.reports.v2 import internal

    spec = report._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")
    named = internal.Project(name=project, entity_name=entity or "").model_dump(by_alias=True, exclude_none=True,
                                                                               mode="json")

    def name_projects(node: Any) -> None:
        if isinstance(node, dict):
            for runset in node.get("runSets", []) if isinstance(node.get("runSets"), list) else []:
                if isinstance(runset, dict) and not runset.get("project"):
                    runset["project"] = dict(named)
            for value in node.values():
                name_projects(value)
        elif isinstance(node, list):
            for value in node:
                name_projects(value)

    name_projects(spec)
    return spec


def _read_sweep_file(path: str | Path) -> dict[str, Any]:
    """A valid sweep YAML, or the sweep.yaml of a `sweep local` sweep dir; UserError naming its first problem."""
    from blueberry.sweep.spec import load_valid_sweep

    p = Path(path)
    return load_valid_sweep(p / "sweep.yaml" if p.is_dir() else p)


def _swept_params(api, entity: str, project: str, sweep: str | None, group: str | None, notes: list[str]) -> list[str]:
    """The parameters the sweep varies, else config keys that differ between runs."""
    if sweep:
        try:
            cfg = api.sweep(f"{entity}/{project}/{sweep}").config or {}
            found = varied_parameters(cfg.get("parameters"))
            if found:
                return found
        except Exception as e:  # fall through to the runs' configs
            notes.append(f"sweep {sweep}: config not readable ({type(e).__name__})")
    from blueberry.report.analyse import differing_fields
    from blueberry.report.load import Run

    filters = {k: v for k, v in (("sweep", sweep), ("group", group)) if v}
    runs = []
    for i, r in enumerate(api.runs(f"{entity}/{project}", filters=filters or None, per_page=200)):
        if i >= 200:
            break
        runs.append(Run(name=r.name, path=None, config=dict(r.config), summary={}, rows=[]))
    return differing_fields(runs)

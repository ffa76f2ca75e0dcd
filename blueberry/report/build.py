"""`build_report`: read runs, analyse them, write the table, JSON, figures and HTML; `print_report`
shows the result in a terminal. The CLI (`blueberry report`) and `blueberry sweep local` call these."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blueberry import rundir
from blueberry.report.analyse import Analysis, analyse, clean, fmt, interval, verdict
from blueberry.report.load import Loaded, Run, is_sweep_dir, load_runs

HTML = "report.html"
TABLE_CSV = "table.csv"
TABLE_JSON = "table.json"
SUMMARY_JSON = "summary.json"
LR_JSON = "lr_recommendation.json"
TRANSFER_JSON = "transfer.json"
TRANSFER_HTML = "transfer.html"


@dataclass
class ReportResult:
    out_dir: Path
    runs: list[Run]
    analysis: Analysis
    files: dict[str, Path] = field(default_factory=dict)   # what was written: html, table_csv, ..., run:<name>
    skipped: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def default_out_dir(paths: list[str | Path]) -> Path:
    """SWEEP_DIR/report for one sweep dir, RUN_DIR/report for one run dir, else ./report."""
    if len(paths) == 1:
        p = Path(paths[0])
        if is_sweep_dir(p) or (p / rundir.METRICS).exists() or (p / rundir.SUMMARY).exists():
            return p / "report"
    return Path("report")


def build_report(paths: list[str | Path], out_dir: str | Path | None = None, metric: str | None = None, *,
                 per_run_figures: bool = True, html: bool = True) -> ReportResult:
    """Report on run dirs / folders of run dirs / sweep dirs and write it to `out_dir`
    (default: `default_out_dir(paths)`). `metric` overrides the sweep's (or the runs') metric.
    Raises UserError for paths that hold no runs or a metric no run logged."""
    paths = [Path(p) for p in paths]
    loaded = load_runs(paths, metric)
    return report_loaded(loaded, out_dir if out_dir is not None else default_out_dir(paths), metric,
                         sources=[str(p) for p in paths], per_run_figures=per_run_figures, html=html)


def report_loaded(loaded: Loaded, out_dir: str | Path, metric: str | None = None, *, sources: list[str] = (),
                  per_run_figures: bool = True, html: bool = True) -> ReportResult:
    """The same for runs already loaded (e.g. `load.load_wandb(...)`)."""
    out = Path(out_dir)
    analysis = analyse(loaded.runs, metric, loaded.sweep_metric, loaded.sweep_goal)
    # After the input is known good (no empty folder for a refused report), before any file or figure
    rundir.ensure_writable_dir(out, "--out")
    result = ReportResult(out_dir=out, runs=loaded.runs, analysis=analysis, skipped=list(loaded.skipped),
                          sources=list(sources))
    files = result.files
    data = analysis.to_json()

    transfer = _transfer_fits(loaded, analysis)
    if transfer:
        data["transfer"] = [fit.to_json() for fit in transfer]
        rundir.write_atomic(out / TRANSFER_JSON, _json(data["transfer"]))
        files["transfer_json"] = out / TRANSFER_JSON

    rundir.write_atomic(out / TABLE_CSV, table_csv(analysis))
    files["table_csv"] = out / TABLE_CSV
    rundir.write_atomic(out / TABLE_JSON, _json({"metric": data["metric"], "columns": data["columns"],
                                                 "rows": data["table"]}
                                                | ({"transfer": data["transfer"]} if transfer else {})))
    files["table_json"] = out / TABLE_JSON
    if analysis.lr:
        rundir.write_atomic(out / LR_JSON, _json({k: data[k] for k in ("metric", "noise_rule", "noise")}
                                                 | {"recommendations": data["lr_recommendation"]}))
        files["lr_json"] = out / LR_JSON

    figures = _figures(loaded.runs, analysis, out, per_run_figures)
    sections = []
    if transfer:
        from blueberry.report.html import transfer_section

        pngs = _transfer_figures(transfer, out)
        files.update({f"figure:{p.stem}": p for p in pngs})
        sections.append(transfer_section(transfer, pngs))
    files.update({f"figure:{k}": v for k, v in figures[0].items()})
    files.update({f"run:{k}": v for k, v in figures[1].items()})
    if html:
        from blueberry.report.html import write_html

        title = "blueberry report: " + ", ".join(Path(s).name or s for s in result.sources[:3]) \
            + (" ..." if len(result.sources) > 3 else "")
        files["html"] = write_html(out / HTML, analysis, figures[0], figures[1], title=title,
                                   sources=result.sources, skipped=result.skipped, sections=sections)
    summary = {k: v for k, v in data.items() if k not in ("table", "columns")}
    summary["skipped"] = result.skipped
    summary["files"] = {k: str(v) for k, v in files.items()} | {"summary_json": str(out / SUMMARY_JSON)}
    rundir.write_atomic(out / SUMMARY_JSON, _json(summary))
    files["summary_json"] = out / SUMMARY_JSON
    return result


def _transfer_fits(loaded: Loaded, analysis: Analysis) -> list:
    """report/transfer.py's fits when the runs sweep one LR at two or more widths, else []."""
    from blueberry.report.transfer import applies, transfer_analyses

    return transfer_analyses(loaded.runs, analysis=analysis) if applies(analysis) else []


def _transfer_figures(fits: list, out: Path) -> list[Path]:
    from blueberry.report import plots

    return [plots.transfer_figure(fit, out / "plots" / ("transfer.png" if len(fits) == 1 else
                                                        f"transfer-{safe_name(fit.label)}.png")) for fit in fits]


def build_transfer_report(paths: list[str | Path], out_dir: str | Path | None = None, metric: str | None = None,
                          target: float | None = None, width_field: str | None = None):
    """`blueberry report transfer`: the fits alone, as transfer.json, plots/transfer*.png and
    transfer.html in out_dir (default as build_report's). Returns (fits, {kind: path or paths})."""
    from blueberry.report.html import write_transfer_html
    from blueberry.report.transfer import WIDTH_FIELD, transfer_analyses

    paths = [Path(p) for p in paths]
    loaded = load_runs(paths, metric)
    out = Path(out_dir) if out_dir is not None else default_out_dir(paths)
    fits = transfer_analyses(loaded.runs, metric, loaded.sweep_metric, loaded.sweep_goal, target,
                             width_field or WIDTH_FIELD)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {"json": out / TRANSFER_JSON}
    rundir.write_atomic(files["json"], _json([fit.to_json() for fit in fits]))
    files["png"] = _transfer_figures(fits, out)
    files["html"] = write_transfer_html(out / TRANSFER_HTML, fits, files["png"],
                                        title="blueberry transfer: " + ", ".join(p.name or str(p) for p in paths[:3]),
                                        sources=[str(p) for p in paths])
    return fits, files


def print_transfer(fits: list, console=None) -> None:
    """The transfer fits in a terminal: per series one row per width, then b, the verdict and the
    prediction; with several series, each width's best loss side by side."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for fit in fits:
        where = f" — {fit.label}" if fit.series else ""
        table = Table(title=f"{fit.lr_field} across {fit.width_field} ({fit.metric}, best of each run){where}")
        for c in (fit.width_field, "runs", "best grid LR", "best", "best 95% CI", "lr*", "lr* 95% CI",
                  "within noise of the best"):
            table.add_column(c, justify="left" if c == "within noise of the best" else "right")
        for w in fit.widths:
            table.add_row(fmt(w.width), str(w.n_runs), fmt(w.best_lr), _num(w.best_loss),
                          interval(w.best_loss_low, w.best_loss_high), _num(w.lr_star), interval(w.lr_low, w.lr_high),
                          ", ".join(fmt(x) for x in w.band))
        console.print(table)
        for w in fit.widths:
            for note in w.notes:
                console.print(f"[dim]{fit.width_field}={fmt(w.width)}: {note}[/dim]", highlight=False)
        if fit.b is not None:
            console.print(f"[bold]b[/bold] = {fit.b:.3g} {interval(fit.b_low, fit.b_high)} (log lr* = a + b log "
                          f"{fit.width_field}; sp-like: -1, transferring: 0): [bold]{fit.verdict}[/bold]", highlight=False)
        else:
            console.print(f"[bold]{fit.verdict}[/bold]", highlight=False)
        if fit.prediction:
            p = fit.prediction
            console.print(f"predicted {fit.lr_field}* at {fit.width_field}={fmt(p.width)}: {p.lr:.3g} "
                          f"{interval(p.low, p.high)}", highlight=False)
        for note in fit.notes:
            console.print(f"[dim]note: {note}[/dim]", highlight=False)
    if len(fits) > 1:
        table = Table(title=f"best {fits[0].metric} per {fits[0].width_field} (at its best grid LR)")
        table.add_column(fits[0].width_field, justify="right")
        for fit in fits:
            table.add_column(fit.label, justify="right")
        for width in sorted({w.width for fit in fits for w in fit.widths}):
            cells = []
            for fit in fits:
                w = next((w for w in fit.widths if w.width == width), None)
                cells.append(f"{w.best_loss:.4g} {interval(w.best_loss_low, w.best_loss_high)}" if w else "")
            table.add_row(fmt(width), *cells)
        console.print(table)


def _figures(runs: list[Run], analysis: Analysis, out: Path, per_run: bool) -> tuple[dict[str, Path], dict[str, Path]]:
    from blueberry.report import plots

    folder = out / "plots"
    figures: dict[str, Path] = {"curves": plots.curves_figure(runs, analysis, folder / "curves.png"),
                                "best_final": plots.best_final_figure(analysis, folder / "best_final.png")}
    acc = plots.accuracy_figure(runs, analysis, folder / "accuracy.png")
    if acc:
        figures["accuracy"] = acc
    lr = plots.lr_figure(analysis.lr, analysis.metric, folder / "lr.png")
    if lr:
        figures["lr"] = lr
    run_figures: dict[str, Path] = {}
    if per_run:
        group_of = {name: g for g in analysis.groups for name in g.runs}
        for run in sorted(runs, key=lambda r: [row["name"] for row in analysis.table].index(r.name)):
            g = group_of.get(run.name)
            run_figures[run.name] = plots.run_figure(run, analysis.stats[run.name], analysis.metric,
                                                 folder / "runs" / f"{safe_name(run.name)}.png",
                                                 subtitle=g.label if g and g.label != "all runs" else "")
    return figures, run_figures


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def _json(obj: Any) -> str:
    return json.dumps(clean(obj), indent=2, default=str) + "\n"


def table_csv(analysis: Analysis) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=analysis.columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in analysis.table:
        writer.writerow({k: ("" if v is None else v) for k, v in clean(row).items()})
    return buf.getvalue()


# --- terminal ------------------------------------------------------------------------------------

def print_report(result: ReportResult, console=None, max_rows: int = 40) -> None:
    """The table, the noise-aware ranking, warnings, the LR recommendation and where the files are."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    a, spec = result.analysis, result.analysis.metric
    console.print(f"[bold]report[/bold]: {len(result.runs)} runs, metric [cyan]{spec.name}[/cyan] "
                  f"({'lower' if spec.mode == 'min' else 'higher'} is better, ranked by "
                  f"{'best over the run' if spec.rank_by == 'best' else 'final value'}; source: {spec.source})")
    unit_cols = [c for c in a.columns if c.endswith("_seen") or c.endswith("_per_s")]
    cols = ["name", *a.fields, "best", "final", "best_step", "degradation_%", "steps", *unit_cols[:1], "epochs",
            "wall_time_s", *unit_cols[1:], "params", "warnings"]
    short = {"degradation_%": "after best", "wall_time_s": "wall s", "params": "params tot/act",
             "best_step": "best @", "tokens_seen": "tokens", "samples_seen": "samples",
             "tokens_per_s": "tok/s", "samples_per_s": "smp/s", "warnings": "warn"}
    table = Table(title=f"runs ({spec.curve}; best first)", show_lines=False, pad_edge=False)
    for c in cols:
        text = c in ("name", *a.fields)
        widest = max([len(_cell(c, r.get(c))) for r in a.table[:max_rows]] + [len(short.get(c, c))]) if text else None
        table.add_column(short.get(c, c), justify="left" if text else "right", overflow="fold",
                         no_wrap=not text, min_width=min(widest, 24) if text else None)
    for row in a.table[:max_rows]:
        row = {**row, "params": _params(row.get("params_total"), row.get("params_active"))}
        table.add_row(*[_cell(c, row.get(c)) for c in cols])
    # Squeezed to a narrow terminal (or 80 columns in a pipe) rich folds the names away to nothing;
    # a line wider than the terminal is the lesser evil.
    narrow = console.width
    console.width = max(narrow, console.measure(table, options=console.options.update_width(1000)).maximum)
    try:
        console.print(table)
    finally:
        console.width = narrow
    if len(a.table) > max_rows:
        console.print(f"... {len(a.table) - max_rows} more rows in {result.files.get('table_csv')}")

    if len([g for g in a.groups if g.mean is not None]) > 1 or a.has_seed_repeats:
        rank = Table(title="ranking by config (seed repeats grouped)")
        for c, j in (("#", "right"), ("config", "left"), ("seeds", "right"), ("mean", "right"), ("95% CI", "left"),
                     ("± std", "right"), ("Δ vs #1", "right"), ("vs #1", "left")):
            rank.add_column(c, justify=j)
        for g in a.groups[:max_rows]:
            said = "" if g.rank == 1 else verdict(g.within_noise_of_leader, g.test_vs_leader, g.p_vs_leader)
            style = "yellow" if said.startswith("within") else "dim" if said.startswith("unknown") else ""
            rank.add_row(fmt(g.rank) if g.rank else "-", g.label, str(g.n), _num(g.mean), interval(g.ci_low, g.ci_high),
                         _num(g.std), _num(g.delta_to_leader) if g.rank and g.rank > 1 else "",
                         f"[{style}]{said}[/{style}]" if style else said)
        console.print(rank)
    console.print(f"[bold]noise[/bold]: {a.noise_note}")

    shown = a.warnings[:max_rows]
    if shown:
        console.print(f"[bold]health[/bold]: {sum(w.severity == 'warning' for w in a.warnings)} warning(s)")
        for w in shown:
            style = "red" if w.severity == "warning" else "dim"
            console.print(f"  [{style}]{w.run}[/{style}] {w.kind}: {w.message}", highlight=False)
        if len(a.warnings) > len(shown):
            console.print(f"  ... {len(a.warnings) - len(shown)} more in {result.files.get('html') or result.files.get('summary_json')}")
    else:
        console.print("[bold]health[/bold]: no warnings")
    for rec in a.lr:
        series = " ".join(f"{k}={fmt(v)}" for k, v in rec.series.items())
        lo, hi = rec.range
        console.print(f"[bold]{rec.param}[/bold]{' (' + series + ')' if series else ''}: best {fmt(rec.best_lr)}"
                      + (f", within noise {fmt(lo)} to {fmt(hi)}" if lo < hi else "")
                      + "".join(f"; {n}" for n in rec.notes), highlight=False)
    for line in result.skipped:
        console.print(f"[dim]skipped: {line}[/dim]", highlight=False)
    console.print(written_line(result), highlight=False, soft_wrap=True)


def written_line(result: ReportResult) -> str:
    """One line saying where the report went: the HTML page, then the other files beside it."""
    out = result.out_dir
    names = [p.name for k, p in result.files.items() if k != "html" and ":" not in k]
    figures = sum(k.startswith(("figure:", "run:")) for k in result.files)
    html = result.files.get("html")
    files = ", ".join(names) + (f", plots/ ({figures} figures)" if figures else "")
    return f"report written to {html}; beside it: {files}" if html else f"report written to {out}: {files}"


def _params(total: Any, active: Any) -> str | None:
    if total is None:
        return None
    return _count(total) + (f"/{_count(active)}" if active not in (None, total) else "")


def _count(x: float) -> str:
    return f"{x / 1e6:.3g}M" if x >= 1e6 else f"{x / 1e3:.3g}k" if x >= 1e3 else f"{x:g}"


def _num(x: Any) -> str:
    return "" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def _cell(column: str, x: Any) -> str:
    if x is None:
        return ""
    if column == "degradation_%" and isinstance(x, float):
        return f"{x:+.1f}%"
    if column in ("wall_time_s", "tokens_per_s", "samples_per_s") and isinstance(x, float):
        return f"{x:,.0f}"
    if column in ("tokens_seen", "samples_seen") and isinstance(x, (int, float)):
        return _count(x)
    if column == "epochs" and isinstance(x, float):
        return f"{x:.3g}"
    if column == "warnings":
        return f"[red]{x}[/red]" if x else ""
    return fmt(x)

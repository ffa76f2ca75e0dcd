"""One self-contained HTML file (figures embedded as base64 PNG, inline CSS, no scripts) to share a
report without W&B: it opens offline, in a mail attachment, or on a cluster's file browser."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any

from blueberry import rundir
from blueberry.report.analyse import Analysis, fmt, interval, verdict

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}tr.tie td{background:#fff8e1}
.warning{color:#b00020}.note{color:#666}.muted{color:#666;font-size:.9em}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.5em 0}details{margin:.4em 0}code{background:#f4f4f4;padding:0 3px}
"""


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def cell(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return esc(f"{x:.4g}")
    return esc(fmt(x))


def image(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def table(columns: list[str], rows: list[dict[str, Any]], left: tuple[str, ...] = (), row_class=None) -> str:
    head = "".join(f'<th class="{"l" if c in left else ""}">{esc(c)}</th>' for c in columns)
    body = []
    for r in rows:
        cls = row_class(r) if row_class else ""
        tds = "".join(f'<td class="{"l" if c in left else ""}">{cell(r.get(c))}</td>' for c in columns)
        body.append(f'<tr class="{cls}">{tds}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_html(path: Path, analysis: Analysis, figures: dict[str, Path], run_figures: dict[str, Path], *,
               title: str, sources: list[str], skipped: list[str] = (), sections: list[str] = ()) -> Path:
    """Write the report page; `figures` are comparison PNGs (shown in order), `run_figures` per run name,
    `sections` further HTML sections (the transfer study) after the learning-rate one."""
    a, spec = analysis, analysis.metric
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f"<p class='muted'>{len(a.stats)} runs from {esc(', '.join(sources))}; built "
             f"{esc(time.strftime('%Y-%m-%d %H:%M'))}. Metric <code>{esc(spec.name)}</code> ({esc(spec.source)}): "
             f"{'lower' if spec.mode == 'min' else 'higher'} is better; curves show <code>{esc(spec.curve)}</code>; "
             f"ranked by its {'best value over the run' if spec.rank_by == 'best' else 'final value'}.</p>"]

    parts.append("<h2>Ranking</h2>")
    parts.append(f"<p><b>Noise:</b> {esc(a.noise_note)}</p>")
    ranking = [{"rank": g.rank, "config": g.label, "seeds": g.n,
                "mean": g.mean, "95% CI": interval(g.ci_low, g.ci_high), "std": g.std, "Δ vs leader": g.delta_to_leader,
                "p vs leader": g.p_vs_leader,
                "vs leader": ("leader" if g.rank == 1 else verdict(g.within_noise_of_leader, g.test_vs_leader, g.p_vs_leader)),
                "runs": ", ".join(g.runs)} for g in a.groups]
    parts.append(table(["rank", "config", "seeds", "mean", "95% CI", "std", "Δ vs leader", "p vs leader", "vs leader",
                        "runs"], ranking, left=("config", "95% CI", "vs leader", "runs"),
                       row_class=lambda r: "tie" if r["vs leader"].startswith("within noise") else ""))
    if a.pairs:
        pairs = [{"a": p.a, "b": p.b, "Δ": p.delta, "test": p.test or "", "dof": p.dof, "p": p.p_value,
                  "verdict": verdict(p.within_noise, p.test, p.p_value)} for p in a.pairs]
        parts.append("<details><summary>pairs compared</summary>"
                     + table(["a", "b", "Δ", "test", "dof", "p", "verdict"], pairs, left=("a", "b", "test", "verdict"))
                     + "</details>")

    parts.append(f"<h2>Health warnings ({sum(w.severity == 'warning' for w in a.warnings)})</h2>")
    if a.warnings:
        parts.append("<table><thead><tr><th class='l'>run</th><th class='l'>kind</th><th>step</th>"
                     "<th class='l'>what</th></tr></thead><tbody>")
        for w in a.warnings:
            parts.append(f"<tr class='{esc(w.severity)}'><td class='l'>{esc(w.run)}</td><td class='l'>{esc(w.kind)}</td>"
                         f"<td>{cell(w.step)}</td><td class='l'>{esc(w.message)}</td></tr>")
        parts.append("</tbody></table>")
    else:
        parts.append("<p>none</p>")

    if a.lr:
        parts.append("<h2>Learning rate</h2><ul>")
        for rec in a.lr:
            series = " ".join(f"{k}={fmt(v)}" for k, v in rec.series.items())
            parts.append(f"<li><b>{esc(rec.param)}</b>{' (' + esc(series) + ')' if series else ''}: best "
                         f"<b>{cell(rec.best_lr)}</b> ({cell(rec.best_mean)}); within noise: "
                         f"{esc(', '.join(fmt(x) for x in rec.within_noise))}"
                         + "".join(f"<br><span class='note'>{esc(n)}</span>" for n in rec.notes) + "</li>")
        parts.append("</ul>")

    parts += list(sections)
    if figures:
        parts.append("<h2>Comparison</h2>")
        parts += [image(p, name) for name, p in figures.items()]

    parts.append("<h2>Runs</h2>")
    columns = [c for c in a.columns if c not in ("path", "metric")]
    parts.append(table(columns, a.table, left=("name", "status", "group")))

    if run_figures:
        parts.append("<h2>Per run</h2>")
        for name, p in run_figures.items():
            parts.append(f"<details><summary>{esc(name)}</summary>{image(p, name)}</details>")
    if skipped:
        parts.append("<h2>Skipped</h2><ul>" + "".join(f"<li>{esc(s)}</li>" for s in skipped) + "</ul>")
    parts.append("</body></html>")
    return _write_page(path, parts)


def _write_page(path: Path, parts: list[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_atomic(path, "\n".join(parts))
    return path


def write_transfer_html(path: Path, fits: list, figures: list[Path], *, title: str, sources: list[str]) -> Path:
    """A page of its own for `blueberry report transfer`."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>{esc(title)}</h1>",
             f"<p class='muted'>{sum(w.n_runs for f in fits for w in f.widths)} runs from {esc(', '.join(sources))}; "
             f"built {esc(time.strftime('%Y-%m-%d %H:%M'))}. Metric <code>{esc(fits[0].metric)}</code> "
             f"({'lower' if fits[0].mode == 'min' else 'higher'} is better), the best of each run.</p>",
             transfer_section(fits, figures), "</body></html>"]
    return _write_page(path, parts)


def transfer_section(fits: list, figures: list[Path]) -> str:
    """The transfer study (report/transfer.py) as HTML: per series the verdict, b, the prediction, the
    per-width table and the figure; with several series, each width's best loss side by side."""
    parts = ["<h2>Learning rate across width</h2>",
             "<p class='muted'>log lr* = a + b log(width): sp's AdamW LR falls as 1/width (b &asymp; -1); a LR that "
             "transfers stays put (b &asymp; 0). Each width's best loss is shown beside its lr*: a parametrization "
             "can transfer the LR and still reach a worse loss than sp at the same width.</p>"]
    for fit, figure in zip(fits, figures):
        if len(fits) > 1:
            parts.append(f"<h3>{esc(fit.label)}</h3>")
        parts.append(
            f"<p><b>{esc(fit.verdict)}</b>: " + (f"b = <b>{cell(fit.b)}</b>" if fit.b is not None else "no b (one width)")
            + (f", 95% interval {esc(interval(fit.b_low, fit.b_high))}" if fit.b_low is not None else "")
            + (f". Predicted {esc(fit.lr_field)}* at {esc(fit.width_field)} {esc(fmt(fit.prediction.width))}: "
               f"<b>{cell(fit.prediction.lr)}</b>"
               + (f" {esc(interval(fit.prediction.low, fit.prediction.high))}" if fit.prediction.low is not None else "")
               if fit.prediction else "") + "</p>")
        rows = [{fit.width_field: w.width, "runs": w.n_runs, "best grid LR": w.best_lr, "best " + fit.metric: w.best_loss,
                 "95% CI": interval(w.best_loss_low, w.best_loss_high), "lr*": w.lr_star,
                 "lr* 95% CI": interval(w.lr_low, w.lr_high), "within noise of the best": ", ".join(fmt(x) for x in w.band),
                 "notes": "; ".join(w.notes)} for w in fit.widths]
        parts.append(table(list(rows[0]) if rows else [], rows,
                           left=("95% CI", "lr* 95% CI", "within noise of the best", "notes")))
        parts += [f"<p class='note'>{esc(n)}</p>" for n in fit.notes]
        if figure is not None:
            parts.append(image(figure, f"learning rate across width: {fit.label}"))
    if len(fits) > 1:
        widths = sorted({w.width for fit in fits for w in fit.widths})
        rows = []
        for width in widths:
            row = {fits[0].width_field: width}
            for fit in fits:
                w = next((w for w in fit.widths if w.width == width), None)
                row[fit.label] = (f"{w.best_loss:.4g} {interval(w.best_loss_low, w.best_loss_high)} at {fmt(w.best_lr)}"
                                  if w else "")
            rows.append(row)
        parts.append(f"<h3>best {esc(fits[0].metric)} per width</h3>")
        parts.append(table(list(rows[0]), rows, left=tuple(f.label for f in fits)))
    return "\n".join(parts)

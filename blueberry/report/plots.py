"""Report figures as PNG files: one 4-panel figure per run, and comparisons across runs.

matplotlib is imported inside the functions (so `blueberry --help` stays instant), and figures
are built with matplotlib.figure.Figure rather than pyplot: no GUI backend, no global figure
state, nothing to close when a report is built inside a sweep runner or a notebook.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from blueberry.report.analyse import Analysis, LRRecommendation, MetricSpec, RunStats, eval_points, train_rows
from blueberry.report.load import Run

DPI = 100
MAX_LEGEND = 12           # more lines than this: no legend (it would cover the plot)
ACCURACY_KEYS = ("val/accuracy", "val/balanced_accuracy")


def _figure(rows: int, cols: int, size: tuple[float, float]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_xticks([])
    ax.set_yticks([])


def group_colors(analysis: Analysis) -> dict[str, tuple]:
    """One color per seed group, keyed by run name: seed repeats share a color."""
    from matplotlib import colormaps

    n = len(analysis.groups)
    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"]
    colors = {}
    for i, g in enumerate(analysis.groups):
        c = cmap(i % cmap.N) if n <= 20 else cmap(i / max(1, n - 1))
        for name in g.runs:
            colors[name] = c
    return colors


# --- one run -------------------------------------------------------------------------------------

def run_figure(run: Run, st: RunStats, spec: MetricSpec, path: Path, subtitle: str = "") -> Path:
    """Metric vs wall time (best marked); metric vs step (after-best shaded); val accuracy; LR."""
    fig, (a_time, a_step, a_acc, a_lr) = _figure(2, 2, (11, 7.5))
    fig.suptitle(f"{run.name}" + (f"  ({subtitle})" if subtitle else ""), fontsize=11)
    pts = [(s, v, t) for s, v, t in st.evals if math.isfinite(v)]
    timed = [(t, v, s) for s, v, t in pts if isinstance(t, (int, float))]
    if timed:
        a_time.plot([t for t, _, _ in timed], [v for _, v, _ in timed], marker=".", color="C0")
        at_best = [t for t, _, s in timed if s == st.best_step]
        if at_best and st.best is not None:
            a_time.plot(at_best[:1], [st.best], marker="*", markersize=14, color="C3", linestyle="none",
                        label=f"best {st.best:.4g} @ step {st.best_step}")
            a_time.legend(fontsize=8)
        _titled(a_time, f"{spec.curve} vs wall time", "wall time (s)", spec.curve)
    else:
        _empty(a_time, f"no {spec.curve} with wall time")
    if pts:
        steps = [s for s, _, _ in pts]
        a_step.plot(steps, [v for _, v, _ in pts], marker=".", color="C0", label=spec.curve)
        if st.best_step is not None and st.best_step < steps[-1]:
            a_step.axvspan(st.best_step, steps[-1], color="C3", alpha=0.12,
                           label=f"after best ({st.degradation_pct:+.1f}% at the end)"
                           if st.degradation_pct is not None else "after best")
        if st.best is not None:
            a_step.axhline(st.best, color="C3", linewidth=0.8, linestyle=":")
        a_step.legend(fontsize=8)
        _titled(a_step, f"{spec.curve} vs step", "step", spec.curve)
    else:
        _empty(a_step, f"no {spec.curve} logged")
    drawn = False
    for i, key in enumerate(ACCURACY_KEYS):
        acc = eval_points(run, key)
        if acc:
            a_acc.plot([s for s, _, _ in acc], [v for _, v, _ in acc], marker=".", color=f"C{i + 2}", label=key)
            drawn = True
    if drawn:
        a_acc.legend(fontsize=8)
        _titled(a_acc, "val accuracy", "step")
    else:
        _empty(a_acc, "no val accuracy logged")
    drawn = False
    for i, key in enumerate(("lr", "muon_lr")):
        lrs = train_rows(run, key)
        if lrs:
            a_lr.plot([s for s, _ in lrs], [v for _, v in lrs], color=f"C{i + 4}", label=key)
            drawn = True
    if drawn:
        a_lr.set_yscale("log")
        a_lr.legend(fontsize=8)
        if run.config.get("max_steps"):
            a_lr.axvline(run.config["max_steps"], color="0.6", linestyle="--", linewidth=0.8)
        _titled(a_lr, f"learning rate ({run.config.get('schedule', '?')} schedule)", "step")
    else:
        _empty(a_lr, "no LR logged")
    return _save(fig, path)


def _titled(ax, title: str, xlabel: str, ylabel: str | None = None) -> None:
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)


# --- comparisons ---------------------------------------------------------------------------------

def _legend(ax, n: int) -> None:
    if 0 < n <= MAX_LEGEND and ax.get_legend_handles_labels()[0]:   # an axis with no curves has no labels
        ax.legend(fontsize=7)


def _band(curves: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean and std over runs on the first run's steps, within the range every run covers."""
    curves = [c for c in curves if len(c) >= 2]
    if len(curves) < 2:
        return None
    lo = max(c[0][0] for c in curves)
    hi = min(c[-1][0] for c in curves)
    grid = np.array([s for s, _ in curves[0] if lo <= s <= hi], dtype=float)
    if len(grid) < 2:
        return None
    ys = np.array([np.interp(grid, [s for s, _ in c], [v for _, v in c]) for c in curves])
    return grid, ys.mean(axis=0), ys.std(axis=0, ddof=1)


def curves_figure(runs: list[Run], analysis: Analysis, path: Path) -> Path:
    """The metric vs step (seed groups as mean ± std bands) and vs wall time (every run)."""
    spec, colors = analysis.metric, group_colors(analysis)
    by_name = {r.name: r for r in runs}
    fig, (a_step, a_time) = _figure(1, 2, (13, 5))
    n_lines = 0
    for g in analysis.groups:
        curves = [[(s, v) for s, v, _ in analysis.stats[name].evals if math.isfinite(v)] for name in g.runs]
        band = _band(curves)
        color = colors[g.runs[0]]
        if band is not None:
            x, mean, std = band
            a_step.plot(x, mean, color=color, label=f"{g.label} (mean of {len(curves)} seeds)")
            a_step.fill_between(x, mean - std, mean + std, color=color, alpha=0.2)
            n_lines += 1
        else:
            for name, c in zip(g.runs, curves):
                if c:
                    a_step.plot([s for s, _ in c], [v for _, v in c], color=color, marker=".",
                                label=name if g.label == "all runs" else f"{name}: {g.label}")
                    n_lines += 1
        for name in g.runs:
            timed = [(t, v) for _, v, t in analysis.stats[name].evals if isinstance(t, (int, float)) and math.isfinite(v)]
            if timed:
                a_time.plot([t for t, _ in timed], [v for _, v in timed], color=color, alpha=0.8, label=name)
    bands = " (bands: ± std over seeds)" if analysis.has_seed_repeats else ""
    _titled(a_step, f"{spec.curve} vs step{bands}", "step", spec.curve)
    _titled(a_time, f"{spec.curve} vs wall time", "wall time (s)", spec.curve)
    _legend(a_step, n_lines)
    _legend(a_time, len(by_name))
    return _save(fig, path)


def best_final_figure(analysis: Analysis, path: Path) -> Path:
    """Best and final value per run (ranked), so runs that got worse after their best stand out."""
    rows = [r for r in analysis.table if r["best"] is not None or r["final"] is not None]
    fig, (ax,) = _figure(1, 1, (9, max(2.5, 0.35 * len(rows) + 1.2)))
    if not rows:
        _empty(ax, "no values")
        return _save(fig, path)
    y = np.arange(len(rows))
    best = [r["best"] if r["best"] is not None else np.nan for r in rows]
    final = [r["final"] if r["final"] is not None and math.isfinite(r["final"]) else np.nan for r in rows]
    ax.barh(y - 0.2, best, height=0.4, color="C0", label="best")
    ax.barh(y + 0.2, final, height=0.4, color="C1", label="final")
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    values = [v for v in best + final if math.isfinite(v)]
    if values:   # bars from 0 would hide differences of a few hundredths on a loss of 4
        lo, hi = min(values), max(values)
        pad = (hi - lo) * 0.15 or abs(hi) * 0.05 or 1.0
        ax.set_xlim(lo - pad, hi + pad)
    _titled(ax, f"best vs final {analysis.metric.curve} per run", analysis.metric.curve)
    ax.legend(fontsize=8)
    return _save(fig, path)


def accuracy_figure(runs: list[Run], analysis: Analysis, path: Path) -> Path | None:
    key = next((k for k in reversed(ACCURACY_KEYS) if any(k in row for r in runs for row in r.rows)), None)
    if key is None:
        return None
    colors = group_colors(analysis)
    fig, (ax,) = _figure(1, 1, (8, 5))
    for r in runs:
        pts = [(s, v) for s, v, _ in eval_points(r, key) if math.isfinite(v)]
        if pts:
            ax.plot([s for s, _ in pts], [v for _, v in pts], color=colors.get(r.name), marker=".", label=r.name)
    _titled(ax, f"{key} vs step", "step", key)
    _legend(ax, len(runs))
    return _save(fig, path)


def lr_figure(recs: list[LRRecommendation], spec: MetricSpec, path: Path) -> Path | None:
    """The metric vs LR on a log axis, per series; error bars = std over seeds; the range within noise shaded."""
    if not recs:
        return None
    params = sorted({r.param for r in recs})
    fig, axes = _figure(1, len(params), (6.5 * len(params), 4.5))
    for ax, param in zip(axes, params):
        mine = [r for r in recs if r.param == param]
        for i, rec in enumerate(mine):
            color = f"C{i % 10}"
            x = [p.lr for p in rec.points]
            y = [p.mean for p in rec.points]
            err = [p.std if p.std is not None else 0.0 for p in rec.points]
            name = " ".join(f"{k}={v}" for k, v in rec.series.items()) or param
            ax.errorbar(x, y, yerr=err, marker="o", color=color, capsize=3, label=name)
            ax.plot([rec.best_lr], [rec.best_mean], marker="*", markersize=14, color=color, linestyle="none")
            if rec.range[0] < rec.range[1]:
                ax.axvspan(rec.range[0], rec.range[1], color=color, alpha=0.1)
        ax.set_xscale("log")
        _titled(ax, f"{spec.curve} vs {param} (★ best, shaded: within noise)", param, f"{spec.curve} ({spec.rank_by})")
        _legend(ax, len(mine))
    return _save(fig, path)


def transfer_figure(fit, path: Path) -> Path:
    """report/transfer.py's fit: the metric vs LR, one curve per width (mean over seeds), each width's
    lr* marked with its interval and its near-optimal band shaded; then log lr* vs log width with the
    fitted line and the prediction at the target width."""
    fig, (a_lr, a_w) = _figure(1, 2, (13, 5))
    for i, w in enumerate(fit.widths):
        color = f"C{i % 10}"
        pts = [(lr, m) for lr, m in zip(w.lrs, w.means) if m is not None and math.isfinite(m)]
        a_lr.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, color=color,
                  label=f"{fit.width_field}={w.width:g}: lr* {w.lr_star:.3g}" if w.lr_star else f"{fit.width_field}={w.width:g}")
        if w.lr_star:
            a_lr.axvline(w.lr_star, color=color, ls="--", lw=1)
            a_lr.plot([w.best_lr], [w.best_loss], marker="*", ms=13, color=color, ls="none")
        if len(w.band) >= 2:
            a_lr.axvspan(min(w.band), max(w.band), color=color, alpha=0.08)
    a_lr.set_xscale("log")
    _titled(a_lr, (f"{fit.label}: " if fit.series else "") + f"{fit.metric} vs {fit.lr_field} per width "
            "(★ best grid LR, dashed: lr*, shaded: within noise)", fit.lr_field, fit.metric)
    _legend(a_lr, len(fit.widths))
    fitted = [w for w in fit.widths if w.lr_star]
    for i, w in enumerate(fit.widths):
        if not w.lr_star:
            continue
        lo, hi = w.lr_low or w.lr_star, w.lr_high or w.lr_star
        a_w.errorbar([w.width], [w.lr_star], yerr=[[w.lr_star - lo], [hi - w.lr_star]], marker="o", color=f"C{i % 10}",
                     capsize=4)
    if fit.b is not None and fitted:
        xs = [w.width for w in fit.widths] + ([fit.prediction.width] if fit.prediction else [])
        grid = np.geomspace(min(xs), max(xs), 50)
        a_w.plot(grid, np.exp(fit.a + fit.b * np.log(grid)), color="0.3", lw=1,
                 label=f"b = {fit.b:.2f}" + (f" [{fit.b_low:.2f}, {fit.b_high:.2f}]" if fit.b_low is not None else ""))
    if fit.prediction:
        p = fit.prediction
        err = [[p.lr - p.low], [p.high - p.lr]] if p.low is not None else None
        a_w.errorbar([p.width], [p.lr], yerr=err, marker="D", color="k", capsize=4, ls="none",
                     label=f"predicted at {p.width:g}: {p.lr:.3g}")
    a_w.set_xscale("log", base=2)
    a_w.set_yscale("log")
    _titled(a_w, f"lr* vs {fit.width_field} ({fit.verdict})", fit.width_field, f"lr* ({fit.lr_field})")
    if a_w.get_legend_handles_labels()[0]:
        a_w.legend(fontsize=8)
    return _save(fig, path)

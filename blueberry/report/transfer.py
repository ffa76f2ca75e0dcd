"""Does the best learning rate move with width? The fit behind `blueberry report transfer`.

For a sweep over width x log-spaced LR x seeds:
- per width, lr* from a quadratic in log lr fitted near the best grid LR (that LR and up to two grid
  LRs each side, every run a point, one offset per seed: seeds are paired, a seed's offset moves its
  whole curve and not its optimum), and the near-optimal band: the LRs whose noise verdict against
  the best (report/noise.py: paired t-test over shared seeds) cannot tell them apart from it;
- across widths, log lr* = a + b log(width) by least squares, b's 95% interval, and lr* at a
  target width with its interval. Verdict: shift-free when b's interval lies within (-0.5, 0.5)
  (nearer muP's 0 than sp's -1 everywhere), SP-like within (-1.5, -0.5), else unclear.

Intervals come from a parametric bootstrap of the seed-paired fits: each replicate redraws every
run's deviation from its width's fitted curve with that width's residual std (itself redrawn from
its chi-square law, so few residual degrees of freedom widen the interval), refits each width's lr*
and the line. A nonparametric bootstrap over whole seeds would need more seeds than a
sweep affords: two seeds have three distinct resamples. Lack of fit of the quadratic enters the
residuals, so an asymmetric loss curve widens the interval rather than biasing it unseen.
tests/test_transfer_report.py checks the coverage on synthetic sweeps with a known b.

Pure numpy in the fit (`fit_transfer`); `transfer_analyses` reads runs through report/analyse.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

CONFIDENCE = 0.95
WINDOW = 2               # grid LRs each side of the best one that the quadratic sees
BOOTSTRAP = 2000
SHIFT_FREE = (-0.5, 0.5)
SP_LIKE = (-1.5, -0.5)
WIDTH_FIELD = "d_model"


@dataclass
class WidthFit:
    width: float
    lrs: list[float]                  # the grid, ascending
    means: list[float | None]         # mean metric at each grid LR (None: no finite run)
    n_runs: int
    best_lr: float                    # the grid LR with the best mean
    best_loss: float                  # that mean: what this width reaches at its best LR
    lr_star: float | None = None      # the quadratic's optimum
    lr_low: float | None = None       # its 95% bootstrap interval
    lr_high: float | None = None
    window: list[float] = field(default_factory=list)   # the grid LRs the quadratic used
    band: list[float] = field(default_factory=list)     # LRs within noise of the best (paired verdicts)
    best_loss_low: float | None = None                  # 95% interval of best_loss over seeds
    best_loss_high: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Prediction:
    width: float
    lr: float
    low: float | None
    high: float | None


@dataclass
class TransferFit:
    widths: list[WidthFit]
    a: float | None = None            # log lr* = a + b log(width), natural logs
    b: float | None = None
    b_low: float | None = None
    b_high: float | None = None
    verdict: str = "unclear"
    prediction: Prediction | None = None
    residual_std: float | None = None  # pooled std of the runs around their width's quadratic
    residual_dof: int = 0
    notes: list[str] = field(default_factory=list)
    # filled by transfer_analyses
    series: dict[str, Any] = field(default_factory=dict)   # the other fields that set this fit apart
    lr_field: str = "lr"
    width_field: str = WIDTH_FIELD
    metric: str = ""
    mode: str = "min"

    @property
    def label(self) -> str:
        from blueberry.report.analyse import label

        return label(self.series, list(self.series)) if self.series else "all runs"

    def to_json(self) -> dict[str, Any]:
        from blueberry.report.analyse import clean

        out = asdict(self)
        out["label"] = self.label
        out["widths"] = [w.to_json() for w in self.widths]
        out["method"] = __doc__.split("\n\n")[2].replace("\n", " ")
        return clean(out)


# --- the fit (numpy only) --------------------------------------------------------------------------

@dataclass
class _Local:
    """One width's quadratic: fitted values, the projection from values to coefficients, where x = 0 is."""
    fitted: np.ndarray
    pinv: np.ndarray
    x0: float
    span: tuple[float, float]
    rss: float
    dof: int
    grid: np.ndarray                  # the window's log LRs, relative to x0


def fit_transfer(points: list[tuple[float, float, Any, float]], target: float | None = None, mode: str = "min",
                 seed: int = 0, bootstrap: int = BOOTSTRAP) -> TransferFit:
    """points: (width, lr, seed, metric value) per run (a non-finite value is a failed run and
    left out); `mode` min or max. See the module docstring."""
    sign = 1.0 if mode == "min" else -1.0
    by_width: dict[float, list[tuple[float, Any, float]]] = {}
    for width, lr, s, value in points:
        by_width.setdefault(float(width), []).append((float(lr), s, float(value)))
    fits, locals_ = [], []
    for width in sorted(by_width):
        fit, local = _fit_width(width, by_width[width], sign)
        fits.append(fit)
        locals_.append(local)
    result = TransferFit(widths=fits)
    usable = [lo for lo in locals_ if lo is not None]
    dof = sum(lo.dof for lo in usable)
    rss = sum(lo.rss for lo in usable)
    result.residual_dof = dof
    result.residual_std = math.sqrt(rss / dof) if dof else None
    xs_hat = np.array([math.log(f.lr_star) if f.lr_star else math.log(f.best_lr) for f in fits])
    logw = np.log(np.array([f.width for f in fits]))
    if len(fits) >= 2:
        result.a, result.b = _line(logw, xs_hat[None, :])
        result.a, result.b = float(result.a[0]), float(result.b[0])
    if not dof:
        result.notes.append("no residual degrees of freedom (add seeds or LRs around the optimum): no intervals")
    if dof and len(usable) == len(fits):
        draws = _bootstrap_optima(locals_, rss / dof, dof, np.random.default_rng(seed), bootstrap)   # [B, widths]
        q = (1 - CONFIDENCE) / 2
        for f, col in zip(fits, draws.T):
            f.lr_low, f.lr_high = (float(math.exp(v)) for v in np.quantile(col, [q, 1 - q]))
        if len(fits) >= 2:
            a, b = _line(logw, draws)
            result.b_low, result.b_high = (float(v) for v in np.quantile(b, [q, 1 - q]))
            if target:
                pred = a + b * math.log(target)
                low, high = np.quantile(pred, [q, 1 - q])
                result.prediction = Prediction(float(target), float(math.exp(result.a + result.b * math.log(target))),
                                               float(math.exp(low)), float(math.exp(high)))
    elif len(usable) < len(fits):
        result.notes.append("a width without a curved fit near its best LR: no intervals")
    if target and result.prediction is None and result.b is not None:
        result.prediction = Prediction(float(target), float(math.exp(result.a + result.b * math.log(target))), None, None)
    result.verdict = transfer_verdict(result)
    return result


def _fit_width(width: float, runs: list[tuple[float, Any, float]], sign: float) -> tuple[WidthFit, _Local | None]:
    lrs = sorted({lr for lr, _, _ in runs})
    finite = [(lr, s, v) for lr, s, v in runs if math.isfinite(v)]
    means = []
    for lr in lrs:
        vals = [v for x, _, v in finite if x == lr]
        means.append(float(np.mean(vals)) if vals else None)
    scored = [(sign * m, i) for i, m in enumerate(means) if m is not None]
    if not scored:
        return WidthFit(width, lrs, means, len(runs), lrs[0], math.nan, notes=["no finite run"]), None
    best = min(scored)[1]
    fit = WidthFit(width=width, lrs=lrs, means=means, n_runs=len(runs), best_lr=lrs[best], best_loss=means[best])
    if best in (0, len(lrs) - 1):
        fit.notes.append(f"the {'smallest' if best == 0 else 'largest'} LR tried is the best: the optimum may lie "
                         "beyond the grid; extend it")
    lo, hi = max(0, best - WINDOW), min(len(lrs) - 1, best + WINDOW)
    window = lrs[lo:hi + 1]
    fit.window = window
    rows = [(math.log(lr), s, sign * v) for lr, s, v in finite if window[0] <= lr <= window[-1]]
    if len({r[0] for r in rows}) < 3:
        fit.notes.append("fewer than 3 LRs near the best: lr* is the best grid LR")
        return fit, None
    x0 = math.log(lrs[best])
    x = np.array([r[0] - x0 for r in rows])
    y = np.array([r[2] for r in rows])
    seeds = sorted({repr(r[1]) for r in rows})
    cols = [np.ones_like(x), x, x * x] + [np.array([float(repr(r[1]) == s) for r in rows]) for s in seeds[1:]]
    X = np.stack(cols, axis=1)
    pinv = np.linalg.pinv(X)
    coef = pinv @ y
    fitted = X @ coef
    dof = len(y) - np.linalg.matrix_rank(X)
    span = (math.log(window[0]) - x0, math.log(window[-1]) - x0)
    grid = np.array([math.log(lr) - x0 for lr in window])
    local = _Local(fitted=fitted, pinv=pinv, x0=x0, span=span, rss=float(((y - fitted) ** 2).sum()), dof=int(dof),
                   grid=grid)
    x_star = float(_optimum(coef[1:2], coef[2:3], span, grid, fitted_grid=None)[0])
    if coef[2] <= 0:
        fit.notes.append("the loss does not curve up around the best LR: lr* is the best grid LR")
        x_star = 0.0
    fit.lr_star = float(math.exp(x0 + x_star))
    return fit, local


def _optimum(b1: np.ndarray, b2: np.ndarray, span: tuple[float, float], grid: np.ndarray,
             fitted_grid: np.ndarray | None) -> np.ndarray:
    """argmin of c + b1 x + b2 x^2 inside `span`; where it does not curve up (b2 <= 0), the grid
    point with the lowest fitted value (fitted_grid [B, len(grid)]), else 0."""
    curved = b2 > 0
    x = np.where(curved, -b1 / (2 * np.where(curved, b2, 1.0)), 0.0)
    x = np.clip(x, *span)
    if fitted_grid is not None and not curved.all():
        x = np.where(curved, x, grid[np.argmin(fitted_grid, axis=1)])
    return x


def _bootstrap_optima(locals_: list[_Local], var: float, dof: int, rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, widths] log lr* of the parametric bootstrap (module docstring). Each width's noise is its
    own residual variance (small models are often noisier than large ones); a width without
    residual degrees of freedom borrows the pooled one (`var`, `dof`)."""
    out = np.empty((n, len(locals_)))
    for j, lo in enumerate(locals_):
        own_var, own_dof = (lo.rss / lo.dof, lo.dof) if lo.dof else (var, dof)
        sigma = np.sqrt(own_var * own_dof / rng.chisquare(own_dof, size=n))
        y = lo.fitted[None, :] + sigma[:, None] * rng.standard_normal((n, len(lo.fitted)))
        coef = y @ lo.pinv.T
        grid_fit = coef[:, [1]] * lo.grid[None, :] + coef[:, [2]] * lo.grid[None, :] ** 2
        out[:, j] = lo.x0 + _optimum(coef[:, 1], coef[:, 2], lo.span, lo.grid, grid_fit)
    return out


def _line(logw: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (a, b) of x = a + b log w for each row of x [B, widths]."""
    c = logw - logw.mean()
    b = (x - x.mean(axis=1, keepdims=True)) @ c / (c @ c)
    a = x.mean(axis=1) - b * logw.mean()
    return a, b


def transfer_verdict(fit: TransferFit) -> str:
    if fit.b is None:
        return "unclear (one width: nothing to fit across widths)"
    if fit.b_low is None:
        return "unclear (no interval for b)"
    edges = [f.width for f in fit.widths if f.best_lr in (f.lrs[0], f.lrs[-1])]
    if edges:
        return f"unclear (the best LR is at the edge of the grid at width {', '.join(f'{w:g}' for w in edges)})"
    if SHIFT_FREE[0] < fit.b_low and fit.b_high < SHIFT_FREE[1]:
        return "shift-free"
    if SP_LIKE[0] < fit.b_low and fit.b_high < SP_LIKE[1]:
        return "SP-like"
    return "unclear"


# --- from runs -------------------------------------------------------------------------------------

def applies(analysis, width_field: str = WIDTH_FIELD) -> bool:
    """Whether a report's runs are a transfer study: one LR field swept at two or more widths."""
    return width_field in analysis.fields and len({rec.param for rec in analysis.lr}) == 1


def transfer_analyses(runs: list, metric: str | None = None, sweep_metric: str | None = None,
                      sweep_goal: str | None = None, target: float | None = None,
                      width_field: str = WIDTH_FIELD, analysis=None) -> list[TransferFit]:
    """The fit over report Runs, one per series: runs that differ in other fields than the width,
    the LR and the seed (e.g. param=sp and param=mup, two sweeps reported together) are fitted
    apart; a field that follows the width (expert_d_ff scaled with d_model) does not split them.
    Each run counts with its ranked value (report/analyse.py: the best of the metric over the run);
    near-optimal bands come from the report's noise verdicts (`analysis`: the report's own, when
    already made). UserError when the runs do not vary one LR or the width is not a number."""
    from blueberry.errors import UserError
    from blueberry.report.analyse import analyse, finite, is_identity

    analysis = analysis or analyse(runs, metric, sweep_metric, sweep_goal)
    lr_fields = sorted({rec.param for rec in analysis.lr})
    if not lr_fields:
        raise UserError("report transfer: the runs do not vary lr or muon_lr; a transfer study sweeps an LR at "
                        "several widths (sweeps/lr-transfer.yaml)")
    if len(lr_fields) > 1:
        raise UserError(f"report transfer: the runs vary {' and '.join(lr_fields)}; a transfer study sweeps one LR")
    lr_field = lr_fields[0]
    if not all(finite(r.config.get(width_field)) for r in runs):
        raise UserError(f"report transfer: --width-field {width_field}: not a number in every run's config")
    runs = [r for r in runs if finite(r.config.get(lr_field))
            and (lr_field != "muon_lr" or r.config.get("optimizer") == "muon")]
    split: list[str] = []
    for f in analysis.fields:   # a field that follows the width, or the fields kept so far, adds no series
        if f not in ("seed", lr_field, width_field) and not is_identity(f) and not _follows(runs, f, [width_field]) \
                and not (split and _follows(runs, f, split)):
            split.append(f)
    series: dict[tuple, list] = {}
    for r in runs:
        series.setdefault(tuple(repr(r.config.get(f)) for f in split), []).append(r)
    fits = []
    for members in series.values():
        points = [(r.config[width_field], r.config[lr_field], r.config.get("seed"),
                   v if (v := analysis.stats[r.name].value) is not None else math.nan) for r in members]
        fit = fit_transfer(points, target, analysis.metric.mode)
        fit.lr_field, fit.width_field, fit.metric, fit.mode = lr_field, width_field, analysis.metric.name, analysis.metric.mode
        fit.series = {f: members[0].config.get(f) for f in split}
        _add_bands(fit, analysis, width_field)
        fits.append(fit)
    return fits


def _follows(runs: list, field: str, by: list[str]) -> bool:
    """Whether `field` has one value per value of the fields `by` (e.g. expert_d_ff per d_model, or
    base_d_model per param): it then splits nothing they do not."""
    seen: dict[str, set[str]] = {}
    for r in runs:
        seen.setdefault(repr([r.config.get(b) for b in by]), set()).add(repr(r.config.get(field)))
    return all(len(v) == 1 for v in seen.values())


def _add_bands(fit: TransferFit, analysis, width_field: str) -> None:
    """Each width's near-optimal band and the interval of its best loss, from the report's LR
    recommendation of the same series (report/analyse.py lr_recommendations)."""
    for rec in analysis.lr:
        if any(k in rec.series and repr(rec.series[k]) != repr(v) for k, v in fit.series.items()):
            continue
        for w in fit.widths:
            width = rec.series.get(width_field)
            if (width is None and len(fit.widths) == 1) or (width is not None and float(width) == w.width):
                w.band = sorted(rec.within_noise)
                best = next(p for p in rec.points if p.lr == rec.best_lr)
                w.best_loss_low, w.best_loss_high = _mean_interval(best.values) or (None, None)


def _mean_interval(values: list[float]) -> tuple[float, float] | None:
    from blueberry.report.noise import mean_interval

    return mean_interval(values)

"""Is the difference between two configs larger than seed noise? t-tests and bootstrap intervals
that stay honest with the 2-5 seeds a sweep affords.

- Both configs ran >= 2 of the same seeds: a paired t-test over the shared seeds (scipy
  `ttest_rel`): a seed fixes init and data order, so per-seed differences cancel that noise.
- Otherwise, both with >= 2 distinct seeds: Welch's t-test with Welch-Satterthwaite degrees of
  freedom (scipy `ttest_ind(equal_var=False)`); with 2-3 seeds the critical t is 3-4, not 2.
- A config without its own spread (one run, or reruns of one seed) borrows the pooled within-config
  std of the study, with that estimate's degrees of freedom; the verdict is marked `borrowed`.
Verdicts are two-sided at ALPHA. Intervals for a config's mean are percentile bootstrap intervals
(scipy `bootstrap`); with 2-3 values they are narrower than the truth, so the p-value decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05
CONFIDENCE = 0.95
NOISE_RULE = (f"two configs differ when a two-sided t-test gives p < {ALPHA:g}: paired over shared seeds when "
              "both ran >= 2 of the same seeds, else Welch's with Welch-Satterthwaite degrees of freedom; a "
              "config without its own spread (run once) borrows the pooled within-config std (marked borrowed). "
              f"Intervals: {CONFIDENCE:.0%} bootstrap CI of the mean over seeds")


@dataclass
class Comparison:
    test: str | None            # paired | welch | borrowed | None (no spread anywhere: unknown)
    p_value: float | None
    dof: float | None
    within_noise: bool | None   # p >= ALPHA; None when unknown


def _spread(values: Sequence[float], seeds: Sequence[Any]) -> float | None:
    """std over seeds (ddof 1), or None under 2 values or 2 distinct seeds (reruns of one seed
    measure nondeterminism only, which understates seed noise)."""
    if len(values) < 2 or len({repr(s) for s in seeds}) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def compare(a: Sequence[float], a_seeds: Sequence[Any], b: Sequence[float], b_seeds: Sequence[Any],
            pooled: float | None = None, pooled_dof: int = 0) -> Comparison:
    """The noise verdict for mean(b) - mean(a); `pooled`/`pooled_dof` lend a spread to a side
    that has none of its own."""
    from scipy import stats

    if not a or not b:
        return Comparison(None, None, None, None)
    shared = _shared_seeds(a, a_seeds, b, b_seeds)
    if shared is not None:
        x, y = shared
        diffs = [v - u for u, v in zip(x, y)]
        if max(diffs) == min(diffs):   # no spread in the differences: scipy's t is undefined
            p = 1.0 if diffs[0] == 0 else 0.0
        else:
            p = float(stats.ttest_rel(y, x).pvalue)
        return Comparison("paired", p, float(len(diffs) - 1), p >= ALPHA)
    s_a, s_b = _spread(a, a_seeds), _spread(b, b_seeds)
    if s_a is not None and s_b is not None:
        if s_a == s_b == 0:
            p = 1.0 if sum(a) / len(a) == sum(b) / len(b) else 0.0
            return Comparison("welch", p, None, p >= ALPHA)
        res = stats.ttest_ind(b, a, equal_var=False)
        return Comparison("welch", float(res.pvalue), float(res.df), float(res.pvalue) >= ALPHA)
    if pooled is None or pooled_dof < 1:
        return Comparison(None, None, None, None)
    # Welch's statistic with the pooled std standing in for a missing spread, and its degrees of
    # freedom (pooled_dof) in the Welch-Satterthwaite sum.
    parts = [(s * s / len(v), len(v) - 1) if s is not None else (pooled * pooled / len(v), pooled_dof)
             for v, s in ((a, s_a), (b, s_b))]
    var = sum(p[0] for p in parts)
    delta = sum(b) / len(b) - sum(a) / len(a)
    if var == 0:
        p = 1.0 if delta == 0 else 0.0
        return Comparison("borrowed", p, None, p >= ALPHA)
    dof = var ** 2 / sum(v * v / d for v, d in parts)
    p = float(2 * stats.t.sf(abs(delta) / math.sqrt(var), dof))
    return Comparison("borrowed", p, float(dof), p >= ALPHA)


def _shared_seeds(a, a_seeds, b, b_seeds) -> tuple[list[float], list[float]] | None:
    """(a, b) values at the seeds both ran once each, when there are >= 2 such seeds."""
    def by_seed(values, seeds):
        keys = [repr(s) for s in seeds]
        return {k: v for k, v in zip(keys, values) if keys.count(k) == 1}

    x, y = by_seed(a, a_seeds), by_seed(b, b_seeds)
    common = [k for k in x if k in y]
    if len(common) < 2:
        return None
    return [x[k] for k in common], [y[k] for k in common]


def mean_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """Percentile bootstrap CONFIDENCE interval of the mean; None under 2 values."""
    from scipy import stats

    if len(values) < 2:
        return None
    if max(values) == min(values):
        return float(values[0]), float(values[0])
    res = stats.bootstrap((list(values),), _mean, confidence_level=CONFIDENCE, n_resamples=2000,
                          method="percentile", rng=0)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean(x, axis=-1):
    import numpy as np

    return np.mean(x, axis=axis)

"""W&B's hyperband early termination (`early_terminate: {type: hyperband, ...}`).

The rule followed is `hyperband_stop_runs` of wandb/sweeps (src/sweeps/hyperband_stopping.py, the
version with `strict`), which the W&B backend runs; its schema (src/sweeps/config/schema.json)
fills the defaults eta=3 and strict=true.

- Bands: with `max_iter` and `s`, max_iter/eta, max_iter/eta**2, ... (s of them, stopping below 1),
  truncated to ints and sorted; with `min_iter`, int(min_iter * eta**k) for k = 0..99.
- An iteration is one logged value of the metric: a run has reached band b once it logged b values.
- Threshold at band b: over every run (running or not) that reached b, its b-th value; sorted best
  first, the threshold is the value at index int(n / eta). A run passes when it is at least as good
  as that threshold: the best int(n / eta) + 1 runs (and ties), i.e. the top 1/eta and one more.
- Only running runs are stopped, judged at the last band they reached; nothing is judged before the
  first band. strict (the default): the run's value at that band must pass; strict: false: its best
  value so far (which may come from later iterations) must.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Mapping, Sequence
from typing import Any

from blueberry.sweep.params import is_finite_number


def hyperband_bands(early_terminate: Mapping[str, Any]) -> list[int]:
    """The iterations at which runs are judged, smallest first."""
    eta = early_terminate.get("eta", 3)
    if "max_iter" in early_terminate:
        band, bands = early_terminate["max_iter"], []
        for _ in range(early_terminate["s"]):
            band /= eta
            if band < 1:
                break
            bands.append(int(band))
        return sorted(bands)
    band, bands = early_terminate["min_iter"], []
    for _ in range(100):
        bands.append(int(band))
        band *= eta
    return bands


def _oriented(history: Sequence[Any], goal: str) -> list[float]:
    """The valid values of a history, negated under maximize so that lower is always better."""
    sign = -1.0 if goal == "maximize" else 1.0
    return [sign * float(v) for v in history if is_finite_number(v)]


def _oriented_thresholds(oriented: list[list[float]], bands: Sequence[int], eta: float) -> list[float]:
    r = 1.0 / eta   # W&B's r; int(r * n) can differ from int(n / eta) in the last bit
    out = []
    for band in bands:
        values = sorted(h[band - 1] for h in oriented if len(h) >= band)
        out.append(values[int(r * len(values))] if values else math.inf)
    return out


def _stops(history: list[float], bands: Sequence[int], thresholds: list[float], strict: bool) -> bool:
    reached = [(b, t) for b, t in zip(bands, thresholds) if b <= len(history)]
    if not reached:
        return False
    band, threshold = reached[-1]
    return (history[band - 1] if strict else min(history)) > threshold


def runs_to_stop(config: Mapping[str, Any], histories: Mapping[Hashable, Sequence[Any]],
                 running: Collection[Hashable]) -> list[Hashable]:
    """The running trials hyperband stops now.

    `histories` maps every trial of the sweep (finished, failed and stopped ones too) to the values
    of `metric.name` it logged, one per evaluation, in order; `running` are the keys that may be
    stopped. Empty when the sweep has no hyperband early_terminate.
    """
    et = config.get("early_terminate")
    if not isinstance(et, Mapping) or et.get("type") != "hyperband":
        return []
    goal = (config.get("metric") or {}).get("goal", "minimize")
    goal = goal if goal in ("minimize", "maximize") else "minimize"   # W&B drops an invalid goal
    eta = et.get("eta", 3)
    strict = et.get("strict", True) is True
    bands = hyperband_bands(et)
    oriented = {key: _oriented(history, goal) for key, history in histories.items()}
    thresholds = _oriented_thresholds(list(oriented.values()), bands, eta)
    return [key for key, history in oriented.items() if key in running and _stops(history, bands, thresholds, strict)]

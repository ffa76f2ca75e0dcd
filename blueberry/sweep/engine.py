"""Trial proposals for a W&B sweep config, with W&B's semantics, deterministic given a seed.

Grid and random follow wandb/sweeps (grid_search.py, random_search.py, params.HyperParameter.ppf):
parameters are taken in sorted name order (nested blocks depth first, their values renested into
dicts), grid values in listed order with the first parameter varying slowest, int_uniform gridded
as range(min, max + 1) and q_uniform as numpy.arange(min, max, q) (max itself excluded, as in W&B).
Bayes is Optuna's TPE (W&B's own bayes is a Gaussian process); optuna is imported only there.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from statistics import NormalDist
from typing import Any

from blueberry.errors import UserError
from blueberry.sweep.command import as_delivered
from blueberry.sweep.params import distribution_of, is_finite_number, quantize, setting

NEST = ".wbnest[599c28ca25da]."   # W&B's HyperParameterSet.NESTING_DELIMITER; names the Optuna params
Path = tuple[str, ...]


def leaves(parameters: Mapping[str, Any], prefix: Path = ()) -> list[tuple[Path, dict, str]]:
    """(path, spec, distribution) of every non-nested parameter, in W&B's order."""
    out: list[tuple[Path, dict, str]] = []
    for name in sorted(parameters):
        spec = parameters[name]
        dist = distribution_of(spec)
        if dist == "parameters":
            out += leaves(spec["parameters"], (*prefix, name))
        else:
            out.append(((*prefix, name), spec, dist))
    return out


def renest(flat: Sequence[tuple[Path, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat:
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _lookup(params: Mapping[str, Any], path: Path) -> Any:
    node: Any = params
    for key in path:
        node = node[key]   # KeyError/TypeError: the trial lacks this parameter
    return node


def canonical(value: Any) -> str:
    """Equality of parameter values as the W&B grid dedupes them (grid_search.yaml_hash): integer
    floats equal ints, mapping order does not matter; true is not 1."""
    return json.dumps(as_delivered(value), sort_keys=True)


# --- grid ----------------------------------------------------------------------------------------

def _arange(start: float, stop: float, step: float) -> list[float]:
    """numpy.arange(start, stop, step).tolist() without numpy: start + i * (start + step - start)."""
    n = max(math.ceil((stop - start) / step), 0)
    delta = (start + step) - start
    return [start + i * delta for i in range(n)]


def grid_values(spec: dict, dist: str) -> list[Any]:
    if dist == "constant":
        return [spec["value"]]
    if dist == "categorical":
        return list(spec["values"])
    if dist == "int_uniform":
        return list(range(spec["min"], spec["max"] + 1))
    if dist == "q_uniform":
        return _arange(spec["min"], spec["max"], setting(spec, "q"))
    raise UserError(f"distribution '{dist}' cannot be gridded: use values, value, int_uniform or q_uniform")


def iter_grid(parameters: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every grid point once, in W&B's order (lazily: a grid can be large)."""
    found = leaves(parameters)
    paths = [path for path, _, _ in found]
    seen: set[tuple[str, ...]] = set()
    for combo in itertools.product(*(grid_values(spec, dist) for _, spec, dist in found)):
        key = tuple(canonical(v) for v in combo)
        if key not in seen:   # a value listed twice (or 1 and 1.0) is one grid point
            seen.add(key)
            yield renest(list(zip(paths, combo)))


def grid_points(parameters: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(iter_grid(parameters))


def _grid_key(params: Mapping[str, Any], paths: list[Path]) -> tuple[str, ...] | None:
    try:
        return tuple(canonical(_lookup(params, path)) for path in paths)
    except (KeyError, TypeError):
        return None


def next_grid_point(parameters: Mapping[str, Any], taken: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    paths = [path for path, _, _ in leaves(parameters)]
    seen = {_grid_key(t, paths) for t in taken}
    for point in iter_grid(parameters):
        if _grid_key(point, paths) not in seen:
            return point
    return None


# --- random --------------------------------------------------------------------------------------

def _uniform_draw(rng: random.Random) -> float:
    u = rng.random()
    return u if u > 0.0 else 5e-324   # inv_cdf needs 0 < u


def sample_value(spec: dict, dist: str, rng: random.Random) -> Any:
    """One draw of a parameter, by inverse CDF of one uniform as W&B's HyperParameter.ppf."""
    u = _uniform_draw(rng)
    lo, hi, q = spec.get("min"), spec.get("max"), setting(spec, "q")
    mu, sigma = setting(spec, "mu"), setting(spec, "sigma")
    if dist == "constant":
        return spec["value"]
    if dist == "categorical":
        values = spec["values"]
        return values[min(int(u * len(values)), len(values) - 1)]
    if dist == "categorical_w_probabilities":
        values = spec["values"]
        cdf = list(itertools.accumulate(spec["probabilities"]))
        return values[min(bisect.bisect_right(cdf, u), len(values) - 1)]
    if dist == "int_uniform":
        return lo + min(int(u * (hi - lo + 1)), hi - lo)
    if dist in ("uniform", "q_uniform"):
        x = lo + u * (hi - lo)
        return quantize(x, q) if dist == "q_uniform" else x
    if dist in ("log_uniform", "q_log_uniform"):
        x = math.exp(lo + u * (hi - lo))
        return quantize(x, q) if dist == "q_log_uniform" else x
    if dist in ("log_uniform_values", "q_log_uniform_values"):
        x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        return quantize(x, q) if dist == "q_log_uniform_values" else x
    if dist == "inv_log_uniform":
        return math.exp(-(lo + (1.0 - u) * (hi - lo)))
    if dist == "inv_log_uniform_values":   # W&B: the v1 formula on -log(max), -log(min)
        a, b = -math.log(hi), -math.log(lo)
        return math.exp(-(a + (1.0 - u) * (b - a)))
    if dist in ("normal", "q_normal", "log_normal", "q_log_normal"):
        x = _normal_ppf(u, mu, sigma)
        x = math.exp(x) if "log" in dist else x
        return quantize(x, q) if dist.startswith("q_") else x
    if dist in ("beta", "q_beta"):
        x = rng.betavariate(setting(spec, "a"), setting(spec, "b"))
        return quantize(x, q) if dist == "q_beta" else x
    raise UserError(f"unknown distribution {dist!r}")


def _normal_ppf(u: float, mu: float, sigma: float) -> float:
    return mu if sigma == 0 else NormalDist(mu, sigma).inv_cdf(min(u, 1.0 - 1e-16))


def sample_random(parameters: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
    """One random trial: every parameter drawn from its distribution, nested blocks as dicts."""
    return renest([(path, sample_value(spec, dist, rng)) for path, spec, dist in leaves(parameters)])


# --- bayes (Optuna TPE) --------------------------------------------------------------------------

_EPS = 1e-12   # normal-family parameters live in CDF space (0, 1), as W&B's bayes normalises them


class _Codec:
    """A sweep parameter as an Optuna distribution: decode() gives the trial value, encode() maps a
    trial value back (ValueError when the space cannot hold it)."""

    def __init__(self, spec: dict, dist: str):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        self.spec, self.dist = spec, dist
        lo, hi, q = spec.get("min"), spec.get("max"), setting(spec, "q")
        self.q = q
        if dist in ("categorical", "categorical_w_probabilities"):
            # indices: Optuna choices must be scalars, sweep values may be lists or dicts
            self.keys = [canonical(v) for v in spec["values"]]
            self.distribution = CategoricalDistribution(list(range(len(self.keys))))
        elif dist == "int_uniform":
            self.distribution = IntDistribution(lo, hi)
        elif dist == "uniform":
            self.distribution = FloatDistribution(lo, hi)
        elif dist == "q_uniform":
            # W&B's values are k*q for k in [round(min/q), round(max/q)]: step over k
            self.distribution = IntDistribution(round(lo / q), round(hi / q))
        elif dist in _LOG_RANGES:
            self.low, self.high = _LOG_RANGES[dist](lo, hi)
            self.distribution = FloatDistribution(self.low, self.high, log=True)
        elif dist in ("normal", "q_normal", "log_normal", "q_log_normal"):
            self.mu, self.sigma = setting(spec, "mu"), setting(spec, "sigma")
            self.distribution = FloatDistribution(_EPS, 1.0 - _EPS)
        else:
            raise UserError(f"distribution '{dist}' has no Optuna mapping in the local bayes engine; "
                            "use method random for it")

    def decode(self, x: Any) -> Any:
        d = self.dist
        if d.startswith("categorical"):
            return self.spec["values"][x]
        if d == "q_uniform":
            return quantize(x * self.q, self.q)
        if d in _LOG_RANGES:
            return quantize(x, self.q) if d.startswith("q_") else x
        if d in ("normal", "q_normal", "log_normal", "q_log_normal"):
            y = _normal_ppf(x, self.mu, self.sigma)
            y = math.exp(y) if "log" in d else y
            return quantize(y, self.q) if d.startswith("q_") else y
        return x

    def encode(self, v: Any) -> Any:
        d = self.dist
        if d.startswith("categorical"):
            return self.keys.index(canonical(v))
        if not is_finite_number(v):
            raise ValueError(v)
        if d == "int_uniform":
            if not float(v).is_integer():
                raise ValueError(v)
            return self._inside(int(v))
        if d == "uniform":
            return self._inside(float(v))
        if d == "q_uniform":
            return self._inside(round(v / self.q))
        if d in _LOG_RANGES:
            # a quantized value may sit just outside the continuous range it came from
            return min(max(float(v), self.low), self.high) if d.startswith("q_") else self._inside(float(v))
        if "log" in d:
            if v <= 0:
                return _EPS
            v = math.log(v)
        u = NormalDist(self.mu, self.sigma).cdf(v) if self.sigma > 0 else 0.5
        return min(max(u, _EPS), 1.0 - _EPS)

    def _inside(self, v: Any) -> Any:
        if not self.distribution.low <= v <= self.distribution.high:
            raise ValueError(v)
        return v


_LOG_RANGES = {
    "log_uniform": lambda lo, hi: (math.exp(lo), math.exp(hi)),
    "q_log_uniform": lambda lo, hi: (math.exp(lo), math.exp(hi)),
    "log_uniform_values": lambda lo, hi: (lo, hi),
    "q_log_uniform_values": lambda lo, hi: (lo, hi),
    # exp(-U) is log-uniform too: the same distribution over these values
    "inv_log_uniform": lambda lo, hi: (math.exp(-hi), math.exp(-lo)),
    "inv_log_uniform_values": lambda lo, hi: (lo, hi),
}


class BayesProposer:
    """Bayesian proposals through Optuna's TPE over the sweep's parameters.

    Its state is rebuilt from `history`, the (params, value) of finished trials (value None for a
    failed one), and `running`, the params of trials still running (told to TPE's constant liar);
    so a resumed sweep or a second process on the same sweep dir sees the same study.
    """

    def __init__(self, parameters: Mapping[str, Any], goal: str = "minimize", seed: int = 0,
                 history: Sequence[tuple[Mapping[str, Any], float | None]] = (),
                 running: Sequence[Mapping[str, Any]] = (), *, n_startup_trials: int = 10):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)   # no line per trial
        self._optuna = optuna
        self._constants: list[tuple[Path, Any]] = []
        self._codecs: dict[str, tuple[Path, _Codec]] = {}
        for path, spec, dist in leaves(parameters):
            if dist == "constant":
                self._constants.append((path, spec["value"]))
            else:
                self._codecs[NEST.join(path)] = (path, _Codec(spec, dist))
        self.distributions = {name: codec.distribution for name, (_, codec) in self._codecs.items()}
        sampler = optuna.samplers.TPESampler(seed=seed % 2**32, n_startup_trials=n_startup_trials)
        self.study = optuna.create_study(direction="maximize" if goal == "maximize" else "minimize",
                                         sampler=sampler)
        self.skipped = 0   # history entries outside the current space (the YAML changed)
        for params, value in history:
            self._add(params, value, running=False)
        for params in running:
            self._add(params, None, running=True)

    def _add(self, params: Mapping[str, Any], value: float | None, running: bool) -> None:
        State = self._optuna.trial.TrialState
        try:
            internal = {name: codec.encode(_lookup(params, path)) for name, (path, codec) in self._codecs.items()}
        except (KeyError, TypeError, ValueError):
            self.skipped += 1
            return
        ok = is_finite_number(value)
        state = State.RUNNING if running else State.COMPLETE if ok else State.FAIL
        self.study.add_trial(self._optuna.trial.create_trial(
            params=internal, distributions=self.distributions, state=state,
            value=float(value) if ok and not running else None))

    def suggest(self) -> tuple[int, dict[str, Any]]:
        """(trial key, params) of a new trial; tell() its result under that key."""
        trial = self.study.ask(self.distributions)
        flat = [*self._constants,
                *((path, codec.decode(trial.params[name])) for name, (path, codec) in self._codecs.items())]
        return trial.number, renest(sorted(flat))

    def tell(self, trial_key: int, value: float | None) -> None:
        """The trial's final metric value; None (or NaN) for a failed trial."""
        if is_finite_number(value):
            self.study.tell(trial_key, float(value))
        else:
            self.study.tell(trial_key, state=self._optuna.trial.TrialState.FAIL)


# --- the runner's entry point --------------------------------------------------------------------

def _derived_seed(seed: int, n: int) -> int:
    """A seed per proposal: runners rebuilding state from the same sweep dir agree, and each new
    proposal differs from the last even while bayes is still in its random startup."""
    return int(hashlib.sha256(f"{seed}/{n}".encode()).hexdigest()[:8], 16)


def _still_running(taken: Sequence[Mapping[str, Any]],
                   finished: Sequence[tuple[Mapping[str, Any], Any]]) -> list[Mapping[str, Any]]:
    done: dict[str, int] = {}
    for params, _ in finished:
        done[canonical(params)] = done.get(canonical(params), 0) + 1
    out = []
    for params in taken:
        key = canonical(params)
        if done.get(key):
            done[key] -= 1
        else:
            out.append(params)
    return out


def target_reached(config: Mapping[str, Any], finished: Sequence[tuple[Mapping[str, Any], Any]]) -> bool:
    """Whether a finished trial reached metric.target (then W&B starts no new run)."""
    metric = config.get("metric") or {}
    target = metric.get("target")
    if not is_finite_number(target):
        return False
    maximize = metric.get("goal") == "maximize"
    return any(is_finite_number(v) and (v >= target if maximize else v <= target) for _, v in finished)


def next_params(config: Mapping[str, Any], finished: Sequence[tuple[Mapping[str, Any], float | None]],
                taken: Sequence[Mapping[str, Any]], seed: int) -> dict[str, Any] | None:
    """The parameters of the next trial of a (validated) sweep, or None when the sweep is done.

    `taken`: the params of every trial started so far, running, finished or failed (grid never
    repeats one of them). `finished`: (params, final metric value or None when it failed) of the
    trials that ended. Done: run_cap trials taken, metric.target reached, or the grid exhausted.
    """
    method = config.get("method")
    parameters = config.get("parameters") or {}
    cap = config.get("run_cap")
    if (cap and len(taken) >= cap) or target_reached(config, finished):
        return None
    if method == "grid":
        return next_grid_point(parameters, taken)
    scheduler = config.get("scheduler")
    if method not in ("random", "bayes") or (isinstance(scheduler, Mapping) and scheduler.get("engine") != "wandb"):
        raise UserError(f"method: {method!r}: the local engine runs grid, random and bayes "
                        "(custom schedulers run under wandb sweep-scheduler)")
    seed = _derived_seed(seed, len(taken))
    if method == "random":
        return sample_random(parameters, random.Random(seed))
    goal = (config.get("metric") or {}).get("goal", "minimize")
    proposer = BayesProposer(parameters, goal, seed, finished, _still_running(taken, finished))
    return proposer.suggest()[1]

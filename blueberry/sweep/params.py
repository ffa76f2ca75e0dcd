"""W&B's parameter model: the distributions a sweep parameter may have, their keys and defaults.

The tables follow W&B's JSON schema (wandb/sweeps src/sweeps/config/schema.json) and
`params.HyperParameter`; the validator (spec), the proposal engine and hyperband all read them.
"""

from __future__ import annotations

import math
from typing import Any

# distribution -> (required keys, optional keys), each key with its kind (see wandb_spec.KINDS)
DISTRIBUTIONS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "constant": ({"value": "any"}, {}),
    "categorical": ({"values": "values"}, {}),
    "categorical_w_probabilities": ({"values": "values", "probabilities": "probs"}, {}),
    "int_uniform": ({"min": "int", "max": "int"}, {}),
    "uniform": ({"min": "number", "max": "number"}, {}),
    "q_uniform": ({"min": "number", "max": "number"}, {"q": "pos"}),
    "log_uniform": ({"min": "number", "max": "number"}, {}),
    "log_uniform_values": ({"min": "pos", "max": "number"}, {}),
    "q_log_uniform": ({"min": "number", "max": "number"}, {"q": "pos"}),
    "q_log_uniform_values": ({"min": "pos", "max": "number"}, {"q": "pos"}),
    "inv_log_uniform": ({"min": "number", "max": "number"}, {}),
    "inv_log_uniform_values": ({"min": "pos", "max": "number"}, {}),
    "normal": ({}, {"mu": "number", "sigma": "nonneg"}),
    "q_normal": ({}, {"mu": "number", "sigma": "nonneg", "q": "pos"}),
    "log_normal": ({}, {"mu": "number", "sigma": "nonneg"}),
    "q_log_normal": ({}, {"mu": "number", "sigma": "nonneg", "q": "pos"}),
    "beta": ({}, {"a": "nonneg", "b": "nonneg"}),
    "q_beta": ({}, {"a": "nonneg", "b": "nonneg", "q": "pos"}),
}
DEFAULTS = {"q": 1.0, "mu": 0.0, "sigma": 1.0, "a": 1, "b": 1}   # the schema's defaults
GRIDDABLE = ("constant", "categorical", "int_uniform", "q_uniform")   # grid_search_next_runs
DEPRECATED = ("log_uniform", "inv_log_uniform", "q_log_uniform")     # params.PARAM_DEPRECATION_MAP


def is_finite_number(v: Any) -> bool:
    """A real number (not a bool), finite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def distribution_of(spec: dict[str, Any]) -> str:
    """The distribution W&B gives a parameter spec; "parameters" for a nested block."""
    if "parameters" in spec:
        return "parameters"
    if spec.get("distribution"):
        return spec["distribution"]
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical_w_probabilities" if "probabilities" in spec else "categorical"
    return "int_uniform" if is_int(spec.get("min")) and is_int(spec.get("max")) else "uniform"


def setting(spec: dict[str, Any], key: str) -> Any:
    return spec.get(key, DEFAULTS.get(key))


def quantize(x: float, q: float) -> int | float:
    """round(x / q) * q, an int when q is an int (W&B's HyperParameter.ppf)."""
    k = round(x / q)
    return int(k * q) if is_int(q) else float(k * q)


def listed_values(spec: dict[str, Any]) -> list[Any]:
    """The values a parameter lists: its `values`, else its single `value` (None for a distribution)."""
    return spec["values"] if isinstance(spec.get("values"), list) else [spec.get("value")]


def varied_parameters(parameters: Any) -> list[str]:
    """The config keys a sweep varies, for plots: parameters with more than one value or a distribution;
    for a dict-valued parameter (a list of recipes, a nested block), the keys inside it that vary."""
    if not isinstance(parameters, dict):
        return []
    out: list[str] = []
    for name, spec in parameters.items():
        if not isinstance(spec, dict):
            continue
        dist = distribution_of(spec)
        values = spec.get("values") if isinstance(spec.get("values"), list) else None
        if dist == "parameters":
            out += [k for k in varied_parameters(spec["parameters"]) if k not in out]
        elif values is not None and values and all(isinstance(v, dict) for v in values):
            keys = list(dict.fromkeys(k for v in values for k in v))
            out += [k for k in keys if k != "name" and k not in out
                    and len({repr(v.get(k)) for v in values}) > 1]
        elif dist != "constant" and (values is None or len(values) > 1) and name not in out:
            out.append(name)
    return out

"""Fail fast when the Hugging Face hub cannot be reached.

`datasets.load_dataset` and `from_pretrained` retry a dead network for ~25 s before failing, so
callers probe once here and turn "offline" into one UserError line.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from blueberry.errors import UserError
from blueberry.network import url_reachable

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = ("1", "true", "yes", "on")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or "https://huggingface.co"


def offline_var() -> str | None:
    """The offline variable that is set (HF_HUB_OFFLINE=1 ...), if any."""
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def hub_reachable(timeout: float = 5.0) -> bool:
    """True when the hub endpoint answers a HEAD request (any HTTP status) within `timeout` s."""
    return not offline_var() and url_reachable(hub_endpoint(), timeout)


def require_hub(what: str, hint: str = "use --data synthetic or a local file") -> None:
    """Raise UserError `what: cannot reach the Hugging Face hub (host); hint` when offline."""
    host = urlparse(hub_endpoint()).netloc or hub_endpoint()
    var = offline_var()
    if var:
        raise UserError(f"{what}: cannot reach the Hugging Face hub ({host}): {var} is set; {hint}")
    if not hub_reachable():
        raise UserError(f"{what}: cannot reach the Hugging Face hub ({host}); {hint}")

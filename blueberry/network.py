"""Can we reach the two outside services (the Hugging Face hub, the W&B server), and do we have a
W&B key? Asked once, bounded in time, before any library call that would retry for minutes."""

from __future__ import annotations

import netrc
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlparse

from blueberry.errors import UserError

T = TypeVar("T")


def within(timeout: float, call: Callable[[], T]) -> T | None:
    """call() on a daemon thread, or None when it has not returned within `timeout` seconds (or raised an
    OSError/ValueError). A socket timeout does not cover DNS resolution, which can hang much longer on a
    half-configured network; the thread bounds the whole call."""
    result: list = []

    def run() -> None:
        try:
            result.append(call())
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else None


def url_reachable(url: str, timeout: float = 5.0) -> bool:
    """True when `url` answers a HEAD request (any HTTP status) within `timeout` seconds."""
    def probe() -> bool:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # the server answered, even if with 4xx/5xx
        return True

    return bool(within(timeout, probe))


def wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "").strip().rstrip("/") or "https://api.wandb.ai"


def wandb_api_key() -> str | None:
    """The W&B API key from the environment or ~/.netrc for the W&B host (no network, no prompt)."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    host = urlparse(wandb_base_url()).hostname or ""
    try:
        found = netrc.netrc().authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return None
    return found[2] if found else None


def has_wandb_key() -> bool:
    """An API key (or a W&B identity token file) is configured."""
    return bool(wandb_api_key() or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"))


def require_wandb_server(what: str, hint: str) -> None:
    """UserError `what: <why W&B is out of reach>; hint` unless a key and the server are there."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        raise UserError(f"{what}: WANDB_MODE={mode} but this needs the W&B server; {hint}")
    if not has_wandb_key():
        raise UserError(f"{what}: no W&B API key (WANDB_API_KEY or `wandb login`) and this needs the "
                        f"W&B server; {hint}")
    if not url_reachable(wandb_base_url(), timeout=float(os.environ.get("WANDB_INIT_TIMEOUT", 10))):
        raise UserError(f"{what}: cannot reach the W&B server ({wandb_base_url()}); {hint}")

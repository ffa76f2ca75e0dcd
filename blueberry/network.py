"""Can we reach the two outside services (the Hugging Face hub, the W&B server), and do we have a
W&B key? Asked once, bounded in time, before any library call that would retry for minutes."""

from __future__ import annotations

import netrc
import os

from blueberry.errors import UserError
import threading
import urllib.error
import urllib.request
from urllib.parse import urlparse


def url_reachable(url: str, timeout: float = 5.0) -> bool:
    """True when `url` answers a HEAD request (any HTTP status) within `timeout` seconds."""
    result: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            result.append(True)
        except urllib.error.HTTPError:
            result.append(True)  # the server answered, even if with 4xx/5xx
        except (OSError, ValueError):
            result.append(False)

    # The socket timeout does not cover DNS resolution, which can hang much longer on a
    # half-configured network; a daemon thread bounds the whole probe.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "").strip().rstrip("/") or "https://api.wandb.ai"


def has_wandb_key() -> bool:
    """An API key in the environment or ~/.netrc for the W&B host (no network, no prompt)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(wandb_base_url()).hostname or ""
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


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

"""One-line notices to the user on stderr: what a run decided for them (a fallback, a skipped
damaged checkpoint, a changed setting). Errors go through errors.UserError instead."""

from __future__ import annotations

import sys


def notice(message: str) -> None:
    print(f"blueberry: {message}", file=sys.stderr, flush=True)

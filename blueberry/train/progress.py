"""The progress display: a tqdm bar on a terminal, plain lines every so often in a log file.

In a SLURM log (stderr not a terminal) a bar's carriage-return frames pile up on one line; a reader
of the log wants `step 120/1000 (12%) ...` lines instead.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm.auto import tqdm

# Seconds between plain progress lines; BLUEBERRY_PROGRESS_S overrides it.
PLAIN_EVERY_S = 30.0


class PlainProgress:
    """The part of tqdm's interface the trainer uses, written as one line every `every_s` seconds."""

    def __init__(self, total: int, initial: int, desc: str, every_s: float, file=None):
        self.total, self.n, self.desc, self.every_s = total, initial, desc, every_s
        self.file = file or sys.stderr   # the stderr of the moment, not of import time
        self.postfix: dict[str, str] = {}
        self._t0 = self._last = time.time()
        self._n0 = self._printed = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.time() - self._last >= self.every_s:
            self._print()

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = {k: str(v) for k, v in values.items()}

    def close(self) -> None:
        if self.n != self._printed:
            self._print()

    def _print(self) -> None:
        now = time.time()
        rate = (self.n - self._n0) / max(now - self._t0, 1e-9)
        eta = f", eta {_duration((self.total - self.n) / rate)}" if rate > 0 and self.n < self.total else ""
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc}: step {self.n}/{self.total} ({self.n / max(self.total, 1):.0%}){extra}, "
              f"{rate:.3g} step/s{eta}", file=self.file, flush=True)
        self._last, self._printed = now, self.n


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def plain_every_s() -> float:
    """Seconds between plain progress lines: BLUEBERRY_PROGRESS_S, else PLAIN_EVERY_S. Read before a run
    starts (the CLI checks it), so a bad value is one line, not a run stuck "running"."""
    text = os.environ.get("BLUEBERRY_PROGRESS_S")
    if text is None:
        return PLAIN_EVERY_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:   # also NaN
        from blueberry.errors import UserError

        raise UserError(f"BLUEBERRY_PROGRESS_S={text!r}: must be a number of seconds >= 0 (the interval of "
                        f"plain progress lines in logs; default {PLAIN_EVERY_S:g})")
    return value


def progress(total: int, initial: int, desc: str, enabled: bool, file=None):
    """A tqdm bar when `file` (default: the stderr of the moment, not of import time) is a terminal,
    else PlainProgress; a disabled tqdm when not `enabled`."""
    file = file or sys.stderr
    if enabled and not file.isatty():
        return PlainProgress(total, initial, desc, plain_every_s(), file)
    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True,
                mininterval=1.0, file=file)

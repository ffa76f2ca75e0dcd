"""How much of the validation split a model could have memorised from the train split.

A val window "leaks" when some n-token span in it also occurs anywhere in train. Spans are
compared by a 64-bit polynomial hash; at ~1e9 train spans against ~4e5 val spans the expected
number of false matches is ~1e-5, far below one window. Written by hand in numpy: no library at
hand does n-gram overlap over token arrays this size in bounded memory.
"""

from __future__ import annotations

import numpy as np

_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so powers of it never collapse to 0 mod 2**64
_CHUNK = 1 << 22  # train tokens hashed at a time: bounds memory to a few x 32 MiB


def span_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """Hash of every n-token span of `tokens` (len(tokens) - n + 1 of them), vectorised.

    Horner's rule over n shifted slices: n passes over the array instead of a Python loop over
    spans; uint64 arithmetic wraps, which is the mod 2**64.
    """
    t = np.asarray(tokens).astype(np.uint64) + np.uint64(1)  # +1 so token 0 still counts
    count = len(t) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h *= _BASE
            h += t[j:j + count]
    return h


def val_window_starts(n_windows: int, max_windows: int) -> np.ndarray:
    """Indices of at most `max_windows` windows, evenly spread and the same every time."""
    if n_windows <= max_windows:
        return np.arange(n_windows)
    return np.unique(np.linspace(0, n_windows - 1, max_windows).round().astype(np.int64))


def leak_fraction(train: np.ndarray, val: np.ndarray, seq_len: int, n: int,
                  max_val_windows: int = 4000, windows: np.ndarray | None = None) -> float:
    """Fraction of val windows (tokens[i*seq_len : (i+1)*seq_len + 1], as the trainer cuts them)
    holding an n-token span that also occurs in train.

    `windows`: the indices of the windows to check (those evaluation reads); default: at most
    `max_val_windows` spread evenly over the split.

    n is capped at the window length seq_len + 1 (then a window leaks when it occurs in train
    whole). 0.0 when val has no window or train is shorter than n.
    """
    n = min(n, seq_len + 1)
    n_windows = (len(val) - 1) // seq_len
    if n_windows <= 0:
        return 0.0
    windows = val_window_starts(n_windows, max_val_windows) if windows is None else windows[windows < n_windows]
    if len(train) < n or not len(windows):
        return 0.0
    per_window = seq_len + 1 - n + 1
    hashes = np.stack([span_hashes(val[i * seq_len:(i + 1) * seq_len + 1], n) for i in windows])
    unique, inverse = np.unique(hashes, return_inverse=True)
    found = np.zeros(len(unique), dtype=bool)
    # Train may be a memmap of billions of tokens: hash it in overlapping chunks and look each
    # chunk's hashes up in the small sorted set of val hashes.
    for start in range(0, len(train) - n + 1, _CHUNK):
        chunk = span_hashes(train[start:start + _CHUNK + n - 1], n)
        idx = np.searchsorted(unique, chunk).clip(max=len(unique) - 1)
        found[idx[unique[idx] == chunk]] = True
    leaked = found[inverse.reshape(len(windows), per_window)].any(axis=1)
    return float(leaked.mean())

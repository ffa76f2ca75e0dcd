"""Short digests of what a run trained on, stored in each checkpoint and checked on resume, so a
resumed run cannot silently continue on other documents, another split or another tokenizer.

Each task fingerprints three things apart, so a refused resume says which changed: the corpus
(the documents or images as read, before any split), the split (which of them are held out) and,
for text, the tokenizer."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

_WHOLE = 8 << 20          # arrays up to this many bytes are hashed whole
_SAMPLES, _CHUNK = 256, 32 << 10   # larger ones: their length and 256 evenly spaced 32 KiB chunks


def arrays_digest(*arrays: np.ndarray) -> str:
    """SHA-256 (16 hex digits) of the arrays' shapes, dtypes and contents (sampled when large: a
    different split or corpus changes the sizes and nearly every chunk)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        flat = a.reshape(-1).view(np.uint8) if a.flags.c_contiguous else np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        if flat.nbytes <= _WHOLE:
            h.update(flat.tobytes())
            continue
        for start in np.linspace(0, flat.nbytes - _CHUNK, _SAMPLES, dtype=np.int64):
            h.update(flat[start:start + _CHUNK].tobytes())
    return h.hexdigest()[:16]


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def texts_digest(texts: Iterable[str], *extra: object) -> str:
    """SHA-256 (16 hex digits) of a sequence of documents, in order (and of `extra` values)."""
    h = hashlib.sha256(repr(extra).encode())
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]

"""Near-duplicate documents: MinHash + LSH over normalised word shingles.

Two editions of one text (spelling modernised, lines re-wrapped, punctuation and case changed)
share few exact token spans, so the exact-span leakage check misses them; their sets of word
5-grams agree once case, punctuation and a few spelling variants are folded. The MinHash
signatures come from `rensa` (Rust; ~170x faster here than datasketch's numpy MinHash), and so does
the first LSH screen; only the documents it flags get their signatures compared pairwise (band
by band, Broder 1997 / Leskovec et al., Mining of Massive Datasets ch. 3) and joined into
clusters with scipy's connected components.

Normalisation works on UTF-8 bytes with one translation table (ASCII case folded, punctuation
to spaces, apostrophes dropped, u/v and i/j folded as early printings swap them, "-'d" spelt
"-ed"); word hashes
are computed for a whole batch at once in numpy, so no Python object is made per word.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

SHINGLE_WORDS = 5
NUM_PERM = 128
_SEED = 20260101
_BATCH_BYTES = 1 << 22   # bytes of text hashed at a time: bounds memory to a few x 32 MiB
_B = np.uint64(0x9E3779B97F4A7C15)   # odd, so it has an inverse mod 2**64


def _fold_table() -> bytes:
    table = bytearray(range(256))
    for c in range(256):
        ch = chr(c)
        if c < 128 and not ch.isalnum():
            table[c] = ord(" ")   # punctuation, whitespace and control bytes separate words
    for c in range(ord("A"), ord("Z") + 1):
        table[c] = c + 32
    for old, new in (("v", "u"), ("V", "u"), ("j", "i"), ("J", "i")):
        table[ord(old)] = ord(new)
    return bytes(table)


_TABLE = _fold_table()
_DROP = b"'`"   # apostrophes go: "o'er" and "oer" fold alike


def _fold(text: str) -> bytes:
    """Folded UTF-8 bytes of one document: "lov'd" -> "loved" (the commonest elision modern
    editions spell out), then the byte table."""
    return text.encode("utf-8").replace(b"'d", b"ed").translate(_TABLE, _DROP)


def normalised_words(text: str) -> list[str]:
    """The words a document's shingles are made of (for inspection and tests)."""
    return _fold(text).decode("utf-8", "replace").split()


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads polynomial hashes over all 64 bits."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def _word_hashes(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hash, start byte) of every word of a folded byte buffer (words separated by spaces).

    A word's hash is sum(c_j * B^-(j-s)) over its bytes, from one prefix sum P of c_j * B^-j:
    (P[e] - P[s]) * B^s, all in wrapping uint64 arithmetic.
    """
    is_word = buf != ord(" ")
    edges = np.diff(np.concatenate(([False], is_word, [False])).astype(np.int8))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if not len(starts):
        return np.zeros(0, np.uint64), starts
    n = len(buf)
    inv_pow, fwd = _powers(n)
    with np.errstate(over="ignore"):
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(buf.astype(np.uint64) * inv_pow[:n], dtype=np.uint64, out=prefix[1:])
        return (prefix[ends] - prefix[starts]) * fwd[starts], starts


_POWERS: dict[str, np.ndarray] = {}


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(B^-j, B^j) for j < n at least, kept between batches (find_near_duplicates frees them)."""
    if len(_POWERS.get("inv", ())) < n:
        size = max(n, _BATCH_BYTES * 2)
        with np.errstate(over="ignore"):
            for name, base in (("inv", pow(int(_B), -1, 1 << 64)), ("fwd", int(_B))):
                p = np.full(size, base, dtype=np.uint64)
                p[0] = 1
                _POWERS[name] = np.cumprod(p, dtype=np.uint64)
    return _POWERS["inv"], _POWERS["fwd"]


def _shingles(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(shingle hashes, shingles per document) for a batch: word k-grams inside each document."""
    encoded = [_fold(t) for t in texts]
    lengths = np.fromiter((len(b) + 1 for b in encoded), dtype=np.int64, count=len(encoded))
    buf = np.frombuffer(b" ".join(encoded) + b" ", dtype=np.uint8)
    words, starts = _word_hashes(buf)
    doc = np.searchsorted(np.cumsum(lengths), starts, side="right")
    k = SHINGLE_WORDS
    if len(words) < k:
        return np.zeros(0, np.uint64), np.zeros(len(texts), np.int64)
    count = len(words) - k + 1
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            h *= _B
            h += _mix(words[j:j + count])
    inside = doc[:count] == doc[k - 1:]
    return _mix(h[inside]), np.bincount(doc[:count][inside], minlength=len(texts))


def lsh_bands(threshold: float, num_perm: int = NUM_PERM, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows), bands * rows = num_perm (rensa's LSH wants it): the longest bands (fewest
    false candidates) that still make a pair at the threshold a candidate with probability
    >= recall, 1 - (1 - s^rows)^bands (MMDS 3.4.2)."""
    best = (num_perm, 1)
    for rows in (r for r in range(1, num_perm + 1) if num_perm % r == 0):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands >= recall:
            best = (bands, rows)
    return best


@dataclass
class NearDuplicates:
    """Clusters of near-duplicate documents: `labels[i]` is document i's cluster label (a
    document without near-duplicates has a label of its own)."""

    labels: np.ndarray
    threshold: float

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels)

    def stats(self) -> dict[str, float | int]:
        sizes = self.sizes
        n = len(self.labels)
        affected = int(sizes[sizes > 1].sum())
        return {"near_dup_clusters": int((sizes > 1).sum()), "near_dup_docs": affected,
                "near_dup_rate": affected / n if n else 0.0,
                "near_dup_redundant": affected - int((sizes > 1).sum()),
                "near_dup_threshold": self.threshold}

    def keep_first(self) -> np.ndarray:
        """Indices of the first document of every cluster, in order (the dedup=drop survivors)."""
        _, first = np.unique(self.labels, return_index=True)
        return np.sort(first)


def _signatures(batches: Iterable[Sequence[str]], n_docs: int):
    """([rensa digest matrix per batch], [document indices of its rows]): documents with fewer
    than SHINGLE_WORDS words have no shingles, no signature, and stay singletons."""
    import rensa

    matrices, kept = [], []
    base = 0
    for texts in batches:
        hashes, counts = _shingles(texts)
        has = np.flatnonzero(counts)
        if len(has):
            offsets = np.concatenate(([0], np.cumsum(counts[has]))).astype(np.uint64)
            matrices.append(rensa.RMinHash.digest_matrix_from_flat_token_hashes(
                hashes, offsets, NUM_PERM, _SEED))
            kept.append(has + base)
        base += len(texts)
    if base != n_docs:
        raise ValueError(f"batches held {base} documents, expected {n_docs}")
    return matrices, kept


def find_near_duplicates(texts: Sequence[str], threshold: float) -> NearDuplicates:
    """Cluster `texts` whose word-shingle Jaccard similarity (estimated from 128 MinHash values)
    is at least `threshold`; clusters are the connected components of such pairs."""
    import rensa

    n = len(texts)
    try:
        matrices, kept = _signatures(_byte_batches(texts), n)
    finally:
        _POWERS.clear()
    bands, rows = lsh_bands(threshold)
    # Screen: rensa's LSH flags every signature that shares a band with another one.
    lsh = rensa.RMinHashLSH(threshold, NUM_PERM, bands)
    start = 0
    for m in matrices:
        lsh.insert_matrix(m, start_key=start)
        start += m.len()
    flagged_rows, flagged_docs = [], []
    for m, docs in zip(matrices, kept):
        flags = np.asarray(lsh.query_duplicate_flags_matrix(m), dtype=bool)
        if flags.any():
            sig = np.asarray(m.to_rows(), dtype=np.uint32)
            flagged_rows.append(sig[flags])
            flagged_docs.append(docs[flags])
    pairs_a, pairs_b = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    if flagged_rows:
        sig = np.concatenate(flagged_rows)
        docs = np.concatenate(flagged_docs)
        # Candidates: consecutive members of each band bucket; kept when the signatures agree
        # on >= threshold of their values (the MinHash estimate of the Jaccard similarity).
        banded = sig[:, :bands * rows].reshape(len(sig), bands, rows)
        for b in range(bands):
            _, bucket = np.unique(banded[:, b, :], axis=0, return_inverse=True)
            order = np.argsort(bucket.ravel(), kind="stable")
            same = bucket.ravel()[order][1:] == bucket.ravel()[order][:-1]
            a, c = order[:-1][same], order[1:][same]
            similar = (sig[a] == sig[c]).mean(axis=1) >= threshold
            pairs_a.append(docs[a[similar]])
            pairs_b.append(docs[c[similar]])
    return NearDuplicates(_components(np.concatenate(pairs_a), np.concatenate(pairs_b), n), threshold)


def _components(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Label of each of n nodes: the connected components of the edges a[i] - b[i]."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def _byte_batches(texts: Sequence[str]) -> Iterable[Sequence[str]]:
    batch, size = [], 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if size >= _BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def consistent_groups(clusters: np.ndarray | None, user_groups: Sequence | None, n: int) -> np.ndarray:
    """One label per document joining near-duplicate clusters and user-given groups (documents
    with equal `group_field` values), so a split by label keeps both on one side."""
    a, b = [np.arange(n)], [np.arange(n)]
    if clusters is not None:
        a.append(np.arange(n))
        b.append(_first_of_label(clusters))
    if user_groups is not None:
        _, codes = np.unique(np.asarray([str(g) for g in user_groups]), return_inverse=True)
        a.append(np.arange(n))
        b.append(_first_of_label(codes.ravel()))
    return _components(np.concatenate(a), np.concatenate(b), n)


def _first_of_label(labels: np.ndarray) -> np.ndarray:
    """For each position, the index of the first position with the same label."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return first[inverse.ravel()]


def group_split(groups: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) document indices, whole groups on one side: groups in a seeded random order
    fill val until it holds ceil(val_fraction * n) documents (or just past it)."""
    n = len(groups)
    target = math.ceil(val_fraction * n)
    _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(sizes))
    filled = np.cumsum(sizes[order])
    take = order[:int(np.searchsorted(filled, target)) + 1] if target else order[:0]
    in_val = np.isin(inverse.ravel(), take)
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)

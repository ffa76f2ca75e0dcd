"""The train/val leakage check (blueberry/data/leakage.py) against a brute-force oracle.

A val window i is tokens[i*seq_len : (i+1)*seq_len + 1] (seq_len + 1 tokens, as the trainer cuts
them); it leaks when one of its n-token spans occurs anywhere in train. The oracle below compares
plain tuples in Python sets, so every expected fraction is independent of the hashing code.
"""

import numpy as np
import pytest

from blueberry.data import leakage
from blueberry.data.leakage import leak_fraction, span_hashes, val_window_starts


def spans(tokens, n):
    return {tuple(int(t) for t in tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def oracle(train, val, seq_len, n, windows):
    """Fraction of the given val windows sharing an n-span with train (n capped at the window)."""
    n = min(n, seq_len + 1)
    train_spans = spans(train, n)
    hits = [bool(spans(val[i * seq_len:(i + 1) * seq_len + 1], n) & train_spans) for i in windows]
    return sum(hits) / len(hits)


# span_hashes --------------------------------------------------------------------------------

def test_span_hashes_are_equal_exactly_when_spans_are_equal():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 4, 300).astype(np.uint16)  # 4 symbols: many repeated 3-spans
    h = span_hashes(tokens, 3)
    assert len(h) == 300 - 3 + 1 and h.dtype == np.uint64
    windows = [tuple(tokens[i:i + 3]) for i in range(len(h))]
    for i in range(0, len(h), 7):
        for j in range(len(h)):
            assert (h[i] == h[j]) == (windows[i] == windows[j])


def test_span_hashes_see_token_zero_and_order():
    # token 0 is a real token: (0, 0, 5) differs from (0, 5, 0) and from (5, 0, 0)
    h = span_hashes(np.array([0, 0, 5, 0, 0]), 3)
    assert len(set(h.tolist())) == 3
    assert span_hashes(np.array([0, 0]), 2)[0] != span_hashes(np.array([0, 1]), 2)[0]


@pytest.mark.parametrize("length", [0, 2, 3])
def test_span_hashes_of_fewer_tokens_than_n_is_an_empty_uint64_array(length):
    h = span_hashes(np.arange(length), 4)
    assert h.shape == (0,) and h.dtype == np.uint64


def test_span_hashes_with_n_equal_to_length_is_one_hash():
    h = span_hashes(np.arange(4), 4)
    assert h.shape == (1,) and h.dtype == np.uint64


# val_window_starts ----------------------------------------------------------------------------

@pytest.mark.parametrize("n_windows", [0, 1, 7, 10])
def test_val_window_starts_takes_every_window_when_they_fit(n_windows):
    assert val_window_starts(n_windows, 10).tolist() == list(range(n_windows))


@pytest.mark.parametrize("n_windows,max_windows", [(11, 10), (100, 7), (4001, 4000), (50, 2)])
def test_val_window_starts_spreads_at_most_max_windows_evenly(n_windows, max_windows):
    w = val_window_starts(n_windows, max_windows)
    assert len(w) == max_windows == len(set(w.tolist()))
    assert w[0] == 0 and w[-1] == n_windows - 1  # spans the whole split
    gaps = np.diff(w)
    ideal = (n_windows - 1) / (max_windows - 1)
    assert gaps.min() >= np.floor(ideal) and gaps.max() <= np.ceil(ideal)
    assert val_window_starts(n_windows, max_windows).tolist() == w.tolist()  # same every time


# leak_fraction against the oracle ----------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunk", [None, 5, 16])
def test_leak_fraction_matches_brute_force_on_planted_overlaps(seed, chunk, monkeypatch):
    """Random small vocabularies (so chance overlaps occur too) plus planted spans at window
    edges and train edges; train hashed in tiny chunks so spans straddle chunk boundaries."""
    if chunk:
        monkeypatch.setattr(leakage, "_CHUNK", chunk)
    rng = np.random.default_rng(seed)
    seq_len = int(rng.integers(2, 9))
    n = int(rng.integers(1, seq_len + 4))  # sometimes above the window length seq_len + 1
    val = rng.integers(0, 12, int(rng.integers(seq_len + 1, 12 * seq_len))).astype(np.uint16)
    train = rng.integers(8, 20, int(rng.integers(n, 60))).astype(np.uint16)
    n_windows = (len(val) - 1) // seq_len
    m = min(n, seq_len + 1)
    for _ in range(2):  # plant a window's first or last span somewhere in train
        w = int(rng.integers(0, n_windows))
        lo = w * seq_len + (0 if rng.random() < 0.5 else seq_len + 1 - m)
        at = int(rng.integers(0, len(train) - m + 1))
        train[at:at + m] = val[lo:lo + m]
    expected = oracle(train, val, seq_len, n, range(n_windows))
    assert leak_fraction(train, val, seq_len, n) == pytest.approx(expected)
    some = np.array(sorted(rng.choice(n_windows, size=max(1, n_windows // 2), replace=False)))
    assert leak_fraction(train, val, seq_len, n, windows=some) == pytest.approx(
        oracle(train, val, seq_len, n, some))


def test_leak_fraction_finds_a_span_in_the_last_slot_of_a_hashing_chunk(monkeypatch):
    # chunks of 10 spans: chunk 0 covers span starts 0..9. A span starting at 9 ends past the
    # chunk's 10 tokens and must still be hashed whole.
    monkeypatch.setattr(leakage, "_CHUNK", 10)
    seq_len, n = 4, 3
    val = np.array([1, 2, 3, 4, 5], dtype=np.uint16)  # one window, 5 tokens
    train = np.full(30, 9, dtype=np.uint16)
    train[9:12] = [3, 4, 5]
    assert leak_fraction(train, val, seq_len, n) == 1.0
    train[9:12] = 9
    assert leak_fraction(train, val, seq_len, n) == 0.0


def test_leak_fraction_finds_a_span_at_the_very_start_of_train(monkeypatch):
    monkeypatch.setattr(leakage, "_CHUNK", 4)
    val = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9], dtype=np.uint16)  # seq_len 4: windows 0 and 1
    train = np.array([5, 6, 7, 0, 0, 0, 0, 0, 0, 0], dtype=np.uint16)
    # window 0 = 1..5 and window 1 = 5..9 share the token 5; (5, 6, 7) lies in window 1 only
    assert leak_fraction(train, val, seq_len=4, n=3) == 0.5


def test_a_train_split_of_exactly_n_tokens_is_checked():
    val = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9], dtype=np.uint16)
    assert leak_fraction(np.array([2, 3, 4], dtype=np.uint16), val, seq_len=4, n=3) == 0.5
    assert leak_fraction(np.array([2, 3], dtype=np.uint16), val, seq_len=4, n=3) == 0.0  # shorter


def test_every_window_leaks_when_train_holds_val_whole():
    # n at or above the window length: one span (the whole window) per window
    rng = np.random.default_rng(3)
    for n_windows in (1, 2, 3, 9):
        val = rng.integers(0, 1000, n_windows * 5 + 1).astype(np.uint16)
        assert leak_fraction(val.copy(), val, seq_len=5, n=6) == 1.0
        assert leak_fraction(val.copy(), val, seq_len=5, n=50) == 1.0


def test_n_is_capped_at_the_window_length():
    # seq_len 4: a window is 5 tokens; n = 10 means "the whole window occurs in train"
    val = np.arange(1, 10, dtype=np.uint16)  # windows 1..5 and 5..9
    train = np.concatenate([np.arange(1, 6), [0], np.arange(5, 9)]).astype(np.uint16)
    # window 0 whole is in train; of window 1 only 4 of its 5 tokens are
    assert leak_fraction(train, val, seq_len=4, n=10) == 0.5
    assert leak_fraction(train, val, seq_len=4, n=5) == 0.5
    assert leak_fraction(train, val, seq_len=4, n=4) == 1.0


def test_n_of_one_means_any_shared_token():
    val = np.array([1, 2, 3, 4, 5, 6, 7], dtype=np.uint16)  # seq_len 3: windows 1..4 and 4..7
    assert leak_fraction(np.array([7], dtype=np.uint16), val, seq_len=3, n=1) == 0.5
    assert leak_fraction(np.array([4], dtype=np.uint16), val, seq_len=3, n=1) == 1.0
    assert leak_fraction(np.array([0, 8], dtype=np.uint16), val, seq_len=3, n=1) == 0.0


def test_only_complete_windows_count():
    # 4 * seq_len tokens hold 3 windows of seq_len + 1 tokens; the 4th lacks its last token
    seq_len = 4
    val = np.arange(1, 4 * seq_len + 1, dtype=np.uint16)  # 16 tokens
    train = val[12:15].copy()  # in the incomplete 4th window (val[12:16]) only
    assert leak_fraction(train, val, seq_len, n=3) == 0.0
    train = val[10:13].copy()  # in window 2 (val[8:13])
    assert leak_fraction(train, val, seq_len, n=3) == pytest.approx(1 / 3)


@pytest.mark.parametrize("length", [0, 1, 4, 5])
def test_no_complete_window_is_no_leak(length):
    # seq_len 5: a window needs 6 tokens; train holds all of val
    val = np.arange(1, length + 1, dtype=np.uint16)
    assert leak_fraction(np.arange(0, 10, dtype=np.uint16), val, seq_len=5, n=2) == 0.0


def test_a_single_window_is_checked():
    val = np.arange(1, 6, dtype=np.uint16)  # seq_len 4: exactly one window
    assert leak_fraction(np.array([3, 4], dtype=np.uint16), val, seq_len=4, n=2) == 1.0


def test_empty_train_leaks_nothing():
    val = np.arange(1, 20, dtype=np.uint16)
    assert leak_fraction(np.zeros(0, dtype=np.uint16), val, seq_len=4, n=1) == 0.0


def test_explicit_windows_are_the_ones_checked():
    val = np.arange(1, 14, dtype=np.uint16)  # seq_len 4: windows 0, 1, 2 (tokens 1-5, 5-9, 9-13)
    train = np.array([2, 3], dtype=np.uint16)  # only window 0 leaks
    assert leak_fraction(train, val, 4, 2, windows=np.array([0])) == 1.0
    assert leak_fraction(train, val, 4, 2, windows=np.array([1, 2])) == 0.0
    assert leak_fraction(train, val, 4, 2, windows=np.array([0, 1])) == 0.5
    # as evaluation asks for them: the first k windows, k possibly beyond the split
    assert leak_fraction(train, val, 4, 2, windows=np.arange(5)) == pytest.approx(1 / 3)
    assert leak_fraction(train, val, 4, 2, windows=np.arange(4)) == pytest.approx(1 / 3)
    assert leak_fraction(train, val, 4, 2, windows=np.array([3, 7])) == 0.0  # none in the split


def test_default_checks_at_most_4000_evenly_spread_windows():
    # 4001 one-token windows (seq_len 1: window i = val[i:i+2]); only window 0 leaks, and
    # window 0 is always among the checked ones, so the fraction is 1 / (windows checked)
    val = np.arange(1, 4003, dtype=np.uint16)  # 4002 tokens
    train = np.array([1, 2], dtype=np.uint16)
    assert leak_fraction(train, val, seq_len=1, n=2) == pytest.approx(1 / 4000)
    assert leak_fraction(train, val, seq_len=1, n=2, max_val_windows=10) == pytest.approx(1 / 10)
    assert leak_fraction(train, val[:4001], seq_len=1, n=2) == pytest.approx(1 / 4000)

"""Windows, the sharded resumable sampler, eval batches and the leakage check."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from blueberry.data import leakage
from blueberry.data.leakage import leak_fraction
from blueberry.data.packing import ShardedBatchSampler, Windows, eval_batches
from blueberry.errors import UserError


def test_windows_do_not_overlap_and_y_is_x_shifted():
    tokens = np.arange(1000, dtype=np.uint16)
    w = Windows(tokens, seq_len=16)
    assert len(w) == (1000 - 1) // 16
    x, y = w.batch(list(range(len(w))))
    assert x.dtype == torch.int64 and x.shape == (len(w), 16)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x.flatten(), torch.arange(len(w) * 16))  # back to back, no overlap
    assert torch.equal(y[:, -1], x[:, -1] + 1)
    xi, yi = w[5]
    assert torch.equal(xi, x[5]) and torch.equal(yi, y[5])
    with pytest.raises(IndexError):
        w.batch([len(w)])


def test_windows_work_with_a_dataloader_and_a_memmap(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(2000, dtype=np.uint16).tofile(path)
    w = Windows(np.memmap(path, dtype=np.uint16, mode="r"), seq_len=8)
    sampler = ShardedBatchSampler(len(w), batch_size=4, rank=0, world_size=1, seed=0)
    loader = iter(DataLoader(w, batch_sampler=sampler, collate_fn=Windows.collate))
    x, y = next(loader)
    first = next(iter(ShardedBatchSampler(len(w), 4, 0, 1, seed=0)))
    assert x.shape == (4, 8) and torch.equal(x[:, 0], torch.tensor(first) * 8)
    assert torch.equal(y, x + 1)


def _take(sampler, k):
    it = iter(sampler)
    return [next(it) for _ in range(k)]


def test_ranks_are_disjoint_and_cover_each_epoch():
    n, b, world = 24, 3, 4  # B = 12 divides n: each epoch is exactly 2 global micro-batches
    per_rank = [_take(ShardedBatchSampler(n, b, r, world, seed=7), 4) for r in range(world)]
    for epoch in range(2):
        seen = [i for r in range(world) for batch in per_rank[r][2 * epoch:2 * epoch + 2] for i in batch]
        assert sorted(seen) == list(range(n))
    assert all(len(batch) == b for batches in per_rank for batch in batches)
    assert per_rank[0][:2] != per_rank[0][2:]  # each epoch has its own order


def test_batches_straddling_epochs_keep_the_stream():
    n, b, world = 10, 3, 2  # B = 6 does not divide 10
    stream = [i for g in range(10) for r in range(world)
              for i in ShardedBatchSampler(n, b, r, world, seed=1).indices(g)]
    for e in range(len(stream) // n):
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))


def test_start_resumes_exactly():
    full = _take(ShardedBatchSampler(50, 4, 1, 3, seed=5), 30)
    resumed = _take(ShardedBatchSampler(50, 4, 1, 3, seed=5, start=17), 13)
    assert resumed == full[17:]


def test_seeds_change_the_order_and_epochs_are_counted():
    a = _take(ShardedBatchSampler(100, 10, 0, 1, seed=0), 5)
    b = _take(ShardedBatchSampler(100, 10, 0, 1, seed=1), 5)
    assert a != b
    s = ShardedBatchSampler(100, 10, 0, 2, seed=0)
    assert s.epochs_at(0) == 0 and s.epochs_at(5) == 1.0 and s.epochs_at(6) == 1.2


def test_too_few_windows_is_a_user_error():
    with pytest.raises(UserError, match=r"7 windows of seq_len 64.*= 8"):
        ShardedBatchSampler(7, 4, 0, 2, seed=0, seq_len=64)


def test_eval_batches_shard_the_first_windows_in_order():
    batches = [eval_batches(100, 3, 4, r, 2) for r in range(2)]
    assert batches[0] == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19]]
    assert batches[1][0] == [4, 5, 6, 7]
    # fewer windows than asked for: same number of lists per rank, short or empty at the end
    short = [eval_batches(10, 3, 4, r, 2) for r in range(2)]
    assert [len(s) for s in short] == [2, 2]
    assert short[0][1] == [8, 9] and short[1][1] == []
    assert sorted(i for s in short for batch in s for i in batch) == list(range(10))
    with pytest.raises(UserError):
        eval_batches(0, 3, 4, 0, 1)


def test_leak_fraction_is_zero_for_disjoint_data():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 30000, 20000).astype(np.uint16)
    val = rng.integers(30000, 60000, 5000).astype(np.uint16)
    assert leak_fraction(train, val, seq_len=64, n=8) == 0.0
    assert leak_fraction(train[:5], val, seq_len=64, n=8) == 0.0  # train shorter than n


@pytest.mark.parametrize("chunk", [None, 1000])
def test_leak_fraction_counts_windows_with_a_planted_span(monkeypatch, chunk):
    if chunk:  # make train span many hashing chunks
        monkeypatch.setattr(leakage, "_CHUNK", chunk)
    rng = np.random.default_rng(1)
    seq_len, n, m = 32, 8, 40
    val = rng.integers(0, 1000, m * seq_len + 1).astype(np.uint16)
    train = rng.integers(1000, 2000, 30000).astype(np.uint16)
    leaky = [0, 3, 17, 39, 22]
    for k, w in enumerate(leaky):
        offset = [0, 25, 10, 5, 17][k]  # n-span anywhere in the window, up to its last token
        span = val[w * seq_len + offset:w * seq_len + offset + n]
        train[997 + 3000 * k:997 + 3000 * k + n] = span  # 997..: straddles the 1000-token chunks
    assert leak_fraction(train, val, seq_len, n) == pytest.approx(len(leaky) / m)
    # more windows than max_val_windows: evenly spread ones, 0 4 9 13 17 22 26 30 35 39
    assert leak_fraction(train, val, seq_len, n, max_val_windows=10) == pytest.approx(4 / 10)

"""Edges of windowing and dealing that mutation testing (benchmarks/mutation.py) showed no test held."""

import numpy as np
import pytest

from blueberry.data.packing import ShardedBatchSampler, Windows, eval_batches
from blueberry.errors import UserError


def test_a_window_needs_seq_len_plus_one_tokens():
    assert [len(Windows(np.arange(n), 8)) for n in (8, 9, 16, 17)] == [0, 1, 1, 2]


def test_window_indices_out_of_range_are_refused():
    windows = Windows(np.arange(17), 8)                     # windows 0 and 1
    assert windows.batch([1])[0].tolist() == [list(range(8, 16))]
    for bad in ([2], [-1], [0, 2]):
        with pytest.raises(IndexError, match=r"^window index out of range 0\.\.1$"):
            windows.batch(bad)


def test_the_sampler_needs_one_global_micro_batch_and_a_rank_of_the_world():
    assert ShardedBatchSampler(8, 4, 1, 2, seed=0).indices(0)   # exactly one global micro-batch is enough
    with pytest.raises(UserError, match=r"^train split has 7 windows of seq_len 32; need at least batch_size × "
                                        r"processes = 8: lower seq_len or batch_size, or add data$"):
        ShardedBatchSampler(7, 4, 0, 2, seed=0, seq_len=32)
    with pytest.raises(UserError, match=r"^train split has 7 windows; need at least batch_size × processes = 8: "
                                        r"lower batch_size, or add data$"):
        ShardedBatchSampler(7, 4, 0, 2, seed=0)
    with pytest.raises(ValueError, match=r"^rank 2 not in 0\.\.1$"):
        ShardedBatchSampler(8, 4, 2, 2, seed=0)


def test_one_val_window_is_enough_and_none_is_refused():
    assert eval_batches(1, 2, 4, 0, 1) == [[0]]
    with pytest.raises(UserError, match="^val split has no window of seq_len tokens: lower seq_len or raise val_fraction$"):
        eval_batches(0, 2, 4, 0, 1)

"""Cut a token array into training windows and deal them out to processes.

Windows do not overlap: window i is tokens[i*S : i*S + S + 1] (S inputs plus the next-token
targets), so documents are packed back to back with EOS between them and attention is not
masked at document boundaries. The order is a pure function of (seed, global micro-batch),
which makes resume exact and every rank's share disjoint without communication.

Hand-written instead of torch's DistributedSampler (and instead of letting Accelerate shard the
DataLoader): those are finite per-epoch iterators whose resume point is an epoch, not a
micro-batch, and Accelerate's re-sharding would split these batches a second time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from blueberry.errors import UserError


class BatchDataset(Dataset):
    """A dataset that builds a whole batch in one `batch(indices)` call (one fancy index, one read)
    and returns it stacked. DataLoader(batch_sampler=...) calls __getitems__ and hands the result
    to collate_fn, so load with `collate_fn=BatchDataset.collate` (pass-through)."""

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch([i])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(indices)

    @staticmethod
    def collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch


class Windows(BatchDataset):
    """Non-overlapping (x, y) windows of a 1-D token array (a memmap is read lazily)."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens = tokens
        self.seq_len = seq_len
        self._offsets = np.arange(seq_len + 1)

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.seq_len)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 tensors of shape [len(indices), seq_len]; one fancy index, one read."""
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"window index out of range 0..{len(self) - 1}")
        rows = self.tokens[(idx * self.seq_len)[:, None] + self._offsets]
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1], rows[:, 1:]


def train_batch_stream(dataset: BatchDataset, batch_size: int, seed: int,
                       accelerator) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """train_batches(start): this rank's micro-batches of `dataset` from global micro-batch
    `start` on, endlessly, on the accelerator's device (TaskData.train_batches)."""
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device

    def train_batches(start: int):
        sampler = ShardedBatchSampler(len(dataset), batch_size, rank, world, seed, start=start)
        # Own generator: creating the loader must not draw from the global RNG (exact resume).
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=BatchDataset.collate,
                            generator=torch.Generator(), pin_memory=device.type == "cuda")
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return train_batches


def _epoch_seed(seed: int, epoch: int) -> int:
    # hashing keeps (seed, epoch) pairs apart, unlike seed * K + epoch
    return int.from_bytes(hashlib.sha256(f"blueberry:{seed}:{epoch}".encode()).digest()[:8], "little")


class ShardedBatchSampler(Sampler[list[int]]):
    """Infinite per-rank micro-batches of window indices, exactly resumable.

    The stream of window indices is perm(seed, 0) + perm(seed, 1) + ..., one permutation of
    range(n_windows) per epoch. Global micro-batch g is stream positions [g*B, (g+1)*B) with
    B = batch_size * world_size; rank r takes [g*B + r*batch_size, g*B + (r+1)*batch_size).
    A micro-batch can straddle two epochs. Iteration starts at global micro-batch `start`.
    """

    def __init__(self, n_windows: int, batch_size: int, rank: int, world_size: int, seed: int,
                 start: int = 0, *, seq_len: int | None = None):
        self.global_batch = batch_size * world_size
        if n_windows < self.global_batch:
            of = f" of seq_len {seq_len}" if seq_len else ""
            raise UserError(f"train split has {n_windows} windows{of}; need at least batch_size × "
                            f"processes = {self.global_batch}: lower {'seq_len or ' if seq_len else ''}batch_size, or add data")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in 0..{world_size - 1}")
        self.n_windows, self.batch_size = n_windows, batch_size
        self.rank, self.world_size, self.seed, self.start = rank, world_size, seed, start
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            # only the current epoch and the next can be in use: drop older ones
            for old in [e for e in self._perms if e < epoch - 1]:
                del self._perms[old]
            gen = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            self._perms[epoch] = torch.randperm(self.n_windows, generator=gen)
        return self._perms[epoch]

    def indices(self, g: int) -> list[int]:
        """This rank's window indices in global micro-batch g."""
        first = g * self.global_batch + self.rank * self.batch_size
        out: list[int] = []
        pos = first
        while pos < first + self.batch_size:
            epoch, offset = divmod(pos, self.n_windows)
            take = min(first + self.batch_size - pos, self.n_windows - offset)
            out += self._perm(epoch)[offset:offset + take].tolist()
            pos += take
        return out

    def epochs_at(self, g: int) -> float:
        """Passes over the train windows after g global micro-batches."""
        return g * self.global_batch / self.n_windows

    def __iter__(self) -> Iterator[list[int]]:
        g = self.start
        while True:
            yield self.indices(g)
            g += 1


def eval_batches(n_windows: int, n_batches: int, batch_size: int, rank: int,
                 world_size: int) -> list[list[int]]:
    """This rank's validation micro-batches: the first min(n_windows, n_batches*B) windows in
    order, global batch j = windows [j*B, (j+1)*B), rank r's share as in training.

    Every rank gets the same number of lists, so collective ops stay in step; when the windows
    run out, the last list is short on some ranks and empty on others. Reduce loss *sums* and
    token counts across ranks rather than averaging per-rank means.
    """
    if n_windows <= 0:
        raise UserError("val split has no window of seq_len tokens: lower seq_len or raise val_fraction")
    global_batch = batch_size * world_size
    total = min(n_windows, n_batches * global_batch)
    out = []
    for j in range(-(-total // global_batch)):
        first = j * global_batch + rank * batch_size
        out.append(list(range(min(first, total), min(first + batch_size, total))))
    return out

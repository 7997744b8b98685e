"""Deterministic, resumable batch order.

The sample key of global position p (p = step * global_batch + k) is a pure function of the
seed and p (key = epoch * n + index): epoch e = p // n uses a permutation drawn from a generator seeded with (seed, e). So a
run resumed at step k sees exactly the batches the uninterrupted run would have seen, with no
iterator state to save, and under data parallelism rank r takes positions r, r + world, ... of each
global batch, so N processes see the same global batches as one process.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    def __init__(self, dataset_size: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"train.batch_size {batch_size} is not divisible by {world_size} processes")
        self.n = dataset_size
        self.global_batch = batch_size
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size
        self._epoch = -1
        self._permutation: torch.Tensor | None = None

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutation = torch.randperm(self.n, generator=generator)
            self._epoch = epoch
        # A sample key, not a bare index: datasets read the index as key % size and may seed
        # their augmentation with the whole key, so each epoch augments differently yet
        # reproducibly, whichever worker or resumed process draws it.
        return epoch * self.n + int(self._permutation[offset])

    def __iter__(self):
        step = self.start_step
        while True:
            base = step * self.global_batch
            yield [self._index(base + k) for k in range(self.rank, self.global_batch, self.world_size)]
            step += 1

    def __len__(self) -> int:  # an endless stream; the trainer decides when to stop
        return 2**62

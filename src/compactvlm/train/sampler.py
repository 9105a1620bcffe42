"""Deterministic global batches, split over processes and micro-batches, resumable at any optimiser step.

Epoch ``e`` visits the samples in ``randperm(n, seed + e)`` order (or in file order without shuffling). Step
``s`` of an epoch takes the global batch ``order[s*G : (s+1)*G]``; process ``r`` of ``W`` takes the ``r``-th
contiguous ``G/W`` slice of it and cuts that into micro-batches of ``per_device`` samples. The global batch of a
step is therefore the same for any ``W`` and micro-batch size, which is what makes a 2-process run equal a
1-process run, and a resumed run equal an uninterrupted one. An incomplete last global batch of an epoch is
dropped (``steps_per_epoch = n // G``).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from ..errors import CompactVLMError


class GlobalBatchSampler(Sampler[list[int]]):
    def __init__(self, num_samples: int, global_batch: int, per_device: int, world_size: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True, start_step: int = 0, total_steps: int | None = None):
        if global_batch % (per_device * world_size):
            raise CompactVLMError(
                f"global batch {global_batch} is not a multiple of per-device batch {per_device} x {world_size} processes",
                "set optim.batch_size to a multiple of optim.per_device_batch_size x the number of processes",
            )
        self.n = num_samples
        self.G = global_batch
        self.per_device = per_device
        self.world = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.start_step = start_step
        self.steps_per_epoch = num_samples // global_batch
        if self.steps_per_epoch < 1:
            raise CompactVLMError(
                f"the training set has {num_samples} samples, fewer than one global batch of {global_batch}",
                "lower optim.batch_size or use more data",
            )
        self.total_steps = total_steps
        self.grad_accum = global_batch // (per_device * world_size)
        self._order: tuple[int, torch.Tensor] | None = None

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            if self.shuffle:
                order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            else:
                order = torch.arange(self.n)
            self._order = (epoch, order)
        return self._order[1]

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, step within the epoch) of global optimiser step ``step`` (0-based)."""
        return divmod(step, self.steps_per_epoch)

    def global_batch(self, step: int) -> list[int]:
        epoch, s = self.position(step)
        return self.epoch_order(epoch)[s * self.G : (s + 1) * self.G].tolist()

    def micro_batches(self, step: int) -> list[list[int]]:
        batch = self.global_batch(step)
        share = self.G // self.world
        mine = batch[self.rank * share : (self.rank + 1) * share]
        return [mine[i : i + self.per_device] for i in range(0, share, self.per_device)]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            yield from self.micro_batches(step)
            step += 1

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("an endless sampler has no length")
        return max(self.total_steps - self.start_step, 0) * self.grad_accum

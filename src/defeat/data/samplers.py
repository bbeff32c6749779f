"""Training order that is a pure function of (seed, step): reproducible, resumable, DDP-consistent.

Epoch ``e`` is a permutation of the dataset drawn from ``torch.Generator().manual_seed(seed + e)``;
global step ``s`` takes the ``global_batch`` indices after ``s * global_batch`` in that order (the
incomplete tail of an epoch is dropped) and rank ``r`` of ``world`` takes its contiguous slice. So a
2-process run sees, per step, exactly the images a 1-process run with the same global batch sees, and
resuming at step ``s`` needs nothing but ``s``. The horizontal-flip draw is part of the same stream.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def epoch_order(num_items: int, seed: int, epoch: int, hflip_prob: float) -> tuple[list[int], list[bool]]:
    """The permutation of epoch ``epoch`` and each position's flip decision."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_items, generator=gen)
    flips = torch.rand(num_items, generator=gen) < hflip_prob
    return order.tolist(), flips.tolist()


class TrainSampler(Sampler):
    """Infinite stream of ``(index, flip)`` for one rank, starting at global step ``start_step``."""

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        hflip_prob: float = 0.5,
        start_step: int = 0,
    ):
        self.global_batch = batch_size * world_size
        if num_items < self.global_batch:
            raise ValueError(
                f"the training set has {num_items} images, fewer than one global batch "
                f"({batch_size} per process x {world_size} processes)"
            )
        self.num_items, self.batch_size, self.rank = num_items, batch_size, rank
        self.seed, self.hflip_prob, self.start_step = seed, hflip_prob, start_step
        self.steps_per_epoch = num_items // self.global_batch

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        step = self.start_step
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            order, flips = epoch_order(self.num_items, self.seed, epoch, self.hflip_prob)
            for s in range(within, self.steps_per_epoch):
                first = s * self.global_batch + self.rank * self.batch_size
                for pos in range(first, first + self.batch_size):
                    yield order[pos], flips[pos]
            step = (epoch + 1) * self.steps_per_epoch


def shard_indices(num_items: int, world_size: int, rank: int, limit: int = 0) -> list[int]:
    """Evaluation shard of a rank: every ``world_size``-th item, over the first ``limit`` items (0 = all)."""
    total = min(num_items, limit) if limit else num_items
    return list(range(rank, total, world_size))

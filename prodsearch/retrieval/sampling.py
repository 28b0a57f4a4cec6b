"""Each epoch's batches, M photos per SKU, and this process's share of every one of them.

pytorch-metric-learning's ``MPerClassSampler`` has no distributed version, so every process draws
the same global batches from the same seed (:meth:`EpochBatches.set_epoch`) and keeps its own
contiguous slice of each. Every draw also carries its own seed, from which the photo's augmentation
(or cached view) is drawn: what a photo becomes depends on the run's seed, the epoch and its place
in the epoch, never on how many processes or decoding workers share the work. So one process and N
processes with the same global batch train on the same images.
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from torch.utils.data import Sampler

from prodsearch.retrieval.distributed import World


def draw_seed(*keys: int) -> int:
    """A 63-bit seed for one draw, such as (run seed, epoch, position in the epoch): independent
    draws for different keys, the same draw for the same keys."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python's and torch's generators (torchvision's transforms and :class:`CustomerPhoto` draw
    from them) seeded for the block, and restored after it."""
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(state)


class EpochBatches(Sampler):
    """Yields ``(index, draw seed)`` for this process's share of each global batch of ``batch_size``
    (``m_per_class`` photos per label), about ``length`` draws an epoch in all processes together."""

    def __init__(self, labels: np.ndarray, m_per_class: int, batch_size: int, length: int, seed: int,
                 world: World = World()):
        if batch_size % world.size:
            raise ValueError(f"a batch of {batch_size} cannot be shared by {world.size} processes")
        self.sampler = MPerClassSampler(labels, m_per_class, batch_size, length_before_new_iter=length)
        self.batch_size, self.seed, self.world, self.epoch = batch_size, seed, world, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the batches of ``epoch`` (every process must call it with the same number)."""
        self.epoch = epoch

    def global_order(self) -> list[int]:
        """The epoch's draws in all processes together, in order (``MPerClassSampler`` shuffles with
        numpy's global generator: seeded here, then restored)."""
        state = np.random.get_state()
        # It shuffles this list in place: every epoch starts from the same order (a resumed run too).
        self.sampler.labels = sorted(self.sampler.labels)
        try:
            np.random.seed(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
            return [int(i) for i in self.sampler]
        finally:
            np.random.set_state(state)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.global_order()
        share = self.world.share(self.batch_size)
        for start in range(0, len(order), self.batch_size):
            for position in range(start + share.start, start + share.stop):
                yield order[position], draw_seed(self.seed, self.epoch, position)

    def __len__(self) -> int:
        return len(self.sampler) // self.world.size

"""Per-epoch time accounts of one rank.

Every second of an epoch lands in exactly one bucket; whatever no bucket
claims (loop overhead, bookkeeping) is reported as idle, so the columns of a
row always add up to the epoch's wall time.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np

CATEGORIES = ("compute", "data", "send_wait", "recv_wait", "sync", "eval")
COLUMNS = CATEGORIES + ("idle", "wall")


class EpochTimer:
    def __init__(self, epochs: int):
        self._spent = np.zeros((epochs, len(CATEGORIES)))
        self._wall = np.zeros(epochs)
        self._epoch = 0
        self._epoch_start = None

    def start_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._epoch_start = time.perf_counter()

    def end_epoch(self) -> None:
        self._wall[self._epoch] = time.perf_counter() - self._epoch_start

    def training_seconds(self, epoch: int) -> float:
        """The epoch's wall time less evaluation, which is not training."""
        return self._wall[epoch] - self._spent[epoch, CATEGORIES.index("eval")]

    @contextmanager
    def __call__(self, category: str):
        """Charge the block's time to ``category``; blocks must not nest."""
        column = CATEGORIES.index(category)
        start = time.perf_counter()
        try:
            yield
        finally:
            self._spent[self._epoch, column] += time.perf_counter() - start

    def add(self, category: str, seconds: float) -> None:
        self._spent[self._epoch, CATEGORIES.index(category)] += seconds

    def table(self) -> np.ndarray:
        """[epochs, len(COLUMNS)]: the buckets, idle, then wall."""
        idle = np.maximum(self._wall - self._spent.sum(axis=1), 0.0)
        return np.column_stack((self._spent, idle, self._wall))

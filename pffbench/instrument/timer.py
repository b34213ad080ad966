"""Per-epoch time accounts of one rank.

Every second of an epoch lands in exactly one bucket; whatever no bucket
claims (loop overhead, bookkeeping) is reported as idle, so the columns of a
row always add up to the epoch's wall time.  On a GPU a block ends when the
work it queued has run (CUDA runs asynchronously: without that, a kernel's
time would land in whichever later block first waits for it).
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch

CATEGORIES = ("compute", "data", "send_wait", "recv_wait", "sync", "eval")
COLUMNS = CATEGORIES + ("idle", "wall")


def settler(device: torch.device | None):
    """What ends a timed block on ``device``: a CUDA synchronize, or nothing."""
    if device is not None and device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


class EpochTimer:
    def __init__(self, epochs: int, trace: bool = False, device: torch.device | None = None):
        self._settle = settler(device)
        self._spent = np.zeros((epochs, len(CATEGORIES)))
        self._wall = np.zeros(epochs)
        self._epoch = 0
        self._epoch_start = None
        # opt-in per-block trace (--trace): (category index, start, end), seconds since this timer was made
        self._origin = time.perf_counter()
        self._events = [] if trace else None

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
            if self._settle:
                self._settle()
            end = time.perf_counter()
            self._spent[self._epoch, column] += end - start
            if self._events is not None:
                self._events.append((column, start - self._origin, end - self._origin))

    def add(self, category: str, seconds: float) -> None:
        self._spent[self._epoch, CATEGORIES.index(category)] += seconds

    def events(self) -> np.ndarray:
        """[events, 3] float64: category index (into CATEGORIES), start, end,
        in seconds since the timer was made; empty unless made with trace=True.
        Gaps between events are idle time."""
        return np.asarray(self._events or [], dtype=np.float64).reshape(-1, 3)

    def state(self) -> dict:
        """The per-epoch accounts so far, for a checkpoint (the trace is not kept)."""
        return {"spent": self._spent.copy(), "wall": self._wall.copy()}

    def restore(self, state: dict) -> None:
        self._spent[:], self._wall[:] = state["spent"], state["wall"]

    def table(self) -> np.ndarray:
        """[epochs, len(COLUMNS)]: the buckets, idle, then wall."""
        idle = np.maximum(self._wall - self._spent.sum(axis=1), 0.0)
        return np.column_stack((self._spent, idle, self._wall))

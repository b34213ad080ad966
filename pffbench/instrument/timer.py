"""The one timer of every schedule: per-epoch time accounts of one rank, and
its trace.

Every second of an epoch lands in exactly one column: a timed block's in
its category (CATEGORIES), the rest in ``idle``, so the columns of a row add
up to the epoch's ``wall`` time.  On a GPU a block ends when the work it
queued has run (CUDA runs asynchronously: without that, a kernel's time would
land in whichever later block first waits for it).  With ``trace=True`` every
block is also kept as (category index, start, end), in seconds since the
timer started (``events``), for timeline plots.

Two ways to derive idle time, one class each, everything else shared:

- ``EpochTimer``: epochs are intervals (``start_epoch``/``end_epoch``);
  idle = the epoch's wall time less its blocks.  The pipeline and backprop,
  whose ranks run their epochs at the same time.
- ``GapTimer``: every block names its epoch, and the gap since the previous
  block is idle time of that epoch; wall = the sum of the columns.  The PFF
  variants, whose ranks interleave epochs (All-Layers runs epochs 0..C-1
  once per layer), so an epoch is no interval.

Set-up is not training time, in every schedule: loading and sharing the
data, building the model and the links happen before the timer starts; the
ranks then meet at a barrier ("set-up") and start their timers together
(the common origin of their traces).  (Backprop also records its set-up as
the attribute ``setup_seconds``.)

Training time, everywhere it is reported (run's progress lines, report,
plot, bench, paper_bench): the slowest rank's wall time over the epochs,
less evaluation, which is no training (``training_seconds``).
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


def training_time(wall: np.ndarray, evaluation: np.ndarray) -> np.ndarray:
    """Training seconds of each (rank, epoch): wall less evaluation; any shape, element-wise."""
    return np.asarray(wall) - np.asarray(evaluation)


def training_seconds(wall: np.ndarray, evaluation: np.ndarray) -> float:
    """A run's training time: the slowest rank's sum over epochs of wall less
    evaluation; ``wall`` and ``evaluation`` are [ranks, epochs] (the results
    file's timing/wall and timing/eval)."""
    return float(training_time(wall, evaluation).sum(axis=1).max())


class Timer:
    """What both timers share: the settle step, the blocks' table, the trace."""

    def __init__(self, epochs: int, trace: bool = False, device: torch.device | None = None):
        self._settle = settler(device)
        self._spent = np.zeros((epochs, len(CATEGORIES)))
        self._epoch = 0
        self._origin = time.perf_counter()
        self._events = [] if trace else None

    @contextmanager
    def __call__(self, category: str, epoch: int | None = None):
        """Charge the block's time to ``category`` of ``epoch`` (default: the
        current one); blocks must not nest."""
        epoch = self._epoch if epoch is None else epoch
        column = CATEGORIES.index(category)
        start = time.perf_counter()
        self._gap(start, epoch)
        try:
            yield
        finally:
            if self._settle:
                self._settle()
            end = time.perf_counter()
            self._spent[epoch, column] += end - start
            self._last = end
            if self._events is not None:
                self._events.append((column, start - self._origin, end - self._origin))

    def _gap(self, now: float, epoch: int) -> None:
        """The time since the previous block (GapTimer charges it as idle)."""

    def add(self, category: str, seconds: float) -> None:
        self._spent[self._epoch, CATEGORIES.index(category)] += seconds

    def spent(self, category: str) -> float:
        """Seconds charged to ``category`` in the current epoch so far."""
        return float(self._spent[self._epoch, CATEGORIES.index(category)])

    def events(self) -> np.ndarray:
        """[events, 3] float64: category index (into CATEGORIES), start, end,
        in seconds since the timer started; empty unless made with
        trace=True.  Gaps between events are idle time."""
        return np.asarray(self._events or [], dtype=np.float64).reshape(-1, 3)

    def table(self) -> np.ndarray:
        """[epochs, len(COLUMNS)]: the categories, idle, then wall."""
        raise NotImplementedError

    def training_seconds(self, epoch: int) -> float:
        """The epoch's wall time less evaluation, which is not training."""
        row = self.table()[epoch]
        return float(training_time(row[COLUMNS.index("wall")], row[COLUMNS.index("eval")]))


class EpochTimer(Timer):
    """Epochs as intervals: idle = an epoch's wall time less its blocks."""

    def __init__(self, epochs: int, trace: bool = False, device: torch.device | None = None):
        super().__init__(epochs, trace, device)
        self._wall = np.zeros(epochs)
        self._epoch_start = None

    def start_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._epoch_start = time.perf_counter()

    def end_epoch(self) -> None:
        self._wall[self._epoch] = time.perf_counter() - self._epoch_start

    def training_so_far(self) -> float:
        """Training seconds from the first epoch's start to now: the finished
        epochs' wall times and the current epoch's time so far, evaluation
        excluded (the MLPerf time-to-train clock).  A resumed run counts the
        epochs restored from its checkpoint, not the time lost in between."""
        done = self._wall[:self._epoch] - self._spent[:self._epoch, CATEGORIES.index("eval")]
        current = time.perf_counter() - self._epoch_start - self.spent("eval")
        return float(done.sum() + current)

    def state(self) -> dict:
        """The per-epoch accounts so far, for a checkpoint (the trace is not kept)."""
        return {"spent": self._spent.copy(), "wall": self._wall.copy()}

    def restore(self, state: dict) -> None:
        self._spent[:], self._wall[:] = state["spent"], state["wall"]

    def table(self) -> np.ndarray:
        idle = np.maximum(self._wall - self._spent.sum(axis=1), 0.0)
        return np.column_stack((self._spent, idle, self._wall))


class GapTimer(Timer):
    """Blocks charged by epoch, the gap before each one idle time of its
    epoch: an epoch's columns add up to its wall time, and the epochs to the
    rank's whole time since ``start``."""

    def __init__(self, epochs: int, trace: bool = False, device: torch.device | None = None):
        super().__init__(epochs, trace, device)
        self._idle = np.zeros(epochs)
        self._last = self._origin

    def start(self) -> None:
        """Training starts now (after set-up): the origin of the gaps and of the trace."""
        self._origin = self._last = time.perf_counter()

    def _gap(self, now: float, epoch: int) -> None:
        self._idle[epoch] += now - self._last

    @contextmanager
    def off(self, epoch: int):
        """A block that is no training time (writing a checkpoint, which the
        pipeline also does between its timed epochs); the gap before it is
        ``epoch``'s idle time."""
        self._gap(time.perf_counter(), epoch)
        try:
            yield
        finally:
            self._last = time.perf_counter()

    def state(self) -> np.ndarray:
        """[epochs, len(CATEGORIES) + 1]: the categories and idle, for a checkpoint."""
        return np.column_stack((self._spent, self._idle))

    def restore(self, state) -> None:
        self._spent[:], self._idle[:] = state[:, :-1], state[:, -1]
        self._last = time.perf_counter()  # the time between the runs is no epoch's

    def table(self) -> np.ndarray:
        spent = self.state()
        return np.column_stack((spent, spent.sum(axis=1)))

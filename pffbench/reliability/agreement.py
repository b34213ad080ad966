"""How the ranks agree to stop together (on a signal, or a non-finite layer):
the pipeline's one allreduce per epoch boundary (``agree_at_boundary``), and
the PFF wavefront's lagged, non-blocking agreement (``LaggedAgreement``).
Which variant uses which: core/variants.py."""
from __future__ import annotations

import math
import signal

import numpy as np
import torch
from mpi4py import MPI

from ..comm import collectives, guard
from . import faults


def agree_at_boundary(comm, epoch: int, losses, linears: dict, owner_of) -> tuple:
    """The one collective of an epoch boundary (a guarded allreduce): sums
    the per-layer losses (each layer's on its owner rank, zeros elsewhere)
    and combines every rank's numerical and signal flags, so all ranks reach
    the same verdict.  Returns (summed losses, failure message or None, signal
    number or 0)."""
    num_layers = len(losses)
    flags = np.zeros(num_layers)
    for index, linear in linears.items():
        flags[index] += 0 if math.isfinite(float(losses[index])) else 1
        flags[index] += 0 if all(bool(torch.isfinite(p).all()) for p in linear.parameters()) else 2
    signals = [float(faults.INTERRUPTS.signum == signal.SIGINT), float(faults.INTERRUPTS.signum == signal.SIGTERM)]
    total = collectives.sum_everywhere(comm, np.concatenate((np.asarray(losses, dtype=np.float64), flags, signals)),
                                       f"the reduction at the end of epoch {epoch + 1}")
    summed, flags, signals = total[:num_layers], total[num_layers:2 * num_layers], total[2 * num_layers:]
    failure = None
    bad = [i for i in range(num_layers) if flags[i]]
    if bad:
        first = bad[0]
        failure = faults.diverged(int(flags[first]), f"layer {first}", owner_of[first], epoch,
                                  f" (also in layers {', '.join(map(str, bad[1:]))} after it)" if bad[1:] else "")
    signum = int(signal.SIGTERM) if signals[1] else int(signal.SIGINT) if signals[0] else 0
    return summed, failure, signum


def agreed_signal(signums) -> int:
    """The signal the ranks stop for, whoever saw it: SIGTERM wins (the scheduler's)."""
    seen = {int(s) for s in signums if s}
    return int(signal.SIGTERM) if signal.SIGTERM in seen else min(seen, default=0)


class LaggedAgreement:
    """Every rank's flags at numbered boundaries, for schedules whose ranks
    pass a boundary at different times (the PFF wavefront).

    Posting does not wait (a non-blocking allgather); boundary k's table is
    read at boundary k + lag, by when every rank has long posted it.  So
    reading rarely waits, no rank is held back by the slowest, and every rank
    reads the same tables at the same boundary: a sound place to stop together.
    """

    def __init__(self, comm, lag: int):
        self.comm, self.lag = comm, max(1, lag)
        self._pending = []

    def post(self, boundary: int, flags) -> None:
        table = np.zeros((self.comm.Get_size(), len(flags)))
        table[self.comm.Get_rank()] = flags
        request = self.comm.Iallgather(MPI.IN_PLACE, [table, MPI.DOUBLE])
        self._pending.append((boundary, request, table))

    def due(self, boundary: int | None = None) -> list:
        """[(boundary, table [ranks, flags])] up to ``boundary - lag`` (every one still open if
        None), oldest first; waits (guarded) for those."""
        out = []
        while self._pending and (boundary is None or self._pending[0][0] <= boundary - self.lag):
            posted, request, table = self._pending.pop(0)
            guard.wait(request, "the other ranks", f"the agreement after round {posted + 1} of chapters")
            out.append((posted, table))
        return out

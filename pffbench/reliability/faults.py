"""Reliability plumbing shared by every schedule: fault injection for tests,
signal flags, the numerical check, and the exception that stops a run on
every rank at once.

Hidden flags (not in --help), for tests only:
  --inject-fault RANK:EPOCH  rank RANK raises at the start of epoch EPOCH
  --inject-hang RANK:EPOCH   rank RANK stops responding halfway through epoch EPOCH
  --inject-nan RANK:EPOCH    rank RANK writes NaN into its first layer halfway through epoch EPOCH

Signals: SIGTERM and SIGINT only set a flag (``Interrupts``); the schedule
reads it at a point where all ranks agree (the pipeline: the epoch-boundary
reduction; the PFF variants: ``LaggedAgreement`` at chapter boundaries),
checkpoints, and raises ``RunStopped`` on every rank together, so no rank is
left waiting.  A second signal of either kind ends the job at once.
"""
from __future__ import annotations

import argparse
import math
import signal
import sys
import time

import torch

# variants whose ranks agree at boundaries (the pipeline's epochs, the PFF chapters): they stop cleanly on a
# signal; in the others (backprop baselines) SIGTERM/SIGINT keep their default effect (the job ends at once)
AGREEING = ("pipeline", "single-layer", "all-layers", "federated", "perf-opt")
EXIT_FAILED = 3                                   # numerical fault, run recorded as "failed"
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}  # shell convention 128 + signal number


class InjectedFault(RuntimeError):
    """Raised by --inject-fault."""


class NonFiniteError(RuntimeError):
    """NaN or Inf in a loss or in weights."""


class RunStopped(Exception):
    """Raised on every rank at once when the ranks agreed to stop early.

    ``status`` is what the results file records ("interrupted" or "failed"),
    ``exit_code`` what every rank exits with, ``result`` rank 0's partial
    TrainResult (None elsewhere) with the epochs completed so far.
    """

    def __init__(self, status: str, message: str, exit_code: int, result=None, epochs_done: int = 0):
        super().__init__(message)
        self.status, self.message, self.exit_code = status, message, exit_code
        self.result, self.epochs_done = result, epochs_done


def rank_epoch(text: str) -> tuple[int, int]:
    """argparse type of RANK:EPOCH."""
    try:
        rank, epoch = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RANK:EPOCH (two integers), got {text!r}") from None
    if rank < 0 or epoch < 0:
        raise argparse.ArgumentTypeError(f"RANK and EPOCH must be >= 0, got {text!r}")
    return rank, epoch


def _hits(spec, rank: int, epoch: int) -> bool:
    return spec is not None and tuple(spec) == (rank, epoch)


def at_epoch_start(config, rank: int, epoch: int) -> None:
    """--inject-fault: raise on the chosen rank at the start of the chosen epoch."""
    if _hits(getattr(config, "inject_fault", None), rank, epoch):
        raise InjectedFault(f"injected fault on rank {rank} at epoch {epoch} (t={time.time():.3f})")


def mid_epoch(config, rank: int, epoch: int, layers=()) -> None:
    """--inject-hang / --inject-nan, called once halfway through an epoch;
    ``layers`` are the rank's torch.nn.Linear modules, first owned first."""
    if _hits(getattr(config, "inject_nan", None), rank, epoch) and layers:
        with torch.no_grad():
            layers[0].weight.fill_(float("nan"))
    if _hits(getattr(config, "inject_hang", None), rank, epoch):
        sys.stderr.write(f"[rank {rank}] injected hang at epoch {epoch} (t={time.time():.3f})\n")
        sys.stderr.flush()
        while True:  # a rank that stops responding, but keeps its process (and sleeps: no busy core)
            time.sleep(3600)


def nonfinite_layers(losses: dict, linears: dict) -> list[int]:
    """Indices of the layers whose epoch loss or weights hold NaN or Inf.
    ``losses`` maps layer index -> float, ``linears`` layer index -> Linear."""
    bad = []
    for index, linear in linears.items():
        loss = losses.get(index, 0.0)
        if not math.isfinite(loss) or not all(bool(torch.isfinite(p).all()) for p in linear.parameters()):
            bad.append(index)
    return bad


class Interrupts:
    """SIGTERM / SIGINT set a flag the schedule polls; a second one ends the
    job immediately (KeyboardInterrupt, which run.py's hook turns into an
    abort), unless it comes within DUPLICATE_S of the first: that is the same
    warning delivered twice (Ctrl-C reaches a rank from the terminal and again
    from mpiexec, which forwards it; a batch script may signal the ranks that
    its launcher also signals).  Installed by run.main on every rank."""
    DUPLICATE_S = 2.0

    def __init__(self):
        self.signum = 0
        self._first = 0.0
        self._previous = {}

    def install(self) -> "Interrupts":
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if not self.signum:
            self.signum, self._first = signum, time.monotonic()
        elif time.monotonic() - self._first > self.DUPLICATE_S:
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}: stopping at once")

    @property
    def requested(self) -> bool:
        return bool(self.signum)


INTERRUPTS = Interrupts()  # the process's one instance


def stop_code(signum: int) -> int:
    return EXIT_SIGNAL.get(signum, 128 + int(signum))


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def agree_at_boundary(comm, epoch: int, losses, linears: dict, owner_of) -> tuple:
    """The one collective of an epoch boundary (a guarded allreduce): sums
    the per-layer losses (each layer's on its owner rank, zeros elsewhere)
    and combines every rank's numerical and signal flags, so all ranks reach
    the same verdict.  Returns (summed losses, failure message or None, signal
    number or 0)."""
    import numpy as np

    from . import transport
    num_layers = len(losses)
    flags = np.zeros(num_layers)
    for index, linear in linears.items():
        flags[index] += 0 if math.isfinite(float(losses[index])) else 1
        flags[index] += 0 if all(bool(torch.isfinite(p).all()) for p in linear.parameters()) else 2
    signals = [float(INTERRUPTS.signum == signal.SIGINT), float(INTERRUPTS.signum == signal.SIGTERM)]
    total = transport.sum_everywhere(comm, np.concatenate((np.asarray(losses, dtype=np.float64), flags, signals)),
                                     f"the reduction at the end of epoch {epoch + 1}")
    summed, flags, signals = total[:num_layers], total[num_layers:2 * num_layers], total[2 * num_layers:]
    failure = None
    bad = [i for i in range(num_layers) if flags[i]]
    if bad:
        first = bad[0]
        failure = diverged(int(flags[first]), f"layer {first}", owner_of[first], epoch,
                           f" (also in layers {', '.join(map(str, bad[1:]))} after it)" if bad[1:] else "")
    signum = int(signal.SIGTERM) if signals[1] else int(signal.SIGINT) if signals[0] else 0
    return summed, failure, signum


def diverged(code: int, where: str, rank: int, epoch: int, more: str = "") -> str:
    """The one-line verdict on a non-finite value; ``code`` 1 = loss, 2 = weights, 3 = both."""
    what = {1: "loss", 2: "weights", 3: "loss and weights"}[code]
    return (f"non-finite {what} (NaN or Inf) in {where} on rank {rank} at epoch {epoch + 1}{more}"
            ": training diverged; lower --lr or --sharpness")


def agreed_signal(signums) -> int:
    """The signal the ranks stop for, whoever saw it: SIGTERM wins (the scheduler's)."""
    seen = {int(s) for s in signums if s}
    return int(signal.SIGTERM) if signal.SIGTERM in seen else min(seen, default=0)


def stopped(failure: str | None, signum: int, epochs_done: int, checkpointed: bool, result=None) -> RunStopped:
    """The RunStopped every rank raises once the ranks agreed to stop after ``epochs_done`` epochs."""
    if failure:
        return RunStopped("failed", failure, EXIT_FAILED, result, epochs_done)
    saved = f"; checkpoint after epoch {epochs_done} saved" if checkpointed else ""
    message = f"interrupted by {signal_name(signum)} after epoch {epochs_done}{saved}"
    return RunStopped("interrupted", message, stop_code(signum), result, epochs_done)


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
        import numpy as np
        from mpi4py import MPI
        table = np.zeros((self.comm.Get_size(), len(flags)))
        table[self.comm.Get_rank()] = flags
        request = self.comm.Iallgather(MPI.IN_PLACE, [table, MPI.DOUBLE])
        self._pending.append((boundary, request, table))

    def due(self, boundary: int | None = None) -> list:
        """[(boundary, table [ranks, flags])] up to ``boundary - lag`` (every one still open if
        None), oldest first; waits (guarded) for those."""
        from . import transport
        out = []
        while self._pending and (boundary is None or self._pending[0][0] <= boundary - self.lag):
            posted, request, table = self._pending.pop(0)
            transport.wait(request, "the other ranks", f"the agreement after round {posted + 1} of chapters")
            out.append((posted, table))
        return out

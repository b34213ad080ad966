"""Reliability plumbing shared by every schedule: fault injection for tests,
signal flags, the numerical check, and the exception that stops a run on
every rank at once.

Hidden flags (not in --help), for tests only:
  --inject-fault RANK:EPOCH  rank RANK raises at the start of epoch EPOCH
  --inject-hang RANK:EPOCH   rank RANK stops responding halfway through epoch EPOCH
  --inject-nan RANK:EPOCH    rank RANK writes NaN into its first layer halfway through epoch EPOCH

Signals: SIGTERM and SIGINT only set a flag (``Interrupts``); the schedule
reads it at a point where all ranks agree (the pipeline: the epoch-boundary
reduction; the PFF variants: ``LaggedAgreement`` at chapter boundaries; both in
agreement.py; which variants agree: core/variants.py),
checkpoints, and raises ``RunStopped`` on every rank together, so no rank is
left waiting.  A second signal of either kind ends the job at once (``abort``).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import torch

EXIT_FAILED = 3                                   # numerical fault, run recorded as "failed"
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}  # shell convention 128 + signal number


class InjectedFault(RuntimeError):
    """Raised by --inject-fault."""


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
    ``layers`` are the rank's layers (torch.nn.Linear, a conv block), first owned first: its first
    parameter (a Linear's weight) is poisoned."""
    if _hits(getattr(config, "inject_nan", None), rank, epoch) and layers:
        with torch.no_grad():
            next(layers[0].parameters()).fill_(float("nan"))
    if _hits(getattr(config, "inject_hang", None), rank, epoch):
        sys.stderr.write(f"[rank {rank}] injected hang at epoch {epoch} (t={time.time():.3f})\n")
        sys.stderr.flush()
        while True:  # a rank that stops responding, but keeps its process (and sleeps: no busy core)
            time.sleep(3600)


class Interrupts:
    """SIGTERM / SIGINT set a flag the schedule polls; a second one ends the
    job immediately (``abort``: one line on rank 0, exit 128 + signal), unless it comes within DUPLICATE_S of the first: that is the same
    warning delivered twice (Ctrl-C reaches a rank from the terminal and again
    from mpiexec, which forwards it; a batch script may signal the ranks that
    its launcher also signals).  Installed by run.main on every rank."""
    DUPLICATE_S = 2.0

    def __init__(self):
        self.signum = 0
        self._first = 0.0
        self._previous = {}
        # rank 0 answers: on_first(signum) prints when the run will stop; on_abort(signum) the abort's one line
        self.on_first = self.on_abort = None

    def install(self) -> "Interrupts":
        handler = self._handle
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, handler)
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
            if self.on_first:
                self.on_first(signum)
        elif time.monotonic() - self._first > self.DUPLICATE_S:
            abort(signum, self.on_abort)


def abort(signum: int, say=None) -> None:
    """A second signal: end this process at once with 128 + the signal
    number, after ``say(signum)`` (rank 0's one line).  os._exit, not an
    exception: an exception unwinding through a pending MPI request or a
    shared-memory ring ends in a traceback and in MPICH's internal assertions
    (seen with KeyboardInterrupt); the launcher then ends the other ranks,
    which received the same signal and exit the same way."""
    if say:
        try:
            say(signum)
        except Exception:  # the line is a courtesy: the exit must happen
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(stop_code(signum))


INTERRUPTS = Interrupts()  # the process's one instance


def stop_code(signum: int) -> int:
    return EXIT_SIGNAL.get(signum, 128 + int(signum))


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def diverged(code: int, where: str, rank: int, epoch: int, more: str = "") -> str:
    """The one-line verdict on a non-finite value; ``code`` 1 = loss, 2 = weights, 3 = both."""
    what = {1: "loss", 2: "weights", 3: "loss and weights"}[code]
    return (f"non-finite {what} (NaN or Inf) in {where} on rank {rank} at epoch {epoch + 1}{more}"
            ": training diverged; lower --lr or --sharpness")


def stopped(failure: str | None, signum: int, epochs_done: int, checkpointed: bool, result=None) -> RunStopped:
    """The RunStopped every rank raises once the ranks agreed to stop after ``epochs_done`` epochs."""
    if failure:
        return RunStopped("failed", failure, EXIT_FAILED, result, epochs_done)
    saved = f"; checkpoint after epoch {epochs_done} saved" if checkpointed else ""
    message = f"interrupted by {signal_name(signum)} after epoch {epochs_done}{saved}"
    return RunStopped("interrupted", message, stop_code(signum), result, epochs_done)

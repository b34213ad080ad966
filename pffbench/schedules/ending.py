"""How every schedule ends an epoch and a run: the same for the pipeline, the
PFF variants and backprop.

- ``evaluates``: whether an epoch ends with a test evaluation;
- ``end_epoch``: the epoch's accounts closed and its progress line;
- ``finish``: every rank's accounts (and trace) gathered, rank 0's
  TrainResult assembled;
- ``stop``: the RunStopped every rank raises when the ranks agreed to stop
  early, rank 0's carrying the partial run for the results file.
"""
from __future__ import annotations

import numpy as np

from ..comm import collectives
from ..instrument.timer import CATEGORIES, EpochTimer, Timer
from ..reliability import faults
from ..core.types import TrainResult


def evaluates(config, epoch: int) -> bool:
    """Test accuracy after ``epoch``: the last one, and every --eval-every."""
    return epoch == config.epochs - 1 or bool(config.eval_every and (epoch + 1) % config.eval_every == 0)


def end_epoch(timer: EpochTimer, world, on_epoch, epoch: int, loss: np.ndarray, accuracy: np.ndarray) -> None:
    """Close ``epoch``'s accounts; rank 0 reports it (loss [layers], accuracy, training seconds)."""
    timer.end_epoch()
    if world.is_first and on_epoch:
        on_epoch(epoch, loss[:, epoch], accuracy[epoch], timer.training_seconds(epoch))


def report_epochs(on_epoch, timing: np.ndarray, loss: np.ndarray, accuracy: np.ndarray) -> None:
    """The epoch lines of schedules whose epochs' losses are known only at
    the end (PFF: every rank's layers), printed then, without times (their
    epochs overlap across ranks, so per-epoch times do not add up to the
    wall time; the live lines were rank 0's chapters)."""
    if on_epoch is not None and hasattr(on_epoch, "final_epochs"):
        on_epoch.final_epochs(loss, accuracy)


def gather_accounts(comm, timer: Timer, trace: bool = False) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(timing [ranks, epochs, COLUMNS], trace events [n, 4] or None) on rank 0, (None, None) elsewhere
    (collective)."""
    timing = collectives.gather_rows(comm, timer.table())
    events = collectives.gather_events(comm, timer.events()) if trace else None
    return timing, events


def finish(comm, timer: Timer, trace: bool, **result) -> TrainResult | None:
    """Gather every rank's accounts and build rank 0's TrainResult from
    ``result`` (TrainResult's fields but timing); None on the other ranks.
    A traced run carries its events (``trace/events``) and their categories."""
    timing, events = gather_accounts(comm, timer, trace)
    if comm.Get_rank() != 0:
        return None
    if events is not None:
        result["arrays"] = {**result.get("arrays", {}), "trace/events": events}
        result["attrs"] = {"trace_categories": list(CATEGORIES), **result.get("attrs", {})}
    return TrainResult(timing=timing, **result)


def stop(comm, timer: Timer, loss: np.ndarray | None, accuracy: np.ndarray, epochs_done: int, failure: str | None,
         signum: int, checkpointed: bool, dims: list[int], blocks: list[range],
         attrs: dict | None = None) -> faults.RunStopped:
    """The RunStopped every rank raises once the ranks agreed to stop after
    ``epochs_done`` epochs (collective: gathers the accounts).  ``loss``
    [layers, epochs] is rank 0's (the others pass None); the epochs not run
    become NaN, in the loss and the timing.  The partial run has no layers and no trace."""
    timing, _ = gather_accounts(comm, timer)
    result = None
    if comm.Get_rank() == 0:
        loss[:, epochs_done:] = np.nan
        timing[:, epochs_done:] = np.nan  # epochs never reached: no time, not zero time
        result = TrainResult(timing=timing, loss=loss, test_accuracy=accuracy, linears=[], dims=dims, blocks=blocks,
                             attrs={"epochs_completed": epochs_done, **(attrs or {})})
    stopped = faults.stopped(failure, signum, epochs_done, checkpointed, result)
    if result is not None:
        result.attrs["stop_reason"] = stopped.message
    return stopped

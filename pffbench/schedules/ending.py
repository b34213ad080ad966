"""How every schedule ends an epoch and a run: the same for the pipeline, the
PFF variants and backprop (schedules/pipeline/schedule.py, schedules/pff/,
schedules/backprop/loop.py), so that run.py only records what they return.

- ``evaluates``: whether an epoch ends with a test evaluation;
- ``end_epoch``: the epoch's accounts closed and its progress line;
- ``checkpoint_state`` / ``restore_state``: the part of an epoch checkpoint
  every epoch-granular schedule holds (accounts, position, random state);
- ``save_checkpoint``: an epoch checkpoint written by every rank, or the
  failure line with which every rank stops the run (``stop``) when some rank
  could not write its file (a full disk);
- ``finish``: every rank's accounts (and trace) gathered, rank 0's
  TrainResult assembled: a resumed run's earlier epochs NaN, the time to
  ``--target-accuracy`` where the schedule does not clock it itself, and
  which health check its layers get (``check_health``);
- ``stop``: the RunStopped every rank raises when the ranks agreed to stop
  early, rank 0's carrying the partial run for the results file.
"""
from __future__ import annotations

import sys

import numpy as np

from ..comm import collectives
from ..core.types import TrainResult, batch_rows
from ..ff import health
from ..instrument import target
from ..instrument.timer import CATEGORIES, COLUMNS, EpochTimer, Timer
from ..reliability import checkpoint, faults


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


def checkpoint_state(epochs_done: int, step: int, loss: np.ndarray, accuracy: np.ndarray, timer: EpochTimer,
                     generator, **own) -> dict:
    """This rank's part of a checkpoint after ``epochs_done`` epochs: the schedule position (``step``:
    minibatch steps so far), the accounts so far (``loss`` [layers, epochs], ``accuracy`` [epochs], the timer),
    the random state of ``generator`` (None: the global ones only) and the schedule's own parts (``own``: its
    layers and optimizers).  ``restore_state`` reads it back."""
    return {"epoch": epochs_done, "step": step, **own, "loss": loss.copy(), "accuracy": accuracy.copy(),
            "timer": timer.state(), "rng": checkpoint.rng_state(generator)}


def restore_state(state: dict, loss: np.ndarray, accuracy: np.ndarray, timer: EpochTimer, generator) -> int:
    """Put back what ``checkpoint_state`` saved of the accounts and random state (in place); the step count."""
    loss[:], accuracy[:] = state["loss"], state["accuracy"]
    timer.restore(state["timer"])
    checkpoint.set_rng_state(state["rng"], generator)
    return state["step"]


def save_checkpoint(checkpoints: checkpoint.Checkpoints, epochs_done: int, state: dict) -> str | None:
    """Collective: this rank's ``state`` (``checkpoint_state``) as the checkpoint after ``epochs_done`` epochs.
    None once every rank wrote its file (rank 0 commits it); otherwise, on every rank, one line saying which
    rank's file could not be written, the OS's reason and where --resume would continue
    (``Checkpoints.failure``).  The schedule passes that line to ``stop`` as the run's failure: a checkpoint that
    cannot be written fails the run on every rank together, recorded with its epochs, resumable from the last
    complete checkpoint.  (PFF's chapters agree on their checkpoint files lagged, schedules/pff/boundaries.py,
    and stop through ``stop`` with ``Checkpoints.failure`` the same way.)"""
    return checkpoints.save(epochs_done, state)


def final_accuracy(result: TrainResult) -> float:
    """The last test accuracy measured (a run stopped at its target ends before its last epoch)."""
    measured = result.test_accuracy[np.isfinite(result.test_accuracy)]
    return float(measured[-1]) if measured.size else float("nan")


def _close(config, result: TrainResult, num_train: int, resumed_from: int | None = None) -> TrainResult:
    """What every family's rank-0 result gets before run.py records it.

    A resumed run records the timings of the epochs it ran, not the earlier
    run's that its checkpoint carried: those are NaN (its losses and
    accuracies stay, as the model's history; the PFF chapters' timings too),
    and ``resumed_from_epoch`` says where its own epochs begin.  With
    ``--target-accuracy``, a schedule that evaluates only at epoch ends (no
    TargetClock of its own) gets the target's attributes from its epochs'
    accuracies and times (instrument/target.py)."""
    if resumed_from:
        result.attrs["resumed_from_epoch"] = resumed_from
        result.timing[:, :resumed_from, :] = np.nan
        per_chapter = result.attrs.get("epochs_per_chapter", 1)
        for key in [k for k in result.arrays if k.startswith("timing_chapter/")]:
            result.arrays[key] = np.array(result.arrays[key], dtype=np.float64)
            result.arrays[key][:, :resumed_from // per_chapter] = np.nan
    if config.target_accuracy is not None and "target_accuracy" not in result.attrs:
        arrays = {"test_accuracy": result.test_accuracy, **result.arrays,
                  **{f"timing/{name}": result.timing[:, :, COLUMNS.index(name)] for name in ("wall", "eval")}}
        evaluations = target.evaluations_of(arrays, len(batch_rows(num_train, config.batch_size)))
        result.attrs.update(target.target_attrs(evaluations, config.target_accuracy))
    return result


def finish(config, comm, timer: Timer, num_train: int, resumed_from: int | None = None,
           **result) -> TrainResult | None:
    """Gather every rank's accounts and build rank 0's TrainResult from
    ``result`` (TrainResult's fields but timing); None on the other ranks.
    A traced run carries its events (``trace/events``) and their categories;
    ``resumed_from``: the epochs the run's checkpoint had done (see
    ``_close``); ``num_train``: the training rows (for the time to target).
    FF schedules pass ``check_health=True`` and the ``health_threshold`` their
    layers train to (see ``check_health``)."""
    timing, events = gather_accounts(comm, timer, config.trace)
    if comm.Get_rank() != 0:
        return None
    if events is not None:
        result["arrays"] = {**result.get("arrays", {}), "trace/events": events}
        result["attrs"] = {"trace_categories": list(CATEGORIES), **result.get("attrs", {})}
    return _close(config, TrainResult(timing=timing, **result), num_train, resumed_from)


def check_health(result: TrainResult, dataset, lr: float, norm: str) -> None:
    """Rank 0, a complete FF run: flag layers that collapsed (``collapsed_layers``, ff/health.py) and say so in
    one warning; the layers are checked against the goodness threshold the schedule gave ``finish``
    (``health_threshold``; None, dead units only, for layers trained by their own softmax heads:
    Performance-Optimized, local-softmax), on the inputs its rule's first layer sees (``health_inputs``:
    None, the test rows with their label embedded; scff's [x, x] otherwise).  Nothing for results with
    ``check_health`` False (the backprop baselines).  ``lr`` and ``norm`` (--norm) are the run's, named in the
    warning's advice."""
    if not result.check_health:
        return
    unlabelled = result.health_inputs is not None
    x = result.health_inputs(dataset.x_test) if unlabelled else dataset.x_test
    collapsed = health.dead_layers(result.linears, x, dataset.y_test, dataset.num_classes, result.health_threshold,
                                   labels=not unlabelled)
    if not collapsed:
        return
    result.attrs["collapsed_layers"] = collapsed
    several = len(collapsed) > 1
    # a silent layer adds nothing (the layers before it may still classify): say what accuracy the net has
    accuracy, chance = final_accuracy(result), 1 / dataset.num_classes
    # unit-length inputs make Adam's weight steps sqrt(width) times smaller (docs/paper.md); only goodness-trained
    # layers take --norm
    hint = " or give the layers unit-length inputs (--norm length)" if norm == "rms" and \
        result.health_threshold is not None else ""
    print(f"pffbench: warning: training collapsed: layer{'s' if several else ''} "
          f"{', '.join(map(str, collapsed))} {'are' if several else 'is'} silent (every unit dead, or its goodness "
          f"under 1% of the threshold on every test input); test accuracy {100 * accuracy:.2f}% (chance "
          f"{100 * chance:.2f}%); lower --lr (now {lr:g}){hint}", file=sys.stderr, flush=True)


def stop(config, comm, timer: Timer, num_train: int, loss: np.ndarray | None, accuracy: np.ndarray,
         epochs_done: int, failure: str | None, signum: int, checkpointed: bool, dims: list[int],
         blocks: list[range], arrays: dict | None = None, attrs: dict | None = None) -> faults.RunStopped:
    """The RunStopped every rank raises once the ranks agreed to stop after
    ``epochs_done`` epochs (collective: gathers the accounts).  ``loss``
    [layers, epochs] is rank 0's (the others pass None); the epochs not run
    become NaN, in the loss and the timing.  The partial run has no layers and no trace."""
    timing, _ = gather_accounts(comm, timer)
    result = None
    if comm.Get_rank() == 0:
        loss[:, epochs_done:] = np.nan
        timing[:, epochs_done:] = np.nan  # epochs never reached: no time, not zero time
        result = _close(config, TrainResult(timing=timing, loss=loss, test_accuracy=accuracy, linears=[], dims=dims,
                                            blocks=blocks, arrays=dict(arrays or {}),
                                            attrs={"epochs_completed": epochs_done, **(attrs or {})}), num_train)
    stopped = faults.stopped(failure, signum, epochs_done, checkpointed, result)
    if result is not None:
        result.attrs["stop_reason"] = stopped.message
    return stopped

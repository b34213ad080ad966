"""Time to a target accuracy (``--target-accuracy A``), as MLPerf Training
measures it: the training time from the start of the first minibatch to the
evaluation that first shows test accuracy >= A, evaluation time excluded.

Two sources give the same table of evaluations, [k, 4] float64 rows of
(steps done, epoch index (0-based), training seconds, test accuracy):

- the backprop baselines (pffbench/schedules/backprop/loop.py), and the
  pipeline run with ``--eval-every-steps`` (schedules/pipeline/schedule.py),
  record every evaluation as it happens (array ``evaluations``): at epoch
  boundaries (``--eval-every``) and every ``--eval-every-steps`` steps; the
  seconds are rank 0's training clock after a barrier, so every rank has
  finished the steps counted;
- every other run evaluates at epoch boundaries (the pipeline, every
  ``--eval-every`` epochs) or once at the end (the PFF variants), and its
  table is rebuilt from the per-epoch records: the seconds up to epoch e are
  the slowest rank's epoch wall times up to e, evaluation excluded (as
  pffbench.instrument.timer.training_seconds counts a whole run).

The granularity is therefore a step for the baselines and the pipeline
(with --eval-every-steps), an epoch for the pipeline without, and the whole
run for the PFF variants (their time to target is their training time if
the final accuracy reaches A, else not reached).
"""
from __future__ import annotations

import math

import numpy as np

COLUMNS = ("step", "epoch", "seconds", "accuracy")


class TargetClock:
    """The evaluations of one run so far, and when the target was first reached."""

    def __init__(self, target: float | None, stop: bool = False):
        self.target, self.stop = target, stop
        self.rows: list[tuple[float, float, float, float]] = []
        self.first: tuple | None = None  # the row that first reached the target

    def record(self, step: int, epoch: int, seconds: float, accuracy: float) -> None:
        self.rows.append((float(step), float(epoch), float(seconds), float(accuracy)))
        if self.first is None and self.target is not None and accuracy >= self.target:
            self.first = self.rows[-1]

    @property
    def reached(self) -> bool:
        return self.first is not None

    @property
    def stopped_at(self) -> str | None:
        """The stop reason of a run ended by --stop-at-target, else None."""
        if not (self.stop and self.first):
            return None
        step, epoch, seconds, accuracy = self.first
        return (f"reached the target test accuracy {self.target:g} ({accuracy:.4f}) after {int(step)} step{'' if int(step) == 1 else 's'} "
                f"(epoch {int(epoch) + 1}), {seconds:.2f} s of training: --stop-at-target")

    def table(self) -> np.ndarray:
        return np.asarray(self.rows, dtype=np.float64).reshape(-1, len(COLUMNS))

    def attrs(self) -> dict:
        return target_attrs(self.table(), self.target)

    def state(self) -> dict:
        return {"rows": list(self.rows), "first": self.first}

    def restore(self, state: dict) -> None:
        self.rows, self.first = [tuple(r) for r in state["rows"]], state["first"]


def first_reaching(evaluations: np.ndarray, target: float) -> np.ndarray | None:
    """The first row of ``evaluations`` [k, 4] whose accuracy is >= target, or None."""
    hits = np.flatnonzero(evaluations[:, 3] >= target) if len(evaluations) else []
    return evaluations[hits[0]] if len(hits) else None


def target_attrs(evaluations: np.ndarray, target: float | None) -> dict:
    """The results file's attributes for ``target`` (empty without one):
    target_accuracy, time_to_target (s; NaN if not reached),
    target_reached_epoch (1-based epoch of that evaluation; -1 if not) and
    target_reached_step (steps done at it; -1 if not)."""
    if target is None:
        return {}
    row = first_reaching(evaluations, target)
    if row is None:
        return {"target_accuracy": target, "time_to_target": math.nan, "target_reached_epoch": -1,
                "target_reached_step": -1}
    return {"target_accuracy": target, "time_to_target": float(row[2]), "target_reached_epoch": int(row[1]) + 1,
            "target_reached_step": int(row[0])}


def ended_at_target(attrs: dict, config: dict) -> bool:
    """Whether a recorded run ended early because it reached its target (--stop-at-target): complete,
    asked to stop there, and stopped (a failed or interrupted run also records a stop reason, its own)."""
    return (attrs.get("status", "complete") == "complete" and bool(config.get("stop_at_target"))
            and bool(attrs.get("stop_reason")))


def evaluations_of(arrays: dict, minibatches_per_epoch: int) -> np.ndarray:
    """A run's evaluations table [k, 4]: recorded (``evaluations``), else
    rebuilt from ``test_accuracy`` [epochs] and the per-rank, per-epoch
    ``timing/wall`` and ``timing/eval`` [ranks, epochs] (see the module docstring)."""
    if "evaluations" in arrays:
        return np.asarray(arrays["evaluations"], dtype=np.float64).reshape(-1, len(COLUMNS))
    accuracy = np.asarray(arrays["test_accuracy"], dtype=np.float64)
    training = np.asarray(arrays["timing/wall"]) - np.asarray(arrays["timing/eval"])
    seconds = np.cumsum(training, axis=1).max(axis=0)  # slowest rank, cumulative
    epochs = np.flatnonzero(np.isfinite(accuracy))
    return np.column_stack(((epochs + 1.0) * minibatches_per_epoch, epochs, seconds[epochs], accuracy[epochs]))


def time_to_accuracy(arrays: dict, minibatches_per_epoch: int, target: float) -> float:
    """Training seconds to the first evaluation at >= ``target``; NaN if none reached it."""
    row = first_reaching(evaluations_of(arrays, minibatches_per_epoch), target)
    return math.nan if row is None else float(row[2])

"""The race to a target accuracy, computed from the runs ``python -m pffbench.tune`` appends
(docs/tuning.md): every contender's trials (validation runs, one per learning rate), its pick
per target, and the repetitions of each pick on the test set.

A contender is what a user would choose between: a variant with its local rule (objective),
on p ranks x t threads per rank.  Everything here is recomputed from the stored evaluations
(instrument/target.py's table [k, 4] of steps, epoch, training seconds, accuracy), so the race
table follows from the results file alone; tune's summary uses the same functions.

Figures per contender and target (``race_rows``):

- ``lr``: the learning rate picked on validation (shortest time to the target at the
  contender's own pace, i.e. fewest samples, ties to the higher accuracy; if no trial reached
  it, the most accurate: ``picked_by`` says which; ``pick_for``);
- ``seconds``: median training seconds to the target over the repetitions (NaN unless every
  repetition reached it), MLPerf's clock (first minibatch to the evaluation that first shows
  the target, evaluation excluded); ``reached``: how many repetitions did;
- ``samples``: median training samples seen by then (steps x global minibatch);
- ``accuracy``: median test accuracy at the end of the repetitions' epochs (NaN if any of them was
  ended at its target, tune --repeats-stop-at-target: ``stopped`` counts those, ``stopped_at`` is
  that target);
- ``eval_seconds``: median evaluation seconds of a repetition (kept apart from training; of a
  repetition ended at its target, those up to there);
- ``busy``: how many repetitions ran on a busy host (analysis.busy_host: load beyond the run's own);
- ``speedup``: the fastest backprop rival's median seconds / this contender's (>1: faster than
  every rival), where a rival is a variant of the backprop family (core/variants.py).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np

from ..core.variants import VARIANTS
from ..instrument import target
from .analysis import busy_host


@dataclass
class Contender:
    variant: str
    objective: str | None
    ranks: int
    threads: int
    workload: tuple = ()                         # data set, net, epochs, batch: races on different work differ
    trials: dict = field(default_factory=dict)   # lr -> the validation run (the newest of its name)
    repeats: dict = field(default_factory=dict)  # lr -> the test runs, one per seed (the newest), in seed order
    trials_of: str | None = None                 # the twin whose trials these are (tune --trials-of), if shared

    @property
    def label(self) -> str:
        rule = f" x {self.objective}" if self.objective else ""
        return f"{self.variant}{rule}, {self.ranks} x {self.threads}"

    @property
    def rival(self) -> bool:
        """A backprop baseline (what a user would run instead of local learning)."""
        return VARIANTS[self.variant].family == "backprop"


def _threads(run) -> int:
    threads = run.attrs.get("threads_per_rank")
    if threads is None:
        return int(run.config.get("threads") or 0)
    return int(np.max(threads)) if np.ndim(threads) else int(threads)


def same_weights(contender: Contender) -> tuple:
    """What a contender computes from a learning rate, up to round-off (tests/mpi): the backprop family's
    variants at any ranks and threads alike, a local rule's pipeline at any ranks alike.  Contenders with
    one key share one search (tune --trials-of)."""
    family = "backprop" if VARIANTS[contender.variant].baseline else (contender.variant, contender.objective)
    return family, contender.workload


def contenders(runs: list) -> list[Contender]:
    """The tune runs among ``runs`` (named tune-..., in the order appended), grouped by contender and
    workload (data set, net, epochs, batch size), in the order first seen.  A run repeated under its
    name (a contender cut off and run again) counts once, the newest; so does a seed repeated at one lr.
    A run interrupted (a signal, a session's end: status "interrupted") is a measurement not yet made,
    which tune makes again when it resumes: it counts as neither a trial nor a repetition (a "failed" one
    does, reaching nothing).  A contender with test repeats but no trials of its own (tune --trials-of)
    takes those of the first contender computing the same weights (``same_weights``) that has them, named
    in ``trials_of``."""
    found: dict = {}
    for run in runs:
        if not run.name.startswith("tune-") or run.attrs.get("status") == "interrupted":
            continue
        c = run.config
        key = (c["variant"], c.get("objective"), int(run.attrs.get("world_size", 1)), _threads(run))
        workload = (c.get("dataset"), tuple(c.get("layers") or ()), c.get("epochs"), c.get("batch_size"))
        if c.get("conv"):  # a conv net's blocks (an MLP's workload stays as it was keyed)
            workload += (tuple(c["conv"]),)
        contender = found.setdefault((key, workload), Contender(*key, workload=workload))
        lr = float(c["lr"])
        if int(c.get("validation") or 0) > 0:
            contender.trials[lr] = run
        else:
            contender.repeats.setdefault(lr, {})[c.get("seed", 0)] = run
    for contender in found.values():
        contender.repeats = {lr: [by_seed[s] for s in sorted(by_seed)] for lr, by_seed in contender.repeats.items()}
    for contender in found.values():
        if contender.repeats and not contender.trials:
            twin = next((d for d in found.values() if d.trials and same_weights(d) == same_weights(contender)), None)
            if twin is not None:
                contender.trials, contender.trials_of = twin.trials, twin.label
    return list(found.values())


def evaluations(run) -> np.ndarray:
    return target.evaluations_of(run.arrays, int(run.attrs.get("minibatches_per_epoch", 0)))


def reaching(run, accuracy: float) -> tuple[float, float]:
    """(training seconds, training samples) at the run's first evaluation at >= ``accuracy``; NaNs if none."""
    row = target.first_reaching(evaluations(run), accuracy) if run.attrs.get("status", "complete") == "complete" \
        else None
    if row is None:
        return math.nan, math.nan
    return float(row[2]), float(row[0]) * int(run.config.get("batch_size", 0))


def final_accuracy(run) -> float:
    """The run's final test accuracy; NaN unless it completed (a failed or interrupted repetition counts as
    reaching nothing: ``reaching`` likewise)."""
    if run.attrs.get("status", "complete") != "complete":
        return math.nan
    return float(run.attrs.get("final_test_accuracy", math.nan))


def pick(trials: list[dict], key: str = "time_to_target") -> tuple[dict, str]:
    """The trial with the least ``key`` to the target (time or samples; ties: higher accuracy),
    or, if none reached it, the most accurate; and how it was picked.  Trials: dicts with ``key``
    (NaN if not reached) and ``accuracy``.  RuntimeError if every trial failed (no finite accuracy)."""
    reached = [t for t in trials if math.isfinite(t[key])]
    if reached:
        return min(reached, key=lambda t: (t[key], -t["accuracy"])), "shortest time to target"
    finite = [t for t in trials if math.isfinite(t["accuracy"])]
    if not finite:
        raise RuntimeError("every trial failed")
    return max(finite, key=lambda t: t["accuracy"]), "no trial reached the target: the most accurate"


def trial_figures(run, accuracy: float) -> dict:
    seconds, samples = reaching(run, accuracy)
    return {"time_to_target": seconds, "samples": samples, "accuracy": final_accuracy(run)}


def pick_for(contender: Contender, accuracy: float) -> tuple[float, str]:
    """The learning rate picked on validation for ``accuracy``, and how (NaN, "every trial failed" if none
    has a finite accuracy).  Shortest time to target at the contender's own pace: every trial of a
    contender does the same work per step (only the learning rate differs), so the trial that reaches
    the target in the fewest samples is the fastest; comparing samples rather than each trial's wall
    clock keeps other jobs' load on a shared host out of the pick (and p ranks of the pipeline, which
    compute the 1-rank weights exactly, pick what 1 rank picks)."""
    trials = [{"lr": lr, **trial_figures(run, accuracy)} for lr, run in sorted(contender.trials.items())]
    try:
        chosen, how = pick(trials, key="samples")
    except RuntimeError as why:
        return math.nan, str(why)
    return chosen["lr"], how


def without_nan(value):
    """``value`` (dicts, lists, numbers) with NaN as None, for JSON (which has no NaN)."""
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value.item() if isinstance(value, np.generic) else value


def _median(values: list[float]) -> float:
    return statistics.median(values) if values and all(math.isfinite(v) for v in values) else math.nan


def measured(runs: list, accuracy: float, planned: int | None = None) -> dict:
    """The repetitions' figures for ``accuracy`` (see the module docstring).  ``planned``: how many
    repetitions were run (tune knows; one that failed before it was recorded counts as not reaching)."""
    hits = [reaching(run, accuracy) for run in runs]
    hits += [(math.nan, math.nan)] * max(0, (planned or 0) - len(hits))
    eval_seconds = [float(np.nansum(run.arrays["timing/eval"], axis=1).max()) for run in runs]
    stopped = [run for run in runs if target.ended_at_target(run.attrs, run.config)]  # no final accuracy
    return {"seconds": _median([s for s, _ in hits]), "reached": sum(math.isfinite(s) for s, _ in hits),
            "repeats": len(hits), "samples": _median([n for _, n in hits]), "stopped": len(stopped),
            "stopped_at": max((float(run.config["target_accuracy"]) for run in stopped), default=math.nan),
            "accuracy": math.nan if stopped else _median([final_accuracy(run) for run in runs]),
            "eval_seconds": _median(eval_seconds), "seconds_each": [s for s, _ in hits],
            "busy": sum(busy_host(run) for run in runs)}


def race_rows(all_contenders: list[Contender], targets: list[float], planned: int | None = None) -> list[dict]:
    """One row per contender and target, ordered by target then contender; see the module docstring.
    ``planned``: the repetitions each pick was run (see ``measured``)."""
    rows = []
    for accuracy in targets:
        block = []
        for contender in all_contenders:
            if not contender.trials:
                continue
            lr, how = pick_for(contender, accuracy)
            row = {"contender": contender.label, "variant": contender.variant, "objective": contender.objective,
                   "ranks": contender.ranks, "threads": contender.threads, "rival": contender.rival,
                   "target": accuracy, "lr": lr,
                   "picked_by": how + (f"; the trials of {contender.trials_of}" if contender.trials_of else ""),
                   **measured(contender.repeats.get(lr, []), accuracy, planned)}
            block.append(row)
        rivals = [r["seconds"] for r in block if r["rival"] and math.isfinite(r["seconds"])]
        fastest = min(rivals) if rivals else math.nan
        for row in block:
            row["speedup"] = fastest / row["seconds"] if math.isfinite(row["seconds"]) else math.nan
        rows += block
    return rows


RACE_HEADER = ("target %", "contender", "lr", "to target s", "reached", "samples to target", "speedup vs fastest rival",
               "accuracy %", "eval s")


def race_table(rows: list[dict]) -> str:
    """The race as a markdown table (the README's), one line per row of ``race_rows``."""
    def cell(value, digits=2):
        return "-" if isinstance(value, float) and math.isnan(value) else (
            f"{value:.{digits}f}" if isinstance(value, float) else str(value))
    lines = ["| " + " | ".join(RACE_HEADER) + " |", "|---|---|" + "---:|" * (len(RACE_HEADER) - 2)]
    for r in rows:
        note = "" if r["picked_by"] == "shortest time to target" else (
            " (most accurate)" if r["picked_by"].startswith("no trial") else f" ({r['picked_by']})")
        notes = f" (busy host: {r['busy']} of {r['repeats']})" if r.get("busy") else ""
        notes += f" (repeats stopped at {100 * r['stopped_at']:g} %)" if r.get("stopped") else ""
        lines.append("| " + " | ".join([f"{100 * r['target']:g}", r["contender"] + notes, f"{r['lr']:g}{note}",
                                        cell(r["seconds"]), f"{r['reached']}/{r['repeats']}",
                                        cell(r["samples"], 0), cell(r["speedup"]), cell(100 * r["accuracy"]),
                                        cell(r["eval_seconds"], 1)]) + " |")
    return "\n".join(lines)

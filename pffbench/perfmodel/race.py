"""The race, predicted for larger runs: each contender's time to a target accuracy at p ranks =
the model's predicted training seconds per epoch on p ranks x the epochs' worth of samples it
needed to reach the target (measured, analysis/race.py).

Resting on two figures, each said in the table:

- samples to target: the median over the race's repetitions at the contender's pick, measured at
  the largest p the race ran it on.  Taken as independent of p: true by construction for the
  pipeline (p ranks give the 1-rank weights exactly) and gpipe/1f1b (the same arithmetic), and up
  to the order of floating-point sums for dp-backprop and ddp at a fixed global minibatch;
- seconds per epoch: the model (predict.predict, one epoch, evaluation excluded), its compute
  costs from the contender's own 1-rank run in the race when there is one, the least disturbed of
  its repetitions (calibrate.from_run; dp-backprop and ddp from single-process backprop's, the same
  code on 1 rank, so DDP's own per-step work beyond it is not counted), else from microbenchmarks
  of its net and rule on this machine (an MLP's only: a conv net without a 1-rank run is said and
  left out).

A p the contender cannot run on is left out and said: the pipeline, gpipe and 1f1b need a stage
(a layer) per rank, so a net of L layers stops them at p = L; data parallelism has no such bound.
"""
from __future__ import annotations

import math

from ..analysis import race
from ..analysis.analysis import training_seconds
from . import calibrate
from . import predict as model


def _one_rank_twin(variant: str) -> str | None:
    """The variant this one computes like on 1 rank (data-parallel backprop: single-process backprop,
    the registry's one-rank baseline), by the registry's facts; None for the others."""
    entry = model.REGISTRY[variant]
    if not entry.baseline or entry.microbatched or entry.ranks == "one":
        return None
    return next((name for name, v in model.REGISTRY.items() if v.baseline and v.ranks == "one"), None)


def _calibrating_run(contenders: list, contender):
    """A 1-rank repetition of the same variant (or the one it equals on 1 rank), rule, threads and
    workload: of those, the one with the least training time an epoch (a busy host only ever slows a run,
    so the fastest is the least disturbed; an epoch's, for repeats stopped at different targets); None if
    there is none."""
    variants = {contender.variant, _one_rank_twin(contender.variant)}
    runs = [run for other in contenders if other.variant in variants and other.ranks == 1
            and (other.objective, other.threads, other.workload) == (contender.objective, contender.threads,
                                                                     contender.workload)
            for repeats in other.repeats.values() for run in repeats if run.attrs.get("status") == "complete"]
    return min(runs, key=lambda run: training_seconds(run) / calibrate.epochs_trained(run), default=None)


def predict_race(runs: list, target: float, ranks: list[int], cluster, threads: int = 1) -> tuple[list[dict], list[str]]:
    """(rows, notes): per contender of the race runs with ``threads`` per rank (the variant and rule
    once, its samples from its largest measured p) and each p of ``ranks`` it can run on: predicted
    seconds per epoch and to ``target``, the measured time to target where the race ran that p."""
    contenders = [c for c in race.contenders(runs) if c.trials and c.repeats and c.threads == threads]
    measured_rows = {(r["variant"], r["objective"], r["ranks"]): r
                     for r in race.race_rows(contenders, [target])}
    rows, notes, done = [], [], set()
    for contender in sorted(contenders, key=lambda c: -c.ranks):
        key = (contender.variant, contender.objective)
        if key in done:
            continue
        done.add(key)
        figures = measured_rows[(*key, contender.ranks)]
        samples = figures["samples"]
        calibrating = _calibrating_run(contenders, contender)
        some = next(iter(contender.trials.values()))
        dims, batch = list(some.attrs["dims"]), int(some.config["batch_size"])
        if calibrating is not None:
            costs, source = calibrate.from_run(calibrating), f"run {calibrating.name}"
        elif some.config.get("conv"):  # the microbenchmarks time MLPs: a conv net needs its own 1-rank run
            notes.append(f"{race.Contender(*key, contender.ranks, threads).label}: no 1-rank run of its conv net "
                         f"in the race to calibrate from, so not predicted")
            continue
        else:
            hidden = dims[:-1] if contender.rival else dims  # a baseline's dims end with its head
            costs = calibrate.measured(contender.variant, hidden, batch, threads, int(some.config.get("microbatches")
                                       or 4), objective=contender.objective)
            source = "microbenchmarks"
        layers = len(dims) - (2 if contender.rival else 1)
        num_train = int(some.attrs.get("num_train", 60000)) + int(some.config.get("validation") or 0)
        settings = model.Settings(num_train, 1)
        left_out = []
        for p in ranks:
            if not model.runs_on(contender.variant, p, layers, getattr(costs, "microbatches", None)):
                left_out.append(p)
                continue
            epoch = model.predict(contender.variant, costs, cluster, p, settings).seconds
            at_p = measured_rows.get((*key, p))
            rows.append({"contender": race.Contender(*key, p, threads).label, "variant": contender.variant,
                         "objective": contender.objective, "p": p, "epoch_seconds": epoch,
                         "samples": samples, "samples_at_p": contender.ranks, "costs": source,
                         "seconds": epoch * samples / num_train if math.isfinite(samples) else math.nan,
                         "measured": at_p["seconds"] if at_p else math.nan})
        if left_out:
            rule = model.REGISTRY[contender.variant].ranks
            why = {"one": "it runs on one rank", "layer": f"one rank per layer, {layers} layers"}.get(
                rule, f"a stage per rank: the net has {layers} layers")
            notes.append(f"{contender.variant}{' x ' + contender.objective if contender.objective else ''}: not "
                         f"on p = {', '.join(map(str, left_out))} ({why})")
        if not math.isfinite(samples):
            notes.append(f"{race.Contender(*key, contender.ranks, threads).label}: not every repetition reached "
                         f"{target:g}, so no time to it is predicted")
    return rows, notes


def format_rows(rows: list[dict], markdown: bool = False) -> str:
    head = ["contender", "p", "epoch s (model)", "samples to target", "to target s (model)", "measured s", "costs"]
    cells = [[r["contender"], str(r["p"]), f"{r['epoch_seconds']:.2f}",
              "-" if math.isnan(r["samples"]) else f"{r['samples']:.0f} (p = {r['samples_at_p']})",
              "-" if math.isnan(r["seconds"]) else f"{r['seconds']:.2f}",
              "-" if math.isnan(r["measured"]) else f"{r['measured']:.2f}", r["costs"]] for r in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
                         + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(x) for x in col) for col in zip(head, *cells)]
    return "\n".join("  ".join(x.ljust(w) if i in (0, 6) else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
                     .rstrip() for r in [head] + cells)

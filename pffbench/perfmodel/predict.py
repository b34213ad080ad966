"""Predictions: simulate a schedule, read its training time, and split it
into where the time goes.

Training time is what ``study.analysis.training_seconds`` measures: the slowest
rank's time less evaluation.  It is split (``Prediction.breakdown``) as

    T = mean work + imbalance + library + fill/drain (bubble) + link waits

- mean work: compute and data (and the local part of syncs) averaged over ranks;
- imbalance: the busiest rank's work beyond the mean (no transport removes it);
- library: the bookkeeping of torch.distributed.pipelining (gpipe, 1f1b) and
  DDP, per rank (``library_seconds``), which a run's accounts charge to sync;
- fill/drain: what the busiest rank still waits with every link free of cost
  (the schedule's dependencies: a pipeline filling and draining, a
  wavefront, chapters that wait for layers);
- link waits: what the links' latency and bandwidth add (T less the same
  schedule simulated with free links).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..core.types import batch_rows
from ..instrument.timer import CATEGORIES
from . import backprop as backprop_model
from . import pff as pff_model
from . import pipeline as pipeline_model
from ..core.variants import VARIANTS as REGISTRY
from .calibrate import BackpropCosts, FFCosts
from .events import Simulator, Timeline
from .links import Cluster

VARIANTS = tuple(REGISTRY)  # every variant has a program (core/variants.py)
WORK = ("compute", "data")


@dataclass
class Settings:
    """What a run trains, as far as time goes."""
    num_train: int = 60000
    epochs: int = 1
    splits: int = 0                 # PFF chapters (0: one per epoch)
    shared_ring: bool = True        # the pipeline's --transport auto
    algorithm: str = "auto"         # allreduce: ring, tree, auto

    @classmethod
    def from_run(cls, run) -> "Settings":
        c = run.config
        return cls(int(run.attrs["num_train"]), int(c.get("epochs", 1)), int(c.get("splits") or 0),
                   c.get("transport", "auto") == "auto")


@dataclass
class Prediction:
    variant: str
    p: int
    seconds: float
    timeline: Timeline
    breakdown: dict = field(default_factory=dict)


def _programs(variant: str, sim: Simulator, costs, cluster: Cluster, p: int, s: Settings, epochs: int,
              evaluate) -> list:
    if variant not in REGISTRY:
        raise ValueError(f"no model for variant {variant!r}; modelled: {', '.join(VARIANTS)}")
    program, chapters = REGISTRY[variant].program, s.splits or s.epochs
    if REGISTRY[variant].ranks == "one" and p != 1:
        raise ValueError(f"{variant} runs on one rank")
    if program == "pipeline":
        return pipeline_model.programs(sim, costs, cluster, p, s.num_train, epochs, evaluate, s.shared_ring)
    if program == "torch-pipeline":  # the variant names torch's schedule: gpipe or 1f1b
        return backprop_model.pipeline(sim, costs, cluster, p, s.num_train, epochs, variant)
    if program == "ddp":
        return backprop_model.ddp(sim, costs, cluster, p, s.num_train, epochs)
    if program == "data-parallel":
        return backprop_model.data_parallel(sim, costs, cluster, p, s.num_train, epochs, s.algorithm)
    per = s.epochs // chapters
    if program == "wavefront":
        return pff_model.all_layers(sim, costs, cluster, p, s.num_train, chapters, per)
    if program == "single-layer":
        return pff_model.single_layer(sim, costs, cluster, p, s.num_train, chapters, per)
    return pff_model.federated(sim, costs, cluster, p, s.num_train, chapters, per, s.algorithm)


def simulate(variant: str, costs, cluster: Cluster, p: int, settings: Settings, trace: bool = False,
             epochs: int | None = None, evaluate=()) -> Timeline:
    """The timeline of ``variant`` on ranks 0..p-1 of ``cluster``.  The
    pipeline and backprop run ``epochs`` epochs (default all; their epochs
    are alike, each ending in a reduction); PFF always all chapters."""
    threads = [cluster.threads] * p
    sim = Simulator([cluster.node_of(r) for r in range(p)], cluster.cores_per_node, threads, trace)
    epochs = settings.epochs if epochs is None else epochs
    return sim.run(_programs(variant, sim, costs, cluster, p, settings, epochs, evaluate))


def runs_on(variant: str, p: int, layers: int, microbatches: int | None = None) -> bool:
    """Whether ``variant`` can run on p ranks for a net of ``layers`` hidden layers, by its registry entry's
    rank rule (core/variants.py, the one launch/validate.py enforces): a stage per rank (the pipeline, gpipe,
    1f1b; microbatched ones also need ``microbatches`` >= p, when given), one rank per layer or one rank
    (Single-Layer), one rank (backprop)."""
    entry = REGISTRY[variant]
    if entry.ranks == "stage" and p > layers:
        return False
    if entry.microbatched and microbatches is not None and p > microbatches:
        return False
    if entry.ranks == "layer":
        return p in (1, layers)
    return entry.ranks != "one" or p == 1


def steady_epoch(variant: str, costs, cluster: Cluster, p: int, settings: Settings) -> Timeline:
    """One epoch of a backprop variant from 2 and 3 simulated steps: every
    step of these schedules does the same, so from the second on a step adds
    the same time to every rank (the 3-step timeline less the 2-step one),
    and an epoch of S full steps (plus a short last one, simulated in both)
    is the 2-step timeline plus S - 2 such steps.  Exact for a periodic
    schedule, and a 64-microbatch, 16-stage GPipe epoch then takes 3 steps
    of simulation instead of 938."""
    full, rest = divmod(settings.num_train, costs.batch)
    if full <= 3:
        return simulate(variant, costs, cluster, p, settings, epochs=1)
    two, three = (simulate(variant, costs, cluster, p, replace(settings, num_train=k * costs.batch + rest), epochs=1)
                  for k in (2, 3))
    return Timeline(two.spent + (full - 2) * (three.spent - two.spent),
                    two.finish + (full - 2) * (three.finish - two.finish), None)


def training_seconds(timeline: Timeline) -> float:
    """Slowest rank's time less its evaluation."""
    return float((timeline.finish - timeline.spent[:, CATEGORIES.index("eval")]).max())


def predict(variant: str, costs: FFCosts | BackpropCosts, cluster: Cluster, p: int, settings: Settings,
            trace: bool = False) -> Prediction:
    """Predicted training time of ``variant`` on p ranks, with its breakdown."""
    backprop = REGISTRY[variant].baseline
    per_epoch = backprop or REGISTRY[variant].family == "pipeline"
    repeat = settings.epochs if per_epoch else 1  # epochs alike: simulate one, multiply

    def seconds(cl: Cluster, tr: bool) -> tuple[float, Timeline]:
        if backprop and not tr:
            tl = steady_epoch(variant, costs, cl, p, settings)
        else:
            tl = simulate(variant, costs, cl, p, settings, tr, epochs=1 if per_epoch else None)
        return training_seconds(tl) * repeat, tl

    total, timeline = seconds(cluster, trace)
    free, _ = seconds(cluster.without_links(), False)
    work = timeline.spent[:, [CATEGORIES.index(c) for c in WORK]].sum(axis=1) * repeat
    library = library_seconds(variant, costs, settings)
    breakdown = {"mean work": float(work.mean()), "imbalance": float(work.max() - work.mean()),
                 "library": library, "fill/drain, bubble": max(0.0, free - float(work.max()) - library),
                 "link waits": max(0.0, total - free)}
    return Prediction(variant, p, total, timeline, breakdown)


def library_seconds(variant: str, costs, settings: Settings) -> float:
    """Per rank, the seconds a library spends on its own bookkeeping (charged to ``sync`` in a run's
    accounts, as the real timers see it): torch.distributed.pipelining's per microbatch forward and
    backward (gpipe, 1f1b), DDP's tail of every step; 0 for the others."""
    steps = len(batch_rows(settings.num_train, costs.batch)) * settings.epochs
    if REGISTRY[variant].microbatched:
        return steps * 2 * costs.microbatches * costs.library
    if REGISTRY[variant].program == "ddp":
        return steps * costs.tail
    return 0.0


def scaling(variant: str, costs, cluster: Cluster, ranks, settings: Settings) -> list[dict]:
    """Rows of p, predicted seconds, speedup over p = 1 and efficiency, and the breakdown."""
    base = predict(variant, costs, cluster, 1, settings).seconds
    rows = []
    for p in ranks:
        pred = predict(variant, costs, cluster, p, settings)
        speedup = base / pred.seconds if pred.seconds > 0 else float("nan")
        rows.append({"variant": variant, "p": p, "seconds": pred.seconds, "speedup": speedup,
                     "efficiency": speedup / p, **pred.breakdown})
    return rows


def timeline_events(timeline: Timeline) -> np.ndarray:
    """[events, 4] in the results files' trace layout (rank, category, start, end)."""
    return timeline.events if timeline.events is not None else np.zeros((0, 4))

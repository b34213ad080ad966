"""The paper's PFF schedules' timelines (pffbench/schedules/pff/), one block per (chapter, layer).

Costs per chapter on a rank holding R training rows: a layer's training is
C epochs of its minibatch steps (``step`` x R / batch x C); its forward over
the rank's rows (``forward_row`` x R) recomputes the next layer's inputs;
a chapter starts by making its first-layer inputs (``inputs_row`` x R); the
rows are normalized once per rank (``once_row`` x R).  A published layer
(weights and bias, float32; Performance-Optimized adds its head) arrives
one link cost after its publisher finished it; a publisher's messages leave
one after another.  Rank 0 shares the training set (a broadcast; Federated:
each rank its shard) at the start, inside the clock, as the code does; the
non-blocking agreement between chapters is left out (a few small messages).
"""
from __future__ import annotations

import math

from ..core import wavefront as routing
from ..core.variants import VARIANTS
from .calibrate import FFCosts
from .events import Signal, Simulator, Wait, Work
from .links import Cluster, allreduce_time, broadcast_time

FLOAT = 4
NUM_CLASSES = 10


def wavefront_bound(variant: str, costs: list, chapters: int, ranks: int, between: list | None = None,
                    before: float = 0.0) -> float:
    """The speedup a PFF schedule allows on ``ranks`` when every (chapter, layer) costs ``costs[layer]`` (e.g. its
    weight count, or its training seconds) and communication is free: sequential time / the schedule's critical
    path.  ``between[layer]``: work the training rank does after layer ``layer`` before the next (the PFF
    recomputation of the next layer's inputs: perfmodel's ``forward``), on that rank's time but not on the
    layer's chain of chapters; ``before``: work the rank does before a chapter's first layer (its inputs
    and negatives).  Both only for All-Layers and perf-opt (ValueError otherwise).  python -m pffbench.paper_bench prints it beside the measured speedup, model
    paper beside the prediction (which communication can only slow: a prediction is never above it)."""
    program = VARIANTS[variant].program
    if (between or before) and program != "wavefront":
        raise ValueError(f"{variant}: the bound with work off the chain is written for All-Layers only")
    between = list(between or [0.0] * len(costs))[:len(costs) - 1] + [0.0]
    sequential = chapters * (sum(costs) + sum(between) + before)
    if program == "federated":
        return float(ranks)
    if program == "single-layer":  # a pipeline of chapters through the layers
        return sequential / (sum(costs) + sum(between) + (chapters - 1) * max(costs))
    done = {}  # all-layers and perf-opt: (chapter, layer) -> finish time
    free = [0.0] * ranks
    for chapter in range(chapters):
        rank = routing.trainer(chapter, ranks)
        free[rank] += before
        for layer, cost in enumerate(costs):
            start = max(free[rank], done.get((chapter - 1, layer), 0.0))
            done[(chapter, layer)] = start + cost
            free[rank] = done[(chapter, layer)] + between[layer]
    return sequential / max(done.values())


class _Publisher:
    """Each rank's outgoing messages, serialized on its link."""

    def __init__(self, sim: Simulator, cluster: Cluster, p: int):
        self.sim, self.cluster, self.free_at = sim, cluster, [0.0] * p

    def send(self, src: int, dst: int, nbytes: float, arrival: Signal) -> None:
        link = self.cluster.between(src, dst)
        start = max(self.sim.now, self.free_at[src])
        self.free_at[src] = start + link.time(nbytes) - link.alpha
        self.sim.fire(arrival, start - self.sim.now + link.time(nbytes))


def _layer_bytes(costs: FFCosts) -> list[float]:
    d = costs.dims
    head = (lambda out: out * NUM_CLASSES + NUM_CLASSES) if costs.kind == "perf-opt" else (lambda out: 0)
    return [FLOAT * (d[i] * d[i + 1] + d[i + 1] + head(d[i + 1])) for i in range(len(d) - 1)]


def _chapter_costs(costs: FFCosts, rows: float, per_chapter: int) -> tuple[list, list, float, float]:
    """(training per layer, forward per layer, inputs, once) seconds for a rank holding ``rows``."""
    minibatches = rows / costs.batch
    train = [s * minibatches * per_chapter for s in costs.step]
    forward = [f * rows for f in costs.forward_row]
    return train, forward, costs.inputs_row * rows, costs.once_row * rows


def _share(sim: Simulator, cluster: Cluster, p: int, nbytes: float):
    return sim.collective(p, broadcast_time(nbytes, p, cluster.collective_link(p)))


def all_layers(sim: Simulator, costs: FFCosts, cluster: Cluster, p: int, num_train: int, chapters: int,
               per_chapter: int) -> list:
    """Rank c mod p trains chapter c, layer by layer (a wavefront); perf-opt likewise."""
    L = len(costs.dims) - 1
    train, forward, inputs, once = _chapter_costs(costs, num_train, per_chapter)
    nbytes, post = _layer_bytes(costs), _Publisher(sim, cluster, p)
    published = [[Signal() for _ in range(L)] for _ in range(chapters)]  # (c, l) arrived where it is needed next
    share = _share(sim, cluster, p, num_train * (costs.dims[0] + 1) * FLOAT)

    def rank(r: int):
        yield Wait(share.arrive(), "data")
        for k, c in enumerate(routing.chapters_of(r, p, chapters)):
            yield Work(inputs + (once if k == 0 else 0.0), "data")
            dest = routing.destination(c, p, chapters)
            for l in range(L):
                if c > 0:
                    yield Wait(published[c - 1][l], "recv_wait")
                yield Work(train[l], "compute")
                post.send(r, dest, nbytes[l], published[c][l])
                if l < L - 1:
                    yield Work(forward[l], "data")
        if r == 0:
            for l in range(L):
                yield Wait(published[chapters - 1][l], "recv_wait")
    return [rank(r) for r in range(p)]


def single_layer(sim: Simulator, costs: FFCosts, cluster: Cluster, p: int, num_train: int, chapters: int,
                 per_chapter: int) -> list:
    """Rank i owns layer i (p = L; p = 1 owns them all): per chapter it gets
    layers 0..i-1 of this chapter, recomputing its inputs through each."""
    L = len(costs.dims) - 1
    if p not in (1, L):
        raise ValueError(f"Single-Layer needs one rank per layer ({L}) or one rank, not {p}")
    owner = (lambda l: 0) if p == 1 else (lambda l: l)
    train, forward, inputs, once = _chapter_costs(costs, num_train, per_chapter)
    nbytes, post = _layer_bytes(costs), _Publisher(sim, cluster, p)
    arrived = [[{} for _ in range(L)] for _ in range(chapters)]  # (c, l) -> {consumer rank: Signal}
    share = _share(sim, cluster, p, num_train * (costs.dims[0] + 1) * FLOAT)

    def consumers(l: int, c: int) -> set:
        ranks = {owner(later) for later in range(l + 1, L)}
        ranks.add(owner(l) if c + 1 < chapters else 0)
        return ranks

    def signal(c: int, l: int, r: int) -> Signal:
        return arrived[c][l].setdefault(r, Signal())

    def rank(r: int):
        mine = range(L) if p == 1 else range(r, r + 1)
        yield Wait(share.arrive(), "data")
        for c in range(chapters):
            yield Work(inputs + (once if c == 0 else 0.0), "data")
            for l in range(mine.stop):
                if l in mine:
                    yield Work(train[l], "compute")
                    for dest in sorted(consumers(l, c)):
                        post.send(r, dest, nbytes[l], signal(c, l, dest))
                else:
                    yield Wait(signal(c, l, r), "recv_wait")
                if l + 1 < mine.stop:
                    yield Work(forward[l], "data")
        if r == 0:
            for l in range(L):
                yield Wait(signal(chapters - 1, l, 0), "recv_wait")
    return [rank(r) for r in range(p)]


def federated(sim: Simulator, costs: FFCosts, cluster: Cluster, p: int, num_train: int, chapters: int,
              per_chapter: int, algorithm: str = "auto") -> list:
    """Every rank trains every chapter on its shard (1/p of the rows); each
    layer it publishes is averaged (a non-blocking allreduce), which the next
    chapter's copy of the layer waits for."""
    L = len(costs.dims) - 1
    rows = num_train / p
    train, forward, inputs, once = _chapter_costs(costs, math.ceil(rows), per_chapter)
    nbytes, link = _layer_bytes(costs), cluster.collective_link(p)
    averaged = [[sim.collective(p, allreduce_time(nbytes[l], p, link, algorithm)) for l in range(L)]
                for _ in range(chapters)]
    scatter = sim.collective(p, cluster.collective_link(p).time(rows * (costs.dims[0] + 1) * FLOAT) if p > 1 else 0)

    def rank(r: int):
        yield Wait(scatter.arrive(), "data")
        done = [[None] * L for _ in range(chapters)]
        for c in range(chapters):
            yield Work(inputs + (once if c == 0 else 0.0), "data")
            for l in range(L):
                if c > 0:
                    yield Wait(done[c - 1][l], "recv_wait")
                yield Work(train[l], "compute")
                done[c][l] = averaged[c][l].arrive()
                if l < L - 1:
                    yield Work(forward[l], "data")
        for l in range(L):
            yield Wait(done[chapters - 1][l], "recv_wait")
    return [rank(r) for r in range(p)]

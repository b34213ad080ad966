"""Microbenchmarks through pffbench's own code: what one minibatch step of
each layer, one forward row, one minibatch of data cost on this machine,
with the run's threads.

They give the *shape* of the costs (how they split over layers and parts);
``calibrate.from_run`` scales them to the level a 1-rank run measured, or
``calibrate.measured`` takes them as they are.  All times are seconds, medians
of ``repeats`` timings after warm-up.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F

from .. import ff
from ..ff import heads
from ..schedules.backprop.mlp import MLP
from ..core import optim

NUM_CLASSES = 10

# A per-machine cache of the microbenchmarks (issue 23: a prediction is the same from run to run).  The
# model's commands turn it on (use_cache); a library call measures each time.  Keyed by what was timed,
# torch's version and the CPU model; each entry keeps when it was measured and the host's load then.
_CACHE: str | None = None
_REFRESH = False  # measure again and replace what the cache holds (model --remeasure)
CACHE_SCHEMA = 2  # raised when what is timed, or the profiles' fields, change: older entries are not used
USED: list[dict] = []  # the entries the process used: {"measured": ISO time, "load": [1, 5, 15 min], "cached": bool}


def default_cache() -> str:
    """$PFFBENCH_CACHE, else ~/.cache/pffbench/microbenchmarks.json."""
    return os.environ.get("PFFBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pffbench",
                                                            "microbenchmarks.json")


def use_cache(path: str | None, refresh: bool = False) -> None:
    """Keep (and reuse) the microbenchmarks in ``path``; None: measure every time.  ``refresh``: measure
    again and keep the new figures in place of the cached ones."""
    global _CACHE, _REFRESH
    _CACHE, _REFRESH = path, refresh


def _cached(name: str, key: tuple, measure, cls):
    """``measure()``'s profile, or the one the cache holds for ``key`` on this machine."""
    from ..store import provenance
    if _CACHE is None:
        profile = measure()
        USED.append({"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "load": provenance.load_average(), "cached": False})
        return profile
    entry = json.dumps([CACHE_SCHEMA, name, *key, torch.__version__, provenance.cpu_model()])
    table = _read_cache(_CACHE)
    if entry in table and not _REFRESH:
        try:
            profile = cls(**table[entry]["profile"])
            USED.append({**{k: table[entry][k] for k in ("measured", "load")}, "cached": True})
            return profile
        except (TypeError, KeyError):  # an entry of another shape: measured again below
            pass
    profile = measure()
    stamp = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": provenance.load_average()}
    USED.append({**stamp, "cached": False})
    table = _read_cache(_CACHE)  # another process may have added entries meanwhile
    table[entry] = {**stamp, "profile": dataclasses.asdict(profile)}
    _write_cache(_CACHE, table)
    return profile


def _read_cache(path: str) -> dict:
    try:
        with open(path) as f:
            table = json.load(f)
        return table if isinstance(table, dict) else {}
    except (OSError, ValueError):  # none yet, or damaged: measured again and rewritten
        return {}


def _write_cache(path: str, table: dict) -> None:
    from ..store.atomic import WriteFailed, atomic_file
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

        def fill(temp):
            with open(temp, "w") as f:
                json.dump(table, f)
        atomic_file(path, fill)
    except (OSError, WriteFailed) as error:  # the prediction stands; only the next one measures again
        print(f"pffbench: warning: cannot keep the microbenchmarks in {path} ({error}); "
              "the next prediction measures again", file=sys.stderr)


@contextmanager
def _threads(threads: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # as pffbench.run does before training
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _median_seconds(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class FFProfile:
    """Per-layer costs of layer-wise FF (``kind`` "ff": positive and negative
    rows, the first layer's pair step; "perf-opt": positives only, a softmax
    head per layer), at ``batch`` rows per minibatch."""
    dims: list[int]
    batch: int
    threads: int
    kind: str
    step: list[float]            # s per minibatch, layer i's training step
    normalize: list[float]       # s per minibatch, normalizing layer i's input in place (pipeline receivers)
    forward_row: list[float]     # s per training row, layer i's forward of the whole set (PFF recomputation)
    data: float                  # s per minibatch, rank 0's minibatch hand-out (pipeline)
    inputs_row: float            # s per training row, a chapter's first-layer inputs and negatives (PFF)
    once_row: float              # s per training row, normalizing the rows once per run (PFF)
    extra: dict = field(default_factory=dict)
    message_rows: int = 2        # rows of activity per example a layer sends on (ff, scff: 2; perf-opt: 1)


# the FF layer kind a local rule (learn/rules) is timed as: its step's shapes and what it sends on
RULE_KINDS = {"ff": "ff", "local-softmax": "perf-opt", "scff": "scff"}
MESSAGE_ROWS = {"ff": 2, "perf-opt": 1, "scff": 2}


def _interleaved(fns: list, repeats: int, warmup: int = 2) -> list[float]:
    """Median seconds of each of ``fns``, timed round-robin so that a host
    whose load drifts (a shared machine) slows them all alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _layer_closures(d_in: int, d_out: int, batch: int, kind: str, first: bool, rows: int = 1024) -> tuple:
    """(step, normalize, forward of ``rows`` rows) of one d_in -> d_out layer, as closures."""
    torch.manual_seed(0)
    linear = ff.make_linear(d_in, d_out, 0, 0)
    big = torch.rand(rows, d_in)
    if kind == "perf-opt":
        layer = heads.PerfOptLayer(linear, ff.make_linear(d_out, NUM_CLASSES, 0, 1000), 1e-3)
        x, labels = ff.normalize(torch.rand(batch, d_in)), torch.randint(0, NUM_CLASSES, (batch,))
        return (lambda: layer.train_step(x, labels)), (lambda: None), (lambda: layer.forward(big))
    layer = ff.FFLayer(linear, 1e-3, 1.0, 20.0)
    if first:
        body = ff.normalize(torch.rand(batch, d_in))
        body[:, :NUM_CLASSES] = 0
        slots = torch.zeros(2 * batch, NUM_CLASSES)
        slots[torch.arange(2 * batch), torch.randint(0, NUM_CLASSES, (2 * batch,))] = 0.1
        pairs = ff.PairBatch(body, slots)
        columns, scale = linear.weight.t(), torch.rand(rows, 1)
        labels = torch.randint(0, NUM_CLASSES, (rows,))

        @torch.no_grad()
        def forward():  # FirstLayerPairs.forward: one product shared by a positive and its negative
            shared = torch.addmm(linear.bias, big, columns)
            for _ in range(2):
                ff.normalize(torch.addcmul(shared, scale, columns[labels]).clamp_(min=0))
        step = lambda: layer.train_step_pairs(pairs)  # noqa: E731
    else:
        x = ff.normalize(torch.rand(2 * batch, d_in))

        @torch.no_grad()
        def forward():
            for _ in range(2):
                ff.normalize(F.relu(linear(big)))
        step = lambda: layer.train_step(x, batch, normalize=False)  # noqa: E731
    message = torch.rand(2 * batch, d_in)
    norms = torch.ones(2 * batch, 1)  # dividing by one keeps the values (and their cost) as they are
    return step, (lambda: message.div_(norms)), forward


@lru_cache(maxsize=32)
def _layers(shapes: tuple, batch: int, threads: int, kind: str, repeats: int) -> dict:
    """{(d_in, d_out, first): (step, normalize, forward per row)}, timed interleaved."""
    rows = 1024
    with _threads(threads):
        closures = {shape: _layer_closures(*shape[:2], batch, kind, shape[2], rows) for shape in shapes}
        fns = [fn for trio in closures.values() for fn in trio]
        medians = _interleaved(fns, repeats)
    out = {}
    for i, shape in enumerate(closures):
        step, normalize, forward = medians[3 * i:3 * i + 3]
        out[shape] = (step, normalize, forward / rows)
    return out


def profile_ff(dims, batch: int, threads: int = 1, kind: str = "ff", repeats: int = 15) -> FFProfile:
    """``_profile_ff`` (see there), from the per-machine cache where it is on (use_cache)."""
    return _cached("ff", (list(dims), batch, threads, kind, repeats),
                   lambda: _profile_ff(dims, batch, threads, kind, repeats), FFProfile)


def _profile_ff(dims, batch: int, threads: int = 1, kind: str = "ff", repeats: int = 15) -> FFProfile:
    """Time every layer's step (identical shapes once), the data path and
    the PFF recomputation on synthetic data of the net's shape.  ``kind``:
    "ff" (goodness on positive and negative rows, the first layer's pair
    step), "perf-opt" (the local-softmax rule: positives only, a softmax head
    per layer) or "scff" (goodness on [x, x] and [x, x'] rows: the first
    layer twice as wide, no label columns)."""
    dims = list(dims)
    widths = [2 * dims[0], *dims[1:]] if kind == "scff" else dims
    shapes = [(widths[i], widths[i + 1], i == 0 and kind == "ff") for i in range(len(dims) - 1)]
    timed = _layers(tuple(dict.fromkeys(shapes)), batch, threads, kind, repeats)
    parts = [timed[shape] for shape in shapes]
    with _threads(threads):
        rows = 64 * batch
        x = torch.rand(rows, dims[0])
        inputs = ff.FirstLayerInputs(x, NUM_CLASSES)
        once = _median_seconds(lambda: ff.FirstLayerInputs(x, NUM_CLASSES), 3, 1) / rows
        labels = torch.randint(0, NUM_CLASSES, (rows,))
        generator = torch.Generator().manual_seed(0)
        sizes = [batch] * 64

        def epoch_of_batches():
            order = torch.randperm(rows, generator=generator)
            wrong = ff.random_wrong_labels(labels[order], NUM_CLASSES, generator)
            epoch = inputs.epoch(order, labels[order], wrong, sizes)
            for b in range(len(sizes)):
                epoch.batch(b)
        data = _median_seconds(epoch_of_batches if kind == "ff" else _rule_batches(x, labels, sizes, kind), 5, 1) \
            / len(sizes)
        inputs_row = _median_seconds(lambda: ff.random_wrong_labels(labels, NUM_CLASSES, generator), 5, 1) / rows
    return FFProfile(dims, batch, threads, kind, [s for s, _, _ in parts], [n for _, n, _ in parts],
                     [f for _, _, f in parts], data, inputs_row, once, message_rows=MESSAGE_ROWS[kind])


def _rule_batches(x: torch.Tensor, labels: torch.Tensor, sizes: list[int], kind: str):
    """An epoch of rank 0's minibatches as the rule's Source makes them (learn/rules: local_softmax, scff)."""
    from ..learn.rules import scff
    generator = torch.Generator().manual_seed(0)

    def epoch():
        order = torch.randperm(x.shape[0], generator=generator)
        partners = scff.draw_partners(x.shape[0], generator) if kind == "scff" else None
        for b, start in enumerate(range(0, sum(sizes), sizes[0])):
            rows = order[start:start + sizes[b]]
            if kind == "scff":
                scff.pairs(x, rows, partners[rows])
            else:
                x[rows], labels[rows].to(x.dtype).unsqueeze(1)
    return epoch


@dataclass
class BackpropProfile:
    """End-to-end backprop of the MLP: forward+backward of ``rows`` rows costs
    ``fb0 + fb1 * rows``; the Adam step ``adam``; slicing a minibatch ``data_row`` per row."""
    dims: list[int]
    batch: int
    threads: int
    fb0: float
    fb1: float
    adam: float
    data_row: float
    gradient_floats: int


def profile_backprop(dims, batch: int, threads: int = 1, repeats: int = 15) -> BackpropProfile:
    """``_profile_backprop`` (see there), from the per-machine cache where it is on (use_cache)."""
    return _cached("backprop", (list(dims), batch, threads, repeats),
                   lambda: _profile_backprop(dims, batch, threads, repeats), BackpropProfile)


def _profile_backprop(dims, batch: int, threads: int = 1, repeats: int = 15) -> BackpropProfile:
    dims = list(dims)
    with _threads(threads):
        model = MLP(dims, NUM_CLASSES, 0)
        optimizer = optim.adam(model.parameters(), 1e-3)
        floats = sum(p.numel() for p in model.parameters())

        def fb(rows):
            x, y = torch.rand(rows, dims[0]), torch.randint(0, NUM_CLASSES, (rows,))

            def go():
                model.zero_grad(set_to_none=False)
                F.cross_entropy(model(x), y).backward()
            return go
        small, large = max(1, batch // 4), batch
        t_small, t_large, adam = _interleaved([fb(small), fb(large), optimizer.step], repeats)
        fb1 = max(0.0, (t_large - t_small) / (large - small)) if large > small else 0.0
        fb0 = max(0.0, t_large - fb1 * large)
        data_x = torch.rand(64 * batch, dims[0])
        order = torch.randperm(64 * batch)
        data_row = _median_seconds(lambda: data_x[order[:batch]], repeats) / batch
    return BackpropProfile(dims, batch, threads, fb0, fb1, adam, data_row, floats + 1)

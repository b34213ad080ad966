"""The backprop baselines' timelines (pffbench/schedules/backprop/).

How a step's cost is split (``layer_work``): forward+backward of r rows
through the whole MLP costs ``fb0 + fb1 r`` (profiled, scaled to the
calibrating run).  Linear i takes ``fb0 / L`` (per-call overhead, alike for
every layer) plus ``fb1 r`` in proportion to its weights (its products); of
that, 1/3 is the forward and 2/3 the backward (a backward makes two products
of the forward's size: the input's gradient and the weight's).  The Adam step
splits over the linears in proportion to their parameters.

- **backprop, dp-backprop** (``data_parallel``): per minibatch of n rows
  every rank slices its shard of about n/p rows (data), runs forward and
  backward on it, joins the blocking allreduce of the whole gradient buffer
  (links.allreduce_time, ring or recursive doubling), then takes the full
  Adam step.  p = 1 is the single-process baseline (no allreduce).
- **ddp** (``ddp``): the same shards, but the gradient goes in DDP's buckets
  (``ddp_buckets``): each bucket's allreduce starts when the backward has
  produced its last gradient, overlapping the rest of the backward, and the
  buckets go through the process group one after another (gloo's queue);
  then DDP's own per-step tail (calibrated: what the 1-rank run spent after
  its last bucket) and the step.
- **gpipe, 1f1b** (``pipeline``): the linears split over the ranks as
  schedules/backprop/torch_pipeline.py splits them; each minibatch cut into
  M microbatches.  A stage's forward of microbatch m waits for m's
  activation from the stage before, its backward for m's gradient from the
  stage after, in torch.distributed.pipelining's order: GPipe all M
  forwards then all M backwards; 1F1B ``min(M, p - s)`` forwards on stage s,
  then one backward and one forward alternately, then the remaining
  backwards (torch's Schedule1F1B).  Each forward or backward costs the
  library's per-microbatch bookkeeping besides the compute (calibrated:
  the 1-rank run's time in ``step()`` outside the stage's compute, per
  microbatch operation).  Messages go on the process group's link
  (``Cluster.group`` within a node), which also costs the sender and the
  receiver its per-message ``overhead`` of their own time (LogP's o).  Then each stage's Adam step.  The
  bubble, (p - 1) of the M + p - 1 slots of an ideal GPipe step, is not put
  in: it falls out of the waits.
"""
from __future__ import annotations

from ..core.types import batch_rows
from ..instrument.progress import plural
from ..schedules.backprop.torch_pipeline import stage_layers
from .calibrate import BackpropCosts
from .events import Simulator, Signal, Wait, Work
from .links import Cluster, allreduce_time
from ..probes.profile import NUM_CLASSES

FLOAT = 4
FORWARD = 1 / 3  # of a layer's forward+backward (FLOPs: the backward makes two products of the forward's size)
FIRST_BUCKET_BYTES = 1024 ** 2   # torch.distributed.constants: DDP's first bucket, 1 MiB
BUCKET_BYTES = 25 * 1024 ** 2     # DDP's bucket_cap_mb default, 25 MiB


def linear_dims(costs: BackpropCosts) -> list[int]:
    """The widths, input to head: the hidden net plus the classes (a conv net's: each layer's input
    flattened, C*H*W)."""
    return list(costs.dims) + [costs.classes or NUM_CLASSES]


def linear_parameters(costs: BackpropCosts) -> list[int]:
    """Parameters of each linear, hidden layers then the head: the conv net's as measured, the MLP's from
    its widths."""
    return list(costs.params) if costs.params is not None else parameters(linear_dims(costs))


def parameters(dims: list[int]) -> list[int]:
    """Parameters of each linear (weights and bias)."""
    return [dims[i] * dims[i + 1] + dims[i + 1] for i in range(len(dims) - 1)]


def layer_work(costs: BackpropCosts, rows: float) -> tuple[list[float], list[float], list[float]]:
    """(forward, backward, Adam step) seconds of each linear for ``rows`` rows (see the module's docstring;
    a conv net's linears each as measured, a + b rows, split 1/3 forward as the MLP's)."""
    if costs.layer_fb is not None:
        fb, adam = [a + b * rows for a, b in costs.layer_fb], list(costs.layer_adam)
    else:
        dims = linear_dims(costs)
        params = parameters(dims)
        products = [dims[i] * dims[i + 1] for i in range(len(dims) - 1)]
        total, count = sum(products), len(products)
        fb = [costs.fb0 / count + costs.fb1 * rows * w / total for w in products]
        adam = [costs.adam * w / sum(params) for w in params]
    return [FORWARD * x for x in fb], [(1 - FORWARD) * x for x in fb], adam


def ddp_buckets(params: list[int]) -> list[list[int]]:
    """The linears in each of DDP's gradient buckets, in the order the backward fills them.
    DDP (torch/csrc/distributed/c10d/reducer.cpp, compute_bucket_assignment_by_size) takes the
    parameters in reverse order and closes a bucket once it holds at least its limit: 1 MiB for the
    first, 25 MiB for the others.  A linear's bias and weight come one after the other, so a bucket
    closes after a whole linear (a conv block's parameters likewise).  ``params``: each linear's.  (DDP's very first step uses one bucket for everything and re-buckets
    after it: one step in an epoch, left out.)"""
    buckets, current, size = [], [], 0
    for i in reversed(range(len(params))):
        current.append(i)
        size += FLOAT * params[i]
        if size >= (FIRST_BUCKET_BYTES if not buckets else BUCKET_BYTES):
            buckets.append(current)
            current, size = [], 0
    return buckets + ([current] if current else [])


def data_parallel(sim: Simulator, costs: BackpropCosts, cluster: Cluster, p: int, num_train: int,
                  epochs: int = 1, algorithm: str = "auto") -> list:
    """dp-backprop (and backprop at p = 1): one blocking allreduce of the whole gradient per step."""
    sizes = batch_rows(num_train, costs.batch)
    cost = allreduce_time(FLOAT * costs.gradient_floats, p, cluster.collective_link(p), algorithm)
    steps = [[sim.collective(p, cost) for _ in sizes] for _ in range(epochs)]

    def rank(r: int):
        for epoch in range(epochs):
            for b, n in enumerate(sizes):
                rows = (r + 1) * n // p - r * n // p
                yield Work(costs.data_row * rows, "data")
                yield Work(costs.fb0 + costs.fb1 * rows, "compute")
                if p > 1:
                    yield Wait(steps[epoch][b].arrive(), "sync")
                yield Work(costs.adam, "compute")
    return [rank(r) for r in range(p)]


def ddp(sim: Simulator, costs: BackpropCosts, cluster: Cluster, p: int, num_train: int, epochs: int = 1,
        algorithm: str = "ring") -> list:
    """DistributedDataParallel: bucketed allreduces overlapping the backward (gloo's allreduce is a ring)."""
    sizes = batch_rows(num_train, costs.batch)
    params = linear_parameters(costs)
    buckets = ddp_buckets(params)
    link = cluster.group_link(p)
    costs_of = [allreduce_time(FLOAT * sum(params[i] for i in bucket), p, link, algorithm) for bucket in buckets]

    def step_collectives():
        chain = []
        for cost in costs_of:
            chain.append(sim.collective(p, cost, after=chain[-1] if chain else None))
        return chain

    steps = [[step_collectives() for _ in sizes] for _ in range(epochs)]

    def rank(r: int):
        shares = {n: (r + 1) * n // p - r * n // p for n in set(sizes)}  # this rank's rows of an n-row minibatch
        work = {n: layer_work(costs, rows) for n, rows in shares.items()}
        for epoch in range(epochs):
            for b, n in enumerate(sizes):
                forward, backward, adam = work[n]
                yield Work(costs.data_row * shares[n], "data")
                yield Work(sum(forward), "compute")
                launched = []
                for bucket, collective in zip(buckets, steps[epoch][b]):
                    yield Work(sum(backward[i] for i in bucket), "compute")
                    launched.append(collective.arrive())
                for done in launched:
                    yield Wait(done, "sync")
                yield Work(costs.tail, "sync")
                yield Work(sum(adam), "compute")
    return [rank(r) for r in range(p)]


def pipeline(sim: Simulator, costs: BackpropCosts, cluster: Cluster, p: int, num_train: int, epochs: int = 1,
             schedule: str = "gpipe") -> list:
    """GPipe or 1F1B (torch.distributed.pipelining) over p stages, ``costs.microbatches`` per minibatch."""
    sizes = batch_rows(num_train, costs.batch)
    m_count = costs.microbatches
    if m_count < p:
        raise ValueError(f"{schedule} needs microbatches >= stages: "
                         f"{plural(m_count, 'microbatch', 'microbatches')}, {p} stages")
    dims = linear_dims(costs)
    blocks = stage_layers(len(dims) - 2, dims, p, costs.split)  # a conv net's: its run's split
    links = [cluster.group_between(r, r + 1) for r in range(p - 1)]
    free_at = {}  # (sender, receiver) -> when that link is free again

    def send(a: int, b: int, arrival: Signal, nbytes: float):
        """Post a message (arriving one link cost later); yields the sender's overhead."""
        link = links[min(a, b)]
        start = max(sim.now, free_at.get((a, b), 0.0))
        free_at[(a, b)] = start + link.time(nbytes) - link.alpha
        sim.fire(arrival, start - sim.now + link.time(nbytes))
        yield Work(link.overhead, "sync")

    def receive(s: int, peer: int, arrival: Signal):
        """Wait for a message, then the receiver's overhead."""
        yield Wait(arrival, "sync")
        yield Work(links[min(s, peer)].overhead, "sync")

    def order(s: int) -> list[tuple[str, int]]:
        if schedule == "gpipe":
            return [("F", m) for m in range(m_count)] + [("B", m) for m in range(m_count)]
        warmup = min(m_count, p - s)
        ops = [("F", m) for m in range(warmup)]
        forward = warmup
        for m in range(m_count):
            ops.append(("B", m))
            if forward < m_count:
                ops.append(("F", forward))
                forward += 1
        return ops

    work = {n: layer_work(costs, n / m_count) for n in set(sizes)}  # per microbatch of an n-row minibatch

    def rank(s: int):
        block, ops = blocks[s], order(s)
        for epoch in range(epochs):
            for b, n in enumerate(sizes):
                rows = n / m_count
                forward, backward, adam = work[n]
                f, g = sum(forward[i] for i in block), sum(backward[i] for i in block)
                activation = FLOAT * rows * dims[block.stop]  # stage s's output, stage s+1's input
                yield Work(costs.data_row * n, "data")
                for kind, m in ops:
                    if kind == "F":
                        if s > 0:
                            yield from receive(s, s - 1, signals[epoch][b]["F"][s][m])
                        yield Work(costs.library, "sync")
                        yield Work(f, "compute")
                        if s < p - 1:
                            yield from send(s, s + 1, signals[epoch][b]["F"][s + 1][m], activation)
                    else:
                        if s < p - 1:
                            yield from receive(s, s + 1, signals[epoch][b]["B"][s][m])
                        yield Work(costs.library, "sync")
                        yield Work(g, "compute")
                        if s > 0:
                            yield from send(s, s - 1, signals[epoch][b]["B"][s - 1][m], FLOAT * rows * dims[block.start])
                yield Work(sum(adam[i] for i in block), "compute")

    signals = [[{k: [[Signal() for _ in range(m_count)] for _ in range(p)] for k in "FB"} for _ in sizes]
               for _ in range(epochs)]
    return [rank(s) for s in range(p)]

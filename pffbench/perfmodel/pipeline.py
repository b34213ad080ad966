"""The activation pipeline's timeline (pffbench/schedules/pipeline/), minibatch by minibatch.

Rank r owns block r of the project's own partition (core.partition.balanced_partition
of partition.layer_costs).  Per minibatch: rank 0 makes the data; a rank
waits for its input (receive wait), waits for a free slot in the next rank's
ring (send wait: ``depth`` = 9 slots, so up to 8 minibatches ahead), computes
its block (a receiver first normalizes its input), and sends the output,
which arrives one link cost later (links within a node the shared-memory
ring, between nodes Isend/Irecv; messages on one link go one after another).
A slot is released when its receiver has computed on it.  At the end of an
epoch every rank joins the loss reduction (a small allreduce); an evaluated
epoch gathers the layers to rank 0, which evaluates while the others wait.
"""
from __future__ import annotations

from ..core.partition import balanced_partition, layer_costs
from ..core.types import batch_rows
from .calibrate import FFCosts
from .events import Hold, Signal, Simulator, Wait, Work
from .links import Cluster, allreduce_time

DEPTH = 9  # pipeline_communications: 9 slots, the sender up to 8 minibatches ahead
FLOAT = 4


def programs(sim: Simulator, costs: FFCosts, cluster: Cluster, p: int, num_train: int, epochs: int = 1,
             evaluate=(), shared_ring: bool = True, depth: int = DEPTH) -> list:
    """One generator per rank for ``epochs`` epochs; ``evaluate``: the epochs
    (0-based) after which rank 0 evaluates."""
    dims, batch = costs.dims, costs.batch
    blocks = balanced_partition(costs.split or layer_costs(dims), p)  # a conv net's: its own split
    sizes = batch_rows(num_train, batch)
    links = [cluster.between(r, r + 1, shared_ring) for r in range(p - 1)]
    free_at = [0.0] * p  # when each outgoing link is free again
    reduce_cost = allreduce_time(FLOAT * (len(dims) + 4), p, cluster.collective_link(p), "tree")
    weights = costs.weight_bytes or [FLOAT * (dims[i] * dims[i + 1] + dims[i + 1]) for i in range(len(dims) - 1)]

    def send(r: int, arrival: Signal, nbytes: float) -> None:
        link = links[r]
        start = max(sim.now, free_at[r])
        transfer = link.time(nbytes) - link.alpha
        free_at[r] = start + transfer
        sim.fire(arrival, start - sim.now + link.time(nbytes))

    def rank(r: int):
        block = blocks[r]
        work = sum(costs.step[i] for i in block) + (costs.normalize[block.start] if r else 0.0)
        for epoch in range(epochs):
            arrive = epoch_signals[epoch]["arrive"]
            release = epoch_signals[epoch]["release"]
            for b, n in enumerate(sizes):
                share = n / batch
                if r == 0:
                    yield Work(costs.data * share, "data")
                else:
                    yield Wait(arrive[r][b], "recv_wait")
                if r < p - 1 and b >= depth:
                    yield Wait(release[r + 1][b - depth], "send_wait")
                yield Work(work * share, "compute")
                if r < p - 1:
                    # activity [message_rows * n, width] and a column beside it (labels, norms)
                    send(r, arrive[r + 1][b], FLOAT * costs.message_rows * n * (dims[block.stop] + 1))
                if r > 0:
                    sim.fire(release[r][b])
            yield Work(costs.sync, "sync")
            yield Wait(epoch_signals[epoch]["reduce"].arrive(), "sync")
            if epoch in evaluate:
                gather = sum(cluster.between(0, o).time(sum(weights[i] for i in blocks[o])) for o in range(1, p))
                yield Wait(epoch_signals[epoch]["gather"].arrive(), "eval")
                if r == 0:
                    yield Hold(gather, "eval")
                    yield Work(costs.eval, "eval")
                yield Wait(epoch_signals[epoch]["barrier"].arrive(), "eval")

    epoch_signals = [{"arrive": [[Signal() for _ in sizes] for _ in range(p)],
                      "release": [[Signal() for _ in sizes] for _ in range(p)],
                      "reduce": sim.collective(p, reduce_cost),
                      "gather": sim.collective(p, 0.0),
                      "barrier": sim.collective(p, allreduce_time(0, p, cluster.collective_link(p), "tree"))}
                     for _ in range(epochs)]
    return [rank(r) for r in range(p)]

"""The backprop baselines' timelines (pffbench/schedules/backprop/).

dp-backprop on p ranks, per minibatch of n rows: every rank slices its
shard of about n/p rows (data), runs forward and backward on it
(``fb0 + fb1 * rows``), joins the gradient allreduce of the whole model
(blocking; its cost from links.allreduce_time, ring or recursive doubling),
then takes the full Adam step.  p = 1 is the single-process baseline (no
allreduce).  DDP (bucketed allreduce overlapped with the backward) fits the
same shape: split ``fb`` into per-bucket pieces and start each bucket's
allreduce as its piece ends.
"""
from __future__ import annotations

from ..core.types import batch_rows
from .calibrate import BackpropCosts
from .events import Simulator, Wait, Work
from .links import Cluster, allreduce_time

FLOAT = 4


def data_parallel(sim: Simulator, costs: BackpropCosts, cluster: Cluster, p: int, num_train: int,
                  epochs: int = 1, algorithm: str = "auto") -> list:
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

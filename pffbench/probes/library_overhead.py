"""`python -m pffbench.probes.library_overhead`: what torch.distributed.pipelining
costs per step beyond the compute it schedules, measured in one process.

The same step (backprop's MLP, a minibatch of --batch-size rows cut into M
microbatches, each microbatch's summed cross-entropy divided by the batch
size, one Adam step) is timed three ways on one rank with the same threads:

- plain: the whole minibatch forward and backward at once (``--variant backprop``);
- microbatched: M forward + backward passes of n/M rows by hand, no library;
- the library: ``ScheduleGPipe`` / ``Schedule1F1B`` with one stage over a
  one-rank gloo group, as ``--variant gpipe`` / ``1f1b`` runs at p = 1.

library - microbatched is the library's own cost per step (its bookkeeping:
chunking, stage caches, loss handling, the schedule's actions).  Also timed:
each stage of a p-rank split (--ranks) by hand, M microbatches forward and
backward, the compute a pipelined step schedules on each rank; with them the
ideal fill-drain step of p stages is (M + p - 1) x the slowest stage's
microbatch time.  Medians over --steps steps after 5 warm-up steps; random
data of MNIST's shape (the time does not depend on the values); the
variants are timed in turn, step by step, so load drift hits all alike.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ..launch.cli import _int_list, _Parser
from ..launch.command import command
from ..schedules.backprop.mlp import MLP
from ..schedules.backprop.torch_pipeline import SCHEDULES, stage_layers
from ..core import optim

WARMUP = 5


def _interleaved_ms(steps_by_name: dict, steps: int) -> dict:
    """Median milliseconds per call of each step function, the functions
    called in turn (a, b, c, a, b, c, ...) so that a change in the machine's
    load hits all of them alike."""
    for _ in range(WARMUP):
        for step in steps_by_name.values():
            step()
    times = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def _by_hand(layers: list, relu: list, x: torch.Tensor, y: torch.Tensor | None, n: int, m: int, optimizer):
    """One step of ``layers`` over m microbatches of x, no library; the last
    stage's loss as in the library, the others backpropagate a ones gradient."""
    def step():
        optimizer.zero_grad()
        for xs, ys in zip(x.chunk(m), y.chunk(m) if y is not None else [None] * m):
            h = xs
            for linear, r in zip(layers, relu):
                h = F.relu(linear(h)) if r else linear(h)
            if ys is not None:
                (F.cross_entropy(h, ys, reduction="sum") / n).backward()
            else:
                h.backward(torch.ones_like(h))
        optimizer.step()
    return step


def measure(dims: list[int], batch: int, m: int, ranks: int, steps: int) -> dict:
    """Milliseconds per step: plain, microbatched, gpipe and 1f1b at p = 1, and
    each of ``ranks`` stages by hand.  ``dims`` = [inputs, hidden..., classes]."""
    from mpi4py import MPI

    from ..schedules.backprop import process_group
    x = torch.randn(batch, dims[0])
    y = torch.randint(0, dims[-1], (batch,))
    model = MLP(dims[:-1], dims[-1], seed=0)
    linears = [*model.hidden, model.head]
    head = len(linears) - 1
    adam = optim.adam(model.parameters(), 1e-3)
    relu = [i != head for i in range(len(linears))]
    steps_by_name = {"plain": _by_hand(linears, relu, x, y, batch, 1, adam),
                     "microbatched": _by_hand(linears, relu, x, y, batch, m, adam)}
    for r, block in enumerate(stage_layers(len(dims) - 2, dims, ranks)):
        layers = [linears[i] for i in block]
        optimizer = optim.adam([p for layer in layers for p in layer.parameters()], 1e-3)
        inputs = torch.randn(batch, dims[block.start], requires_grad=r > 0)  # later stages send input gradients
        steps_by_name[f"stage {r}"] = _by_hand(layers, [i != head for i in block], inputs,
                                               y if r == ranks - 1 else None, batch, m, optimizer)
    group = process_group.start(MPI.COMM_SELF, torch.device("cpu"), 600)
    try:
        from torch.distributed.pipelining import PipelineStage

        class Whole(torch.nn.Module):
            def forward(self, h):
                return model(h)

        def library_step(kind):
            stage = PipelineStage(Whole(), 0, 1, torch.device("cpu"), group=group)
            schedule = kind(stage, m, loss_fn=lambda o, t: F.cross_entropy(o, t, reduction="sum") / batch,
                            scale_grads=False)

            def step():
                adam.zero_grad()
                schedule.step(x, target=y)
                adam.step()
            return step
        for name, kind in SCHEDULES.items():
            steps_by_name[name] = library_step(kind)
        out = _interleaved_ms(steps_by_name, steps)
    finally:
        process_group.stop()
    stages = [out.pop(f"stage {r}") for r in range(ranks)]
    out["stages"] = stages
    return out


@command("pffbench.probes.library_overhead")
def main(argv=None) -> int:
    parser = _Parser(prog="python -m pffbench.probes.library_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=_int_list, default=(784, 544), metavar="W1,W2,...")
    parser.add_argument("--inputs", type=int, default=784)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--ranks", type=int, default=2, help="stages to time by hand (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    torch.set_flush_denormal(True)
    dims = [opts.inputs, *opts.layers, opts.classes]
    m = opts.microbatches
    r = measure(dims, opts.batch_size, m, opts.ranks, opts.steps)
    print(f"MLP {dims}, batch {opts.batch_size}, {m} microbatches, {opts.threads} thread(s); median ms per step")
    print(f"plain (whole minibatch)        {r['plain']:7.2f}")
    print(f"microbatched by hand           {r['microbatched']:7.2f}")
    for name in SCHEDULES:
        extra = r[name] - r["microbatched"]
        print(f"{name:<6} (library, 1 stage)     {r[name]:7.2f}   library cost {extra:6.2f} ms/step, "
              f"{extra / m:5.2f} ms/microbatch")
    slowest = max(r["stages"]) / m
    print("stages of a {}-rank split by hand: {}".format(opts.ranks, ", ".join(f"{t:.2f}" for t in r["stages"])))
    print(f"ideal {opts.ranks}-stage fill-drain step: (M + p - 1) x slowest microbatch = "
          f"{(m + opts.ranks - 1) * slowest:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

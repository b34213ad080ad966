"""`--variant gpipe` and `--variant 1f1b`: pipeline-parallel backprop with
``torch.distributed.pipelining`` (``PipelineStage``, ``ScheduleGPipe``,
``Schedule1F1B``), the direct rival of the Forward-Forward pipeline.

The model is backprop's MLP (the FF net's widths, Linear + ReLU, a softmax
head; the same initial weights: every rank makes the whole MLP from the seed
and keeps its layers).  The hidden layers are split over the ranks with the
FF pipeline's own compute-balanced partition (core/partition.py, the same
call as schedules/pipeline/), so each rank holds the same layers as in the
FF pipeline; the head goes to the last rank.  With --conv the model is the
conv net of learn/nets/conv.py, its blocks and dense layers balanced by
their FLOPs (ConvNet.costs), or by ``--layer-costs`` (each layer's share of
a minibatch measured: python -m pffbench.probes.layer_costs --variant gpipe;
the FLOPs misjudge a block at full resolution); activations travel between stages as
[rows, C, H, W] (the library sends any shape), and GroupNorm normalizes each
example on its own, so a microbatch computes what its rows compute in the
whole minibatch.  Each minibatch of n rows is cut
into ``--microbatches M`` microbatches of n/M rows (the library requires
M >= stages; pffbench requires M to divide every minibatch, so that all
microbatches have one shape).  The loss of a microbatch is its summed
cross-entropy divided by n, and the library's own division by M is turned
off (``scale_grads=False``), so the microbatch gradients add up to the
minibatch-mean gradient, as in ``--variant backprop``
(tests/test_torch_baselines_mpi.py checks the weights agree to float32
round-off).  Each rank then takes an Adam step on its own layers.  The
process group is made from the MPI world (process_group.py).

The library fixes a stage's tensor shapes at its first step, so a short last
minibatch (the training set not a multiple of --batch-size) gets a second
stage and schedule object over the same layers, made when first needed.

Time accounts per step and rank: ``compute`` = the stage's forward pass
(timed inside the stage's module), its backward pass (the library's
``backward_one_chunk``, which also does a little bookkeeping), the loss on
the last stage, and the optimizer step; ``sync`` = everything else inside
the library's ``step()``: sending and receiving activations and gradients,
waiting for them (the pipeline bubble), and the library's own bookkeeping.
"""
from __future__ import annotations

import inspect
import time

import torch
import torch.nn.functional as F
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from ...core.config import Config, UsageError
from ...core.partition import stage_layers
from ...core.types import Shape, TrainResult, batch_rows
from ...core.world import World
from ...instrument.timer import EpochTimer, settler
from . import loop, process_group
from .mlp import make_model
from .trainer import Trainer

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


class StageModule(torch.nn.Module):
    """Layers ``indices`` of the MLP (ReLU after every one but the head), or of the conv net ``net`` (each
    layer as ConvNet.apply runs it), timing its forward pass."""

    def __init__(self, linears: dict[int, torch.nn.Module], head: int, timer: EpochTimer, net=None):
        super().__init__()
        self.indices = sorted(linears)
        self.layers = torch.nn.ModuleList(linears[i] for i in self.indices)
        self.relu = [i != head for i in self.indices]
        self.timer, self.net = timer, net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.timer("compute"):
            if self.net is not None:
                for index, layer in zip(self.indices, self.layers):
                    x = self.net.apply(index, layer, x)
                return x
            for linear, relu in zip(self.layers, self.relu):
                x = F.relu(linear(x)) if relu else linear(x)
            return x


class TimedStage(PipelineStage):
    """The library's stage with its backward pass charged to ``compute``."""

    def __init__(self, *args, timer: EpochTimer, **kwargs):
        super().__init__(*args, **kwargs)
        self.timer = timer

    def backward_one_chunk(self, *args, **kwargs):
        with self.timer("compute"):
            return super().backward_one_chunk(*args, **kwargs)


class PipelineTrainer(Trainer):
    replicated = False
    state_key = "stage"

    def __init__(self, config: Config, world: World, dims: list[int], device: torch.device, timer: EpochTimer,
                 net=None):
        self.rank, self.size, self.device = world.rank, world.size, device
        self.microbatches, self.kind = config.microbatches, SCHEDULES[config.variant]
        self.group = process_group.start(world.comm, device, config.peer_timeout)
        num_hidden = len(dims) - 2
        self.blocks = stage_layers(num_hidden, dims, world.size,
                                   config.layer_costs or (None if net is None else net.costs()))
        model = make_model(dims, config.seed, net)
        linears = [*model.hidden, model.head]
        stage = StageModule({i: linears[i] for i in self.blocks[self.rank]}, num_hidden, timer, net).to(device)
        super().__init__(stage, config.lr, timer)
        self.is_first, self.is_last = world.is_first, world.rank == world.size - 1
        self.schedules = {}  # microbatch rows -> schedule
        self.n = 1
        self.settle = settler(device) or (lambda: None)
        self.attrs = {"process_group": "nccl" if device.type == "cuda" else "gloo", "microbatches": self.microbatches,
                      "pipeline_schedule": self.kind.__name__}

    def _loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with self.timer("compute"):
            return F.cross_entropy(output, target, reduction="sum") / self.n

    def _schedule(self, n: int):
        if n not in self.schedules:
            stage = TimedStage(self.module, self.rank, self.size, self.device, group=self.group, timer=self.timer)
            self.schedules[n] = self.kind(stage, self.microbatches, loss_fn=self._loss, scale_grads=False)
        return self.schedules[n]

    def rows(self, n: int) -> slice:
        return slice(0, n)  # the first stage feeds every row, the last one needs every label

    def step(self, x: torch.Tensor, y: torch.Tensor, n: int, lr: float) -> torch.Tensor:
        with self.timer("compute"):
            self.optimizer.zero_grad()
        schedule, self.n, losses = self._schedule(n), n, []
        computed = self.timer.spent("compute")
        start = time.perf_counter()
        with process_group.peer_failures(self.rank, f"a {self.kind.__name__} step"):
            inputs = (x,) if self.is_first else ()
            schedule.step(*inputs, **({"target": y, "losses": losses} if self.is_last else {}))
            self.settle()
        elapsed = time.perf_counter() - start
        self.timer.add("sync", max(0.0, elapsed - (self.timer.spent("compute") - computed)))
        self.adam_step(lr)
        return torch.stack(losses).sum().detach() if losses else torch.zeros((), device=self.device)

    def owned(self) -> dict:
        return dict(zip(self.module.indices, self.module.layers))

    def close(self) -> None:
        process_group.stop()


def train(config: Config, world: World, shape: Shape, dataset=None, on_epoch=None) -> TrainResult | None:
    if "scale_grads" not in inspect.signature(ScheduleGPipe.__init__).parameters:  # torch >= 2.7
        raise UsageError(f"--variant {config.variant} needs torch >= 2.7 (its pipelining's scale_grads), "
                         f"this is torch {torch.__version__}")
    sizes = sorted(set(batch_rows(shape.num_train, config.batch_size)))
    uneven = [n for n in sizes if n % config.microbatches]
    if uneven:
        raise UsageError(f"--microbatches {config.microbatches} does not divide a minibatch of {uneven[0]} rows "
                         f"({shape.num_train} training rows in batches of {config.batch_size}): the library needs "
                         f"microbatches of one shape; choose --microbatches dividing {', '.join(map(str, sizes))}")
    return loop.Loop(config, world, shape, dataset, PipelineTrainer).run(on_epoch)

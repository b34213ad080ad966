"""Backprop baselines in the same harness: `--variant backprop` (one process)
and `--variant dp-backprop` (data-parallel over MPI ranks).

The network is the FF net's MLP: the same widths, Linear + ReLU layers with
the same initial weights (ff.make_linear, keyed by seed and layer index),
plus a softmax head trained with cross-entropy end to end; with --conv, the
conv net of learn/nets/conv.py (its GroupNorm normalizes each example on its
own, so the shards compute what one process computes).  Input is the
plain image (no label embedding), minibatches are drawn like the pipeline's
(one seeded permutation per epoch), and the learning rate follows the same
Adam + linear cooldown schedule.

Data parallel: every rank holds the training set (broadcast once from rank 0
as raw buffers) and the whole model.  Each minibatch of n rows is split into
p contiguous shards; rank r runs forward and backward on its shard with the
loss summed over the shard and divided by n, so the gradient sum over ranks
is exactly the minibatch-mean gradient.  The parameters' gradients are views
of one flat preallocated float32 buffer (one more slot carries the step's
loss), summed with one buffer-based Allreduce per step
(communications.GradientAllreduce); every rank then takes the same Adam step and
the replicas stay identical.  The data broadcast and model set-up happen
before the timer starts, like every schedule's set-up (attribute ``setup_seconds``).  One rank is the single-process baseline
through the same code (the Allreduce is skipped).

Time accounts, in the core's per-epoch table: ``compute`` = forward,
backward and optimizer step, ``data`` = slicing the shard, ``sync`` = the gradient Allreduce (the wait for
the slowest rank included), ``eval`` = test accuracy on rank 0.  The epoch
loop, evaluations, checkpoints and signals are loop.py's, shared with ddp,
gpipe and 1f1b.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core.config import Config
from ...core.types import Shape, TrainResult
from ...core.world import World
from ...instrument.timer import EpochTimer
from . import loop
from .communications import GradientAllreduce
from .mlp import make_model
from .trainer import Trainer


def flat_gradients(model: torch.nn.Module, device: torch.device) -> torch.Tensor:
    """One zeroed float32 buffer with room for every gradient plus one slot
    (the step's loss); each parameter's .grad becomes a view of its part, so
    backward accumulates straight into the buffer."""
    params = list(model.parameters())
    flat = torch.zeros(sum(p.numel() for p in params) + 1, device=device)
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def shard(n: int, rank: int, size: int) -> slice:
    """Rank's contiguous share of a minibatch's n rows (sizes differ by at most one)."""
    return slice(rank * n // size, (rank + 1) * n // size)


class LocalTrainer(Trainer):
    """The whole model on every rank (trainer.py's interface); with
    p > 1 the ranks' gradients are summed by one MPI Allreduce per step."""

    def __init__(self, config: Config, world: World, dims: list[int], device: torch.device, timer: EpochTimer,
                 net=None):
        super().__init__(make_model(dims, config.seed, net).to(device), config.lr, timer)
        self.rank, self.size = world.rank, world.size
        self.flat = flat_gradients(self.module, device)
        self.reducer = GradientAllreduce(world.comm, self.flat, timer)
        self.attrs = {"gradient_buffer_floats": int(self.flat.numel())}

    def rows(self, n: int) -> slice:
        return shard(n, self.rank, self.size)

    def step(self, x: torch.Tensor, y: torch.Tensor, n: int, lr: float) -> torch.Tensor:
        with self.timer("compute"):
            self.flat.zero_()
            step_loss = F.cross_entropy(self.module(x), y, reduction="sum") / n
            step_loss.backward()
            self.flat[-1] = step_loss.detach()
        self.reducer.allreduce()
        self.adam_step(lr)
        return step_loss.detach()


def train(config: Config, world: World, shape: Shape, dataset=None, on_epoch=None) -> TrainResult | None:
    """Train ``config.epochs`` epochs (loop.py); rank 0's TrainResult (None elsewhere)."""
    return loop.Loop(config, world, shape, dataset, LocalTrainer).run(on_epoch)

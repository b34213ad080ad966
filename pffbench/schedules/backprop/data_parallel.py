"""Backprop baselines in the same harness: `--variant backprop` (one process)
and `--variant dp-backprop` (data-parallel over MPI ranks).

The network is the FF net's MLP: the same widths, Linear + ReLU layers with
the same initial weights (ff.make_linear, keyed by seed and layer index),
plus a softmax head trained with cross-entropy end to end.  Input is the
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
the slowest rank included), ``eval`` = test accuracy on rank 0.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ... import ff
from ...comm import collectives, guard
from ...core import outcome
from ...core.config import Config
from ...core.types import Shape, TrainResult, batch_rows
from ...core.world import World
from ...instrument import progress
from ...instrument.timer import EpochTimer
from ...reliability import faults
from .communications import GradientAllreduce
from .mlp import MLP, accuracy


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


class Replica:
    """This rank's copy of everything: the training set, the model, its flat
    gradient buffer and optimizer."""

    def __init__(self, config: Config, world: World, shape: Shape, dataset):
        self.device = device = world.device(config.device)
        self.dims = [shape.num_features, *config.layers]
        if world.size > 1:
            x_train, y_train = collectives.share_training_data(world.comm, dataset)
        else:
            x_train, y_train = dataset.x_train, dataset.y_train
        self.x_train, self.y_train = x_train.to(device), y_train.to(device)
        self.model = MLP(self.dims, shape.num_classes, config.seed).to(device)
        self.flat = flat_gradients(self.model, device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, fused=True)


def train(config: Config, world: World, shape: Shape, dataset=None, on_epoch=None) -> TrainResult | None:
    """Train ``config.epochs`` epochs; rank 0's TrainResult (None elsewhere)."""
    setup_start = time.perf_counter()
    replica = Replica(config, world, shape, dataset)
    setup_seconds = time.perf_counter() - setup_start
    guard.barrier(world.comm, "set-up")  # set-up ends together, the timer starts (a common origin for the trace)
    timer = EpochTimer(config.epochs, trace=config.trace, device=replica.device)
    reducer = GradientAllreduce(world.comm, replica.flat, timer)
    generator = torch.Generator().manual_seed(config.seed)  # the same permutation on every rank
    sizes = batch_rows(shape.num_train, config.batch_size)
    loss = np.zeros((1, config.epochs))
    test_accuracy = np.full(config.epochs, np.nan)
    step = 0
    for epoch in range(config.epochs):
        faults.at_epoch_start(config, world.rank, epoch)
        timer.start_epoch(epoch)
        step = _epoch(config, world, replica, reducer, timer, generator, shape, sizes, epoch, step, loss)
        if outcome.evaluates(config, epoch):
            with timer("eval"):
                if world.is_first:
                    replica.model.eval()
                    test_accuracy[epoch] = accuracy(replica.model, dataset.x_test.to(replica.device),
                                                    dataset.y_test.to(replica.device))
                    replica.model.train()
                if world.size > 1:  # the others would wait in the next Allreduce: that wait is evaluation too
                    guard.barrier(world.comm, "evaluation")
        outcome.end_epoch(timer, world, on_epoch, epoch, loss, test_accuracy)
    model = replica.model
    return outcome.finish(
        world.comm, timer, config.trace, loss=loss, test_accuracy=test_accuracy,
        linears=[linear.cpu() for linear in (*model.hidden, model.head)] if world.is_first else [],
        dims=[*replica.dims, shape.num_classes], blocks=[range(len(model.hidden) + 1)] * world.size,
        attrs={"classifier": "softmax head, cross-entropy, trained end to end by backprop",
               "gradient_buffer_floats": int(replica.flat.numel()), "setup_seconds": setup_seconds})


def _epoch(config, world, replica: Replica, reducer, timer, generator, shape, sizes, epoch: int, step: int,
           loss: np.ndarray) -> int:
    """One epoch: for each minibatch, this rank's shard forward and backward,
    the gradients summed over ranks, the same Adam step everywhere."""
    device, flat, model, optimizer = replica.device, replica.flat, replica.model, replica.optimizer
    total_steps, half = config.epochs * len(sizes), len(sizes) // 2
    with timer("data"):
        order = torch.randperm(shape.num_train, generator=generator).to(device)
    epoch_loss = torch.zeros((), device=device)
    for b, n in enumerate(sizes):
        if b == half:
            faults.mid_epoch(config, world.rank, epoch)  # --inject-hang (--inject-nan is refused)
        with timer("data"):
            rows = order[b * config.batch_size:b * config.batch_size + n][shard(n, world.rank, world.size)]
            x, y = replica.x_train[rows], replica.y_train[rows]
        with timer("compute"):
            flat.zero_()
            step_loss = F.cross_entropy(model(x), y, reduction="sum") / n
            step_loss.backward()
            flat[-1] = step_loss.detach()
        reducer.allreduce()
        with timer("compute"):
            for group in optimizer.param_groups:
                group["lr"] = ff.cooldown_lr(config.lr, step, total_steps, config.cooldown)
            optimizer.step()
            epoch_loss += flat[-1]
        step += 1
        progress.tick(epoch, b + 1, len(sizes))  # a no-op but on rank 0
    with timer("compute"):
        loss[0, epoch] = epoch_loss.item() / len(sizes)
    return step

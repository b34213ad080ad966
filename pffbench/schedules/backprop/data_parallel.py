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
(transport.GradientAllreduce); every rank then takes the same Adam step and
the replicas stay identical.  The data broadcast and model set-up happen
before the first epoch's clock starts (attribute ``setup_seconds``).  One rank is the single-process baseline
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

from . import faults, ff, transport
from .config import Config
from .pff_communications import share_training_data
from .pipeline import Shape, TrainResult, batch_rows
from .timing import CATEGORIES, EpochTimer
from .world import World


class MLP(torch.nn.Module):
    """dims[0] -> dims[1] -> ... ReLU layers, then a linear softmax head."""

    def __init__(self, dims: list[int], num_classes: int, seed: int):
        super().__init__()
        self.hidden = torch.nn.ModuleList(ff.make_linear(dims[i], dims[i + 1], seed, i) for i in range(len(dims) - 1))
        self.head = ff.make_linear(dims[-1], num_classes, seed, len(dims) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for linear in self.hidden:
            x = F.relu(linear(x))
        return self.head(x)


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


@torch.no_grad()
def accuracy(model: MLP, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    correct = sum((model(x[i:i + batch_size]).argmax(dim=1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, x.shape[0], batch_size))
    return correct / x.shape[0]


def train(config: Config, world: World, shape: Shape, dataset=None, on_epoch=None) -> TrainResult | None:
    device = world.device(config.device)
    dims = [shape.num_features, *config.layers]
    setup_start = time.perf_counter()  # set-up is not timed per epoch, like the pipeline's
    if world.size > 1:
        x_train, y_train = share_training_data(world.comm, dataset)
    else:
        x_train, y_train = dataset.x_train, dataset.y_train
    x_train, y_train = x_train.to(device), y_train.to(device)
    model = MLP(dims, shape.num_classes, config.seed).to(device)
    flat = flat_gradients(model, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    setup_seconds = time.perf_counter() - setup_start
    if config.trace:
        transport.barrier(world.comm, "set-up")  # a common time origin for the trace
    timer = EpochTimer(config.epochs, trace=config.trace, device=device)
    reducer = transport.GradientAllreduce(world.comm, flat, timer)
    generator = torch.Generator().manual_seed(config.seed)  # the same permutation on every rank

    sizes = batch_rows(shape.num_train, config.batch_size)
    total_steps = config.epochs * len(sizes)
    loss = np.zeros((1, config.epochs))
    test_accuracy = np.full(config.epochs, np.nan)
    step = 0
    half = len(sizes) // 2
    for epoch in range(config.epochs):
        faults.at_epoch_start(config, world.rank, epoch)
        timer.start_epoch(epoch)
        with timer("data"):
            order = torch.randperm(shape.num_train, generator=generator).to(device)
        epoch_loss = torch.zeros((), device=device)
        for b, n in enumerate(sizes):
            if b == half:
                faults.mid_epoch(config, world.rank, epoch)  # --inject-hang (--inject-nan is refused)
            with timer("data"):
                rows = order[b * config.batch_size:b * config.batch_size + n][shard(n, world.rank, world.size)]
                x, y = x_train[rows], y_train[rows]
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
        with timer("compute"):
            loss[0, epoch] = epoch_loss.item() / len(sizes)
        last_epoch = epoch == config.epochs - 1
        if last_epoch or (config.eval_every and (epoch + 1) % config.eval_every == 0):
            with timer("eval"):
                if world.is_first:
                    model.eval()
                    test_accuracy[epoch] = accuracy(model, dataset.x_test.to(device), dataset.y_test.to(device))
                    model.train()
                if world.size > 1:  # the others would wait in the next Allreduce: that wait is evaluation too
                    transport.barrier(world.comm, "evaluation")
        timer.end_epoch()
        if world.is_first and on_epoch:
            on_epoch(epoch, loss[:, epoch], test_accuracy[epoch], timer.training_seconds(epoch))

    timing = transport.gather_rows(world.comm, timer.table())
    trace = transport.gather_events(world.comm, timer.events()) if config.trace else None
    if not world.is_first:
        return None
    linears = [linear.cpu() for linear in (*model.hidden, model.head)]
    arrays = {"trace/events": trace} if trace is not None else {}
    attrs = {"classifier": "softmax head, cross-entropy, trained end to end by backprop",
             "gradient_buffer_floats": int(flat.numel()), "setup_seconds": setup_seconds,
             **({"trace_categories": list(CATEGORIES)} if trace is not None else {})}
    return TrainResult(timing=timing, loss=loss, test_accuracy=test_accuracy, linears=linears,
                       dims=[*dims, shape.num_classes], blocks=[range(len(linears))] * world.size,
                       arrays=arrays, attrs=attrs)

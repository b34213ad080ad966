"""`--variant ddp`: data-parallel backprop with PyTorch's own
``torch.nn.parallel.DistributedDataParallel``, beside the MPI-native
``dp-backprop`` (data_parallel.py) on the same model and shards.

The model is backprop's MLP (the same widths and initial weights; with
--conv, its conv net, whose per-example GroupNorm makes a shard compute what
the whole minibatch computes); every rank holds a replica, a process group
made from the MPI world (process_group.py: gloo on the CPU, NCCL on GPUs) carries the
gradients, and each minibatch of n rows is split into the same contiguous
shards as dp-backprop's.  The loss is summed over the shard and divided by
n, and a communication hook sums the gradient buckets without DDP's usual
division by the world size, so the summed gradient is the minibatch-mean
gradient exactly as in dp-backprop (tests/test_torch_baselines_mpi.py checks
the weights agree to float32 round-off).  DDP's bucketing and its overlap of
the allreduce with the backward pass are left as they are (default 25 MB
buckets).

Time accounts per step: ``compute`` = forward, the loss and the backward pass
up to the moment the last gradient bucket is handed to the allreduce (the
hook's call), plus the optimizer step; ``sync`` = the rest of the backward
call, the wait for the allreduce that the backward pass could not hide (DDP
ends backward() only when every bucket is reduced).  An allreduce of an
earlier bucket that overlaps the backward pass is not counted apart: it is
hidden.  On a GPU (asynchronous kernels) the split is approximate.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from ...core.config import Config
from ...core.types import Shape, TrainResult
from ...core.world import World
from ...instrument.timer import EpochTimer, settler
from . import loop, process_group
from .data_parallel import shard
from .mlp import make_model
from .trainer import Trainer


def _sum_buckets(trainer, bucket):  # no annotations: DDP checks them, and this module's are strings
    """DDP communication hook: launch the bucket's (a dist.GradBucket) allreduce, a sum, and note when;
    returns the torch.futures.Future of the summed buffer."""
    trainer.launched = time.perf_counter()
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


class DDPTrainer(Trainer):
    def __init__(self, config: Config, world: World, dims: list[int], device: torch.device, timer: EpochTimer,
                 net=None):
        process_group.start(world.comm, device, config.peer_timeout)
        super().__init__(make_model(dims, config.seed, net).to(device), config.lr, timer)
        self.rank, self.size, self.device = world.rank, world.size, device
        with process_group.peer_failures(self.rank, "setting up DistributedDataParallel"):
            self.ddp = DistributedDataParallel(self.module, device_ids=[device] if device.type == "cuda" else None)
        self.ddp.register_comm_hook(self, _sum_buckets)
        self.settle = settler(device) or (lambda: None)
        self.launched = None
        self.attrs = {"process_group": "nccl" if device.type == "cuda" else "gloo",
                      "gradient_floats": sum(p.numel() for p in self.module.parameters())}

    def rows(self, n: int) -> slice:
        return shard(n, self.rank, self.size)

    def step(self, x: torch.Tensor, y: torch.Tensor, n: int, lr: float) -> torch.Tensor:
        with self.timer("compute"):
            self.optimizer.zero_grad()
        self.launched = None
        start = time.perf_counter()
        with process_group.peer_failures(self.rank, "the DDP gradient allreduce"):
            step_loss = F.cross_entropy(self.ddp(x), y, reduction="sum") / n
            step_loss.backward()
            self.settle()
        end = time.perf_counter()
        launched = min(self.launched or end, end)
        self.timer.add("compute", launched - start)
        self.timer.add("sync", end - launched)
        self.adam_step(lr)
        return step_loss.detach()

    def close(self) -> None:
        process_group.stop()


def train(config: Config, world: World, shape: Shape, dataset=None, on_epoch=None) -> TrainResult | None:
    return loop.Loop(config, world, shape, dataset, DDPTrainer).run(on_epoch)

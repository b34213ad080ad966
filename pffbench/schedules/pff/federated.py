"""Federated PFF: All-Layers on private data.

The training set is cut into K shards (K >= N; rank r holds shards r, r+N,
...), IID or with label skew.  Every rank trains every chapter, layer by
layer as in All-Layers, on its own data only; each layer it publishes is
averaged over the ranks, weighted by their numbers of examples (FedAvg), and
that average is where every rank starts the layer in the next chapter.  A
rank never receives another rank's data, only averaged weights.  The paper
describes this variant but reports no results for it.
"""
from __future__ import annotations

import torch

from ...comm import collectives
from ...core.partition import shard_rows
from .all_layers import wavefront
from .chapters import Chapters
from .communications import Averager


def train(config, world, shape, dataset=None, on_epoch=None):
    rows = None
    if world.is_first:
        shards = shard_rows(dataset.y_train, config.shards or world.size, config.partition,
                            config.classes_per_shard, config.seed)
        rows = [torch.cat(shards[r::world.size]).sort().values for r in range(world.size)]
    pff = Chapters(config, world, shape, dataset, rows_per_rank=rows)
    label_counts = collectives.gather_rows(world.comm, torch.bincount(pff.y.cpu(), minlength=shape.num_classes).numpy())
    minibatches = world.comm.gather(len(pff.batches), root=0)  # a rank's epoch is its own shard's
    exchange = Averager(world.comm, weight=pff.x.shape[0])
    return wavefront(pff, exchange, range(pff.num_chapters), on_epoch, blocks=[range(pff.num_layers)] * world.size,
                     loss_divisor=world.size, arrays={"shard_label_counts": label_counts},
                     attrs={"shards": config.shards or world.size, "partition": config.partition,
                            "minibatches_per_epoch": max(minibatches or [0]),
                            "minibatches_per_epoch_per_rank": minibatches})

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

from . import transport
from .all_layers import wavefront
from .chapters import Chapters
from .negatives import generator
from .pff_communications import Averager

PARTITIONS = ("iid", "label-skew")
SHARD_KEY = 7919  # keeps the shard draw apart from the training draws


def shard_rows(labels: torch.Tensor, shards: int, partition: str, classes_per_shard: int,
               seed: int) -> list[torch.Tensor]:
    """Row indices of each shard.  iid: a random equal split.  label-skew
    (McMahan et al.'s pathological non-IID split): cut every class into
    pieces, shards x M of them in all, and deal each shard M pieces at
    random, so a shard sees at most M classes, M = ``classes_per_shard``, or
    ceil(classes / shards) if that is more (every example is in some shard,
    so fewer shards than that cannot cover the classes).  A piece never
    straddles two classes.  Rows stay in data set order within a shard: one
    shard is exactly the data set."""
    draw = generator(seed, SHARD_KEY)
    order = torch.randperm(len(labels), generator=draw)
    if partition == "iid":
        return [rows.sort().values for rows in order.tensor_split(shards)]
    classes = labels.unique()
    per_shard = max(classes_per_shard, -(-len(classes) // shards))
    total = shards * per_shard
    pieces = []
    for i, label in enumerate(classes.tolist()):  # the pieces spread over the classes as evenly as they go
        pieces += order[labels[order] == label].tensor_split(total // len(classes) + (i < total % len(classes)))
    # deal in random order, larger pieces first, each to the smallest shard with room: shards of about equal
    # size (so that ranks do equal work), whichever classes they get
    shuffled = [pieces[i] for i in torch.randperm(total, generator=draw).tolist()]
    dealt = [[] for _ in range(shards)]
    for piece in sorted(shuffled, key=len, reverse=True):
        room = [s for s in range(shards) if len(dealt[s]) < per_shard]
        dealt[min(room, key=lambda s: sum(map(len, dealt[s])))].append(piece)
    return [torch.cat(parts).sort().values for parts in dealt]


def train(config, world, shape, dataset=None, on_epoch=None):
    rows = None
    if world.is_first:
        shards = shard_rows(dataset.y_train, config.shards or world.size, config.partition,
                            config.classes_per_shard, config.seed)
        rows = [torch.cat(shards[r::world.size]).sort().values for r in range(world.size)]
    pff = Chapters(config, world, shape, dataset, rows_per_rank=rows)
    label_counts = transport.gather_rows(world.comm, torch.bincount(pff.y.cpu(), minlength=shape.num_classes).numpy())
    minibatches = world.comm.gather(len(pff.batches), root=0)  # a rank's epoch is its own shard's
    exchange = Averager(world.comm, weight=pff.x.shape[0])
    return wavefront(pff, exchange, range(pff.num_chapters), on_epoch, blocks=[range(pff.num_layers)] * world.size,
                     loss_divisor=world.size, arrays={"shard_label_counts": label_counts},
                     attrs={"shards": config.shards or world.size, "partition": config.partition,
                            "minibatches_per_epoch": max(minibatches or [0]),
                            "minibatches_per_epoch_per_rank": minibatches})

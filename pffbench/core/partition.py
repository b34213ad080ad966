"""Partitions: layers into contiguous, compute-balanced blocks of ranks (the
pipeline), and a training set into shards (federated PFF)."""
from __future__ import annotations

from functools import lru_cache

import torch

from .seeds import generator


def layer_costs(dims: list[int] | tuple[int, ...], paired_first: bool = True) -> list[int]:
    """Work of layer i taken as proportional to its weight count (its two
    matrix products and its update all scale with it), halved for an FF
    first layer, whose positives and negatives share everything but the
    label, so its products are made once per pair (FFLayer.train_step_pairs);
    ``paired_first=False`` for layers trained without negatives.  An
    approximation: the update and the row-wise work are not halved (MNIST,
    784 x 784, batch 64: data plus pair step 0.72 of a plain step)."""
    return [dims[i] * dims[i + 1] // (2 if i == 0 and paired_first else 1) for i in range(len(dims) - 1)]


def balanced_partition(costs: list[int] | tuple[int, ...], parts: int) -> list[range]:
    """Split ``costs`` into ``parts`` non-empty contiguous blocks minimising the
    largest block sum: the slowest pipeline stage sets the pipeline's pace.

    Ties go to the split that puts less work on earlier ranks, since rank 0
    also prepares the data.
    """
    n = len(costs)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot split {n} layers into {parts} non-empty blocks")
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)

    @lru_cache(maxsize=None)
    def best(start: int, k: int) -> tuple[int, tuple[int, ...]]:
        """(largest block, cut points) for costs[start:] in k blocks."""
        if k == 1:
            return prefix[n] - prefix[start], ()
        options = []
        for cut in range(start + 1, n - k + 2):
            rest, cuts = best(cut, k - 1)
            options.append((max(prefix[cut] - prefix[start], rest), cut, cuts))
        largest, cut, cuts = min(options, key=lambda o: (o[0], o[1]))
        return largest, (cut,) + cuts

    bounds = (0,) + best(0, parts)[1] + (n,)
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


PARTITIONS = ("iid", "label-skew")
SHARD_KEY = 7919  # keeps the shard draw apart from the training draws


def stage_layers(num_hidden: int, dims: list[int], ranks: int, costs: list[int] | None = None) -> list[range]:
    """The linears (hidden layers, then the head at index ``num_hidden``) each rank holds:
    the FF pipeline's partition of the hidden layers, the head with the last block (torch pipelining's
    stages, schedules/backprop/torch_pipeline.py; the start line, launch/console.py).  ``costs``: the
    hidden layers' costs where they are not layer_costs(dims) (a conv net's, learn/nets/conv.py)."""
    blocks = balanced_partition(layer_costs(dims[:num_hidden + 1]) if costs is None else costs[:num_hidden], ranks)
    return [*blocks[:-1], range(blocks[-1].start, num_hidden + 1)]


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

"""Contiguous, compute-balanced assignment of layers to ranks."""
from __future__ import annotations

from functools import lru_cache


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

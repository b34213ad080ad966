"""Keyed random draws: a torch generator seeded by integers (seed, chapter, layer, ...), so that whichever rank
makes a draw (a chapter's negatives, a federated shard) gets the same numbers."""
from __future__ import annotations

import torch


def generator(*keys: int) -> torch.Generator:
    """A generator keyed by integers (seed, chapter, layer, ...)."""
    seed = 0
    for key in keys:
        seed = (seed * 1_000_003 + key + 7) % (2 ** 61 - 1)
    return torch.Generator().manual_seed(seed)

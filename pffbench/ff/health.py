"""Whether a trained FF net collapsed: a layer every unit of which is dead
(its ReLU output zero on every input).  Such a layer passes nothing on, its
goodness is 0 for positive and negative data alike (the FF loss pinned at
its ceiling, 2 softplus(k theta) / 2 per pair), and the net classifies at
chance; seen with ``--lr 0.01`` on narrow layers, where Adam's first steps
push every unit's pre-activation below zero for good.

Checked on rank 0 after training, on the first ``SAMPLE`` test rows with
their true labels embedded (the inputs a layer sees in training).  Pure torch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layer import embed_labels, normalize

SAMPLE = 1000


@torch.no_grad()
def dead_layers(linears, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[int]:
    """0-based indices of the layers of ``linears`` (torch.nn.Linear, in
    order) whose units are all zero on every one of the first SAMPLE rows
    of ``x`` [N, D] (labels ``y`` [N]).  The layers after a dead one see
    only zeros (their biases may still light units: they are not listed
    unless dead themselves)."""
    rows = slice(0, min(SAMPLE, x.shape[0]))
    h = normalize(embed_labels(x[rows].float(), y[rows], num_classes))
    dead = []
    for index, linear in enumerate(linears):
        weight = linear.weight
        h = F.relu(F.linear(h.to(weight.device, weight.dtype), weight, linear.bias))
        if not bool((h > 0).any()):
            dead.append(index)
        h = normalize(h)
    return dead

"""Whether a trained FF net collapsed: a layer that is silent, every unit
dead (its ReLU output zero on every input) or so nearly that the layer's
goodness stays under SILENT (1 %) of the threshold on every input.  Such a
layer calls everything negative: its goodness is ~0 for positive and negative
data alike (the FF loss pinned at its ceiling, softplus(k theta) per row: 20
per layer at the defaults), and the net classifies at chance.  Seen with
``--lr 0.01`` on narrow layers (MNIST, [784, 16, 16]: layer 0 dead after one
epoch) and with the paper presets' Adam 0.01 on [784, 2000 x 4] (loss 80.0 =
4 x 20 after two epochs, 9.80 %), where Adam's first steps push every unit's
pre-activation below zero for good.

Checked on rank 0 after training, on the first ``SAMPLE`` test rows with
their true labels embedded (the inputs a layer sees in training).  Pure torch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layer import embed_labels, normalize

SAMPLE = 1000
SILENT = 0.01  # of the goodness threshold


@torch.no_grad()
def dead_layers(linears, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                threshold: float | None = None, labels: bool = True) -> list[int]:
    """0-based indices of the layers of ``linears`` (torch.nn.Linear, in
    order) whose units are all zero on every one of the first SAMPLE rows
    of ``x`` [N, D] (labels ``y`` [N]), or, given the goodness ``threshold``
    (FF layers), whose goodness (mean squared activity) is under SILENT x
    threshold on every one of them.  The layers after a dead one see
    only zeros (their biases may still light units: they are not listed
    unless dead themselves).  ``labels=False``: the rows as they are (a
    rule with no label in its input)."""
    rows = slice(0, min(SAMPLE, x.shape[0]))
    h = normalize(embed_labels(x[rows].float(), y[rows], num_classes) if labels else x[rows].float())
    dead = []
    for index, linear in enumerate(linears):
        weight = linear.weight
        h = F.relu(F.linear(h.to(weight.device, weight.dtype), weight, linear.bias))
        silent = threshold is not None and float(h.pow(2).mean(dim=1).max()) < SILENT * threshold
        if silent or not bool((h > 0).any()):
            dead.append(index)
        h = normalize(h)
    return dead

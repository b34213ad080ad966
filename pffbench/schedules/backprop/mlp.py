"""The backprop baselines' network: the FF net's MLP (the same widths, Linear +
ReLU layers with the same initial weights, ff.make_linear keyed by seed and
layer index) plus a softmax head; or, with --conv, the conv net of
learn/nets/conv.py (``make_model``).  Pure torch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import ff
from ...learn.nets import conv


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


def make_model(dims: list[int], seed: int, net: conv.ConvNet | None = None) -> torch.nn.Module:
    """Backprop's whole network with its initial weights: the MLP of ``dims`` (input width, hidden widths,
    classes), or the conv net ``net``.  Either has ``hidden`` (its hidden layers, index order) and ``head``."""
    return MLP(dims[:-1], dims[-1], seed) if net is None else net.model(seed)


def layers_accuracy(layers: list, x: torch.Tensor, y: torch.Tensor, net: conv.ConvNet | None = None) -> float:
    """Test accuracy of the net made of ``layers`` (hidden layers, then the head): the MLP's
    (stack_accuracy), or the conv net ``net``'s."""
    return stack_accuracy(layers, x, y) if net is None else conv.accuracy(net, layers, x, y)


def accuracy(model: MLP, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    return stack_accuracy([*model.hidden, model.head], x, y, batch_size)


@torch.no_grad()
def stack_accuracy(linears: list, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    """Test accuracy of the MLP made of ``linears`` (ReLU after all but the
    last, the softmax head): a model whole on one rank, or gathered from a
    pipeline's stages."""
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        h = x[i:i + batch_size]
        for j, linear in enumerate(linears):
            h = linear(h) if j == len(linears) - 1 else F.relu(linear(h))
        correct += (h.argmax(dim=1) == y[i:i + batch_size]).sum().item()
    return correct / x.shape[0]

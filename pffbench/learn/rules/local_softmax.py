"""The local-softmax rule: the paper's Performance-Optimized rule (Aktemur et
al., "Going Forward-Forward in Distributed Deep Learning", arXiv 2404.08573).

Each layer (Linear, ReLU, RMS normalization) has its own linear softmax
auxiliary head; the two train together by backprop through those two only
(a local loss: cross-entropy of the head's logits), with one Adam.

- step: autograd; loss = cross_entropy(head(normalize(relu(W x + b))), y);
- what travels: the detached normalized activity of the step's own forward
  pass [n, width], with the labels beside it ([n, 1], as floats: exact up
  to 2**24 classes);
- classifier: every head's log-probabilities summed (their probabilities
  multiplied; the last head's alone is reported too: ff/heads.py);
- negatives: none; the first layer's input carries the neutral label
  (every label slot 1/C), as in the paper.

The Performance-Optimized variant (--variant perf-opt, All-Layers) trains
the same layers (ff/heads.py: PerfOptLayer, built by ``make_layer``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import ff
from ...ff import heads

NEEDS_NEGATIVES = False
HEAD_SEED_OFFSET = 1000  # head l's initial weights are keyed like a layer 1000 + l


def input_width(num_features: int) -> int:
    return num_features


def message_rows(n: int) -> int:
    return n


def make_layer(index: int, dims: list[int], num_classes: int, config, device) -> heads.PerfOptLayer:
    linear = ff.make_linear(dims[index], dims[index + 1], config.seed, index).to(device)
    head = ff.make_linear(dims[index + 1], num_classes, config.seed, HEAD_SEED_OFFSET + index).to(device)
    return heads.PerfOptLayer(linear, head, config.lr)


def step(layer: heads.PerfOptLayer, x: torch.Tensor, side: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step of the layer and its head on ``x`` [n, width_in] with
    labels ``side`` [n, 1] (floats).  The same operations as
    PerfOptLayer.train_step, which returns the loss only; here the forward
    pass's activity is kept: what the next layer trains on, no second pass."""
    h = layer.forward(x)
    loss = F.cross_entropy(layer.head(h), side[:, 0].long())
    layer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    layer.optimizer.step()
    return h.detach(), loss.detach()


class Source:
    """The first layer's minibatches: a fresh permutation per epoch from one
    seeded generator; rows normalized with the neutral label, once per run."""

    def __init__(self, dataset, config, device, sizes: list[int]):
        self.x = ff.normalize(ff.embed_labels(dataset.x_train, None, dataset.num_classes)).to(device)
        self.y = dataset.y_train.to(device)
        self.sizes, self.starts = sizes, [sum(sizes[:b]) for b in range(len(sizes))]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.order = None

    def start_epoch(self) -> None:
        self.order = torch.randperm(self.y.shape[0], generator=self.generator).to(self.y.device)

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.order[self.starts[index]:self.starts[index] + self.sizes[index]]
        return self.x[rows], self.y[rows].to(self.x.dtype).unsqueeze(1)


def health(config) -> tuple[None, None]:
    """The collapse check: no goodness (its heads classify), dead units only, on rows with their label embedded."""
    return None, None


def accuracy(linears, head_linears, dataset, config, device) -> float:
    """The all-heads test accuracy of layers rebuilt from ``linears`` and ``head_linears``."""
    layers = [heads.PerfOptLayer(l.to(device), h.to(device), config.lr) for l, h in zip(linears, head_linears, strict=True)]
    return heads.perf_opt_accuracy(layers, dataset.x_test.to(device), dataset.y_test.to(device),
                                   dataset.num_classes)[1]

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

On a conv net (--conv, learn/nets/conv.py; the pipeline so far) it is DGL's
greedy rule (Belilovsky, Eickenberg, Oyallon, "Decoupled Greedy Learning of
CNNs", ICML 2020): each block trains with its own auxiliary head (adaptive
average pooling to a small grid, flattened, a linear softmax) by backprop
through those two only (``make_conv_layer``: a BlockLayer); the block's
output [n, C, H, W] travels as it is (its GroupNorm has normalized it),
flattened into the message's rows; dense layers after the blocks are
PerfOptLayers on the flattened activity (DenseLayer).  The first block sees
the image's rows as they are: no label slots, no normalization
(ConvSource).  The classifier is the same: every head's log-probabilities
summed (``conv_accuracy``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import ff
from ...ff import heads
from .. import augment
from ..nets import conv
from ...core import optim

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
    seeded generator; rows normalized with the neutral label, once per run.

    With --augment (learn/augment.py) every row of the epoch also gets its
    crop offset and flip at the epoch's start, drawn after the permutation
    from the same generator (so a checkpoint at an epoch boundary holds them
    too); the images are kept as they are and each minibatch is augmented,
    then made what the first layer sees (``first_rows``: a function of each
    row alone, so the same rows as once per run where nothing is augmented)."""

    def __init__(self, dataset, config, device, sizes: list[int]):
        self.num_classes = dataset.num_classes
        self.image = augment.image_shape_of(dataset) if config.augment else None  # (C, H, W)
        x = dataset.x_train
        self.x = (x if self.image else self.first_rows(x, self.num_classes)).to(device)
        self.y = dataset.y_train.to(device)
        self.sizes, self.starts = sizes, [sum(sizes[:b]) for b in range(len(sizes))]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.order = self.draws = None

    @staticmethod
    def first_rows(x: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Training rows [n, d] as the first layer sees them: the neutral label embedded, RMS-normalized."""
        return ff.normalize(ff.embed_labels(x, None, num_classes))

    def start_epoch(self) -> None:
        self.order = torch.randperm(self.y.shape[0], generator=self.generator).to(self.y.device)
        if self.image:  # by position in the epoch's order; nothing drawn without --augment
            self.draws = augment.draw(self.y.shape[0], self.generator).to(self.y.device)

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = slice(self.starts[index], self.starts[index] + self.sizes[index])
        rows = self.order[batch]
        x = self.x[rows]
        if self.image:
            x = self.first_rows(augment.augment_rows(x, self.image, self.draws[batch]), self.num_classes)
        return x, self.y[rows].to(x.dtype).unsqueeze(1)


# --- conv nets (--conv) ---------------------------------------------------------------------------------------

class BlockLayer:
    """A conv block (conv.ConvBlock) and its auxiliary head (conv.AuxiliaryHead), trained together by backprop
    through those two only, with one Adam: PerfOptLayer's form for a block.  ``forward``: the block's output
    [n, C, H', W'] of its input (images, or their flattened rows)."""

    def __init__(self, block: conv.ConvBlock, head: torch.nn.Module, lr: float):
        self.block, self.head = block, head
        self.optimizer = optim.adam(self.parameters(), lr)

    def parameters(self) -> list[torch.Tensor]:
        return [*self.block.parameters(), *self.head.parameters()]

    def set_lr(self, lr: float) -> None:
        optim.set_lr(self.optimizer, lr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DenseLayer(heads.PerfOptLayer):
    """A dense layer after a conv net's blocks: a PerfOptLayer on its input's rows flattened ([n, C, H, W]
    -> [n, C*H*W]; a flat input is used as it is)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))


def make_conv_layer(index: int, net: conv.ConvNet, config, device) -> BlockLayer | DenseLayer:
    """Hidden layer ``index`` of the conv net ``net`` with its auxiliary head: its module keyed by
    (seed, index) (ConvNet.make_layer), its head by (seed, HEAD_SEED_OFFSET + index), as make_layer keys
    an MLP's, so every partition starts alike."""
    module = net.make_layer(index, config.seed).to(device)
    head = net.auxiliary_head(index, config.seed, HEAD_SEED_OFFSET + index).to(device)
    return BlockLayer(module, head, config.lr) if index < net.num_blocks else DenseLayer(module, head, config.lr)


def conv_costs(net: conv.ConvNet) -> list[int]:
    """Forward FLOPs of one row in each hidden layer with its auxiliary head (ConvNet.costs): what the
    pipeline's partition balances."""
    return net.costs(auxiliary=True)[:net.num_layers]


class ConvSource(Source):
    """The first block's minibatches, drawn (and with --augment augmented) as Source draws them: the images'
    rows [n, C*H*W] as the data set has them (no label slots, no normalization: the block's GroupNorm follows
    its convolution)."""

    @staticmethod
    def first_rows(x: torch.Tensor, num_classes: int) -> torch.Tensor:
        return x


@torch.no_grad()
def conv_accuracy(modules, head_modules, net: conv.ConvNet, x: torch.Tensor, y: torch.Tensor, config, device,
                  batch_size: int = conv.EVAL_ROWS) -> float:
    """The all-heads accuracy (every head's log-probabilities summed, as ``accuracy``) on test rows ``x``
    [n, C*H*W] with labels ``y`` [n] of the conv net ``net`` rebuilt from its hidden layers' ``modules``
    (blocks, dense Linears) and auxiliary ``head_modules``."""
    layers = [BlockLayer(m.to(device), h.to(device), config.lr) if i < net.num_blocks else
              DenseLayer(m.to(device), h.to(device), config.lr)
              for i, (m, h) in enumerate(zip(modules, head_modules, strict=True))]
    x, y = x.to(device), y.to(device)
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        h, summed = x[start:start + batch_size], 0
        for layer in layers:
            h = layer.forward(h)
            summed = summed + F.log_softmax(layer.head(h), dim=1)
        correct += (summed.argmax(1) == y[start:start + batch_size]).sum().item()
    return correct / x.shape[0]


def health(config) -> tuple[None, None]:
    """The collapse check: no goodness (its heads classify), dead units only, on rows with their label embedded."""
    return None, None


def accuracy(linears, head_linears, dataset, config, device) -> float:
    """The all-heads test accuracy of layers rebuilt from ``linears`` and ``head_linears``."""
    layers = [heads.PerfOptLayer(l.to(device), h.to(device), config.lr) for l, h in zip(linears, head_linears, strict=True)]
    return heads.perf_opt_accuracy(layers, dataset.x_test.to(device), dataset.y_test.to(device),
                                   dataset.num_classes)[1]

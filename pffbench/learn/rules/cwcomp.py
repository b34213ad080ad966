"""The cwcomp rule: channel-wise competitive Forward-Forward for conv blocks
(Papachristodoulou, Kyrkou, Timotheou, Theocharides, "Convolutional
Channel-wise Competitive Learning for the Forward-Forward Algorithm", AAAI
2024; arXiv 2312.12668; the authors' code github.com/andreaspapac/CwComp,
src/Layer_cnn.py: ``goodness_factorCW`` and the ``CwC_CE`` criterion).

No negative data and no label in the input: block l's C output channels are
split into K contiguous groups of S = C / K channels, one per class (the
authors' ``torch.split(y, C // K, dim=1)``), and the goodness of class k is
the mean square of its group's activity over its channels and pixels:

    G[n, k] = 1 / (S H W) * sum_{c in group k, h, w} y[n, c, h, w]^2

The local loss is the CwC loss: the cross-entropy of the softmax over the
classes' goodness (the goodness are the logits), so the true class's channels
are pushed to fire and the others' to stay quiet, all of them competing
for the example:

    L = mean_n [ -G[n, y_n] + log sum_k exp G[n, k] ]

- step: autograd through the block alone (its loss needs no head), one
  Adam per block;
- what travels: the block's detached output [n, C, H', W'] (its GroupNorm
  has normalized it), as the message's contiguous rows, with the labels
  beside it ([n, 1] as floats, as local-softmax's travel);
- classifier: the last block's goodness argmax (the paper's "global
  averaging" predictor: every block is a classifier, no extra head);
  ``conv_accuracies`` also gives every block's log-softmax of its goodness
  summed (``all blocks``);
- negatives: none.

pffbench's choices where the paper's net differs: the blocks are --conv's
(3x3 convolution, GroupNorm, ReLU, 2x2 max pooling between blocks:
learn/nets/conv.py), not the paper's CFSE blocks (a standard convolution
beside a grouped one, per class group) with BatchNorm after the pooling;
the goodness is taken on the block's output, after its pooling (what the
next block sees).  Conv blocks only: launch/validate.py refuses the rule
without --conv, with --layers dense layers after the blocks, and with
block channels that are not multiples of the classes.  The first block
sees the images as they are (local_softmax.ConvSource, which also augments
under --augment).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nets import conv
from .local_softmax import ConvSource  # noqa: F401  (the images as they are, labels beside them)
from ...core import optim

NEEDS_NEGATIVES = False
GOODNESS_FLOPS = 2  # per output element: its square and its share of the group's sum (the partition's cost)
CONV_ONLY = "cwcomp trains convolutional blocks only (--conv): launch/validate.py refuses it elsewhere"


def input_width(num_features: int) -> int:
    return num_features


def message_rows(n: int) -> int:
    return n


def goodness(h: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each class's goodness [n, K] of a block's output ``h`` [n, C, H, W] (C a multiple of K): the mean
    square of class k's S = C / K contiguous channels over those channels and every pixel (the module
    docstring's G; the authors' ``goodness_factorCW``)."""
    return h.reshape(h.shape[0], num_classes, -1).pow(2).mean(2)


class CwCompLayer:
    """A conv block (conv.ConvBlock) trained on its own CwC loss, with one Adam: no head (the goodness of its
    class groups are its logits).  ``forward``: the block's output [n, C, H', W'] of its input (images, or
    their flattened rows)."""

    def __init__(self, block: conv.ConvBlock, num_classes: int, lr: float):
        channels = block.conv.out_channels
        if channels % num_classes:  # launch/validate.py says so first, in one line
            raise ValueError(f"cwcomp: {channels} channels do not split into {num_classes} class groups")
        self.block, self.num_classes = block, num_classes
        self.optimizer = optim.adam(self.parameters(), lr)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.block.parameters())

    def set_lr(self, lr: float) -> None:
        optim.set_lr(self.optimizer, lr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)

    def loss(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The CwC loss (0-d) of the block's output ``h`` [n, C, H, W] for ``labels`` [n] (int64)."""
        return F.cross_entropy(goodness(h, self.num_classes), labels)


def make_conv_layer(index: int, net: conv.ConvNet, config, device) -> CwCompLayer:
    """Block ``index`` of the conv net ``net``, keyed by (seed, index) (ConvNet.make_layer) as every rule's
    layers are, so every partition starts alike.  Blocks only: a dense layer has no channels to group."""
    if index >= net.num_blocks:
        raise ValueError(f"cwcomp: layer {index} is a dense layer; {CONV_ONLY}")
    return CwCompLayer(net.make_layer(index, config.seed).to(device), net.num_classes, config.lr)


def conv_costs(net: conv.ConvNet) -> list[int]:
    """Forward FLOPs of one row in each block with its loss (ConvNet.costs, plus GOODNESS_FLOPS per output
    element): what the pipeline's partition balances."""
    shapes = net.shapes()
    return [cost + GOODNESS_FLOPS * (shapes[i + 1][0] * shapes[i + 1][1] * shapes[i + 1][2])
            for i, cost in enumerate(net.costs()[:net.num_blocks])]


def step(layer: CwCompLayer, x: torch.Tensor, side: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step of the block on ``x`` (images [n, C_in, H, W] or their rows) with labels ``side`` [n, 1]
    (floats): autograd of the CwC loss through this block alone (its input is a detached message).  Returns
    the step's own forward output [n, C, H', W'], detached (what the next block trains on), and the loss."""
    h = layer.forward(x)
    loss = layer.loss(h, side[:, 0].long())
    layer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    layer.optimizer.step()
    return h.detach(), loss.detach()


@torch.no_grad()
def conv_accuracies(modules, net: conv.ConvNet, x: torch.Tensor, y: torch.Tensor, device,
                    batch_size: int = conv.EVAL_ROWS) -> tuple[float, float]:
    """Accuracies of the blocks ``modules`` (ConvBlocks, first to last) on test rows ``x`` [n, C*H*W] with
    labels ``y`` [n]: (the last block's goodness argmax, every block's log-softmax of its goodness summed)."""
    x, y = x.to(device), y.to(device)
    last = summed_right = 0
    for start in range(0, x.shape[0], batch_size):
        h, summed, labels = x[start:start + batch_size], 0, y[start:start + batch_size]
        for module in modules:
            h = module.to(device)(h)
            scores = goodness(h, net.num_classes)
            summed = summed + F.log_softmax(scores, dim=1)
        last += (scores.argmax(1) == labels).sum().item()
        summed_right += (summed.argmax(1) == labels).sum().item()
    return last / x.shape[0], summed_right / x.shape[0]


def conv_accuracy(modules, head_modules, net: conv.ConvNet, x: torch.Tensor, y: torch.Tensor, config,
                  device) -> float:
    """The run's test accuracy on rows ``x`` [n, C*H*W], labels ``y`` [n]: the last block's goodness argmax
    (no heads: ``head_modules`` is None)."""
    return conv_accuracies(modules, net, x, y, device)[0]


def health(config) -> tuple[None, None]:
    """The collapse check: no threshold (its goodness compete, none is held to a level); conv runs skip it."""
    return None, None


def make_layer(index: int, dims: list[int], num_classes: int, config, device):
    """An MLP layer: none (launch/validate.py refuses --objective cwcomp without --conv first)."""
    raise ValueError(CONV_ONLY)


def accuracy(linears, heads, dataset, config, device) -> float:
    """An MLP's accuracy: none (see ``make_layer``)."""
    raise ValueError(CONV_ONLY)

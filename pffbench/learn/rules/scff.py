"""The scff rule: Self-Contrastive Forward-Forward (Chen, Liu, Laydevant,
Grollier, "Self-Contrastive Forward-Forward algorithm", Nature
Communications 16, 5978 (2025); arXiv 2409.11593).

No label enters the net.  A positive is an example side by side with
itself, [x_k, x_k]; a negative is the example beside another one drawn at
random from the training set, [x_k, x_m] with m != k (the paper's
self-contrastive pairs: a negative lies between two clusters of
positives).  The first layer is therefore 2d wide; deeper layers see the
previous layer's activity for the positive and for the negative input.

- step: Forward-Forward's goodness loss on the (positive; negative) rows:
  ff/layer.py's FFLayer.train_step, whose hand-written gradient is tested
  against autograd (tests/unit/test_ff.py); the loss is the paper's
  sigmoid (softplus) loss on goodness minus a threshold;
- what travels: the normalized activity of both, [2n, width];
- classifier: a linear read-out (a softmax head) on the normalized
  activities of every layer for the positive input [x, x], trained at each
  evaluation from zero by Adam (--softmax-lr, the cooldown of the
  schedule's lr) over one epoch of the training set, seeded; its training
  is counted as evaluation time, as the paper trains its read-out after
  the layers;
- negatives: its own (above), not the caller's wrong labels.

pffbench's choices where the paper's MLP differs: goodness is FF's mean
squared activity with --threshold and --sharpness; inputs and activities
are RMS-normalized (as every pffbench rule); one read-out epoch per
evaluation rather than a read-out trained to convergence, so the accuracy
reported is a lower bound of the paper's protocol.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import ff
from ...ff import heads
# the ff rule's goodness layer, its step and its [2n, width] messages: SCFF differs only in what it feeds them
from .ff import make_layer, message_rows, step  # noqa: F401

NEEDS_NEGATIVES = False  # it makes its own


def input_width(num_features: int) -> int:
    return 2 * num_features


def pairs(x: torch.Tensor, rows: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
    """The first layer's normalized (positive; negative) rows [2n, 2d] of
    examples ``rows`` (n) of ``x`` [N, d]: [x_k, x_k], then [x_k, x_partner]."""
    own = x[rows]
    return ff.normalize(torch.cat((torch.cat((own, own), dim=1), torch.cat((own, x[partners]), dim=1))))


def draw_partners(count: int, generator: torch.Generator) -> torch.Tensor:
    """For each of ``count`` examples, another example's index (never itself): uniform over the others."""
    return (torch.arange(count) + torch.randint(1, count, (count,), generator=generator)) % count


class Source:
    """The first layer's minibatches: per epoch, a permutation and every
    example's partner, from one seeded generator (so a checkpoint at an
    epoch boundary holds the whole random state)."""

    def __init__(self, dataset, config, device, sizes: list[int]):
        self.x = dataset.x_train.to(device)
        self.sizes, self.starts = sizes, [sum(sizes[:b]) for b in range(len(sizes))]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.order = self.partners = None

    def start_epoch(self) -> None:
        self.order = torch.randperm(self.x.shape[0], generator=self.generator).to(self.x.device)
        self.partners = draw_partners(self.x.shape[0], self.generator).to(self.x.device)

    def batch(self, index: int) -> tuple[torch.Tensor, None]:
        rows = self.order[self.starts[index]:self.starts[index] + self.sizes[index]]
        return pairs(self.x, rows, self.partners[rows]), None


def positive(x: torch.Tensor) -> torch.Tensor:
    """The positive input of raw rows ``x`` [n, d]: each beside itself, [n, 2d] (not normalized)."""
    return torch.cat((x, x), dim=1)


def health(config):
    """The collapse check: goodness against --threshold, on the positive [x, x] (no label)."""
    return config.threshold, positive


@torch.no_grad()
def features(linears, x: torch.Tensor) -> torch.Tensor:
    """The read-out's input for raw rows ``x`` [n, d]: every layer's
    normalized activity for the positive [x, x], side by side [n, sum widths]."""
    h, parts = ff.normalize(positive(x)), []
    for linear in linears:
        h = ff.normalize(F.relu(linear(h)))
        parts.append(h)
    return torch.cat(parts, dim=1)


def train_readout(linears, x: torch.Tensor, y: torch.Tensor, num_classes: int, lr: float, batch_size: int,
                  seed: int) -> heads.SoftmaxHead:
    """A linear softmax head on ``features``, from zero, one epoch of Adam at ``lr`` with a linear cooldown."""
    width = sum(linear.out_features for linear in linears)
    head = heads.SoftmaxHead(heads.zero_linear(width, num_classes).to(x.device), lr)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed)).to(x.device)
    total = (x.shape[0] + batch_size - 1) // batch_size
    for b, start in enumerate(range(0, x.shape[0], batch_size)):
        rows = order[start:start + batch_size]
        head.set_lr(ff.cooldown_lr(lr, b, total))
        head.train_step(features(linears, x[rows]), y[rows])
    return head


@torch.no_grad()
def readout_accuracy(linears, head: heads.SoftmaxHead, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int = 1000) -> float:
    right = sum((head.logits(features(linears, x[i:i + batch_size])).argmax(1) == y[i:i + batch_size]).sum().item()
                for i in range(0, x.shape[0], batch_size))
    return right / x.shape[0]


def accuracy(linears, heads_, dataset, config, device) -> float:
    linears = [l.to(device) for l in linears]
    head = train_readout(linears, dataset.x_train.to(device), dataset.y_train.to(device), dataset.num_classes,
                         config.softmax_lr, config.batch_size, config.seed)
    return readout_accuracy(linears, head, dataset.x_test.to(device), dataset.y_test.to(device))

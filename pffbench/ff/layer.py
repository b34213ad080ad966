"""Forward-Forward math in pure torch: no MPI, no I/O.

A layer sees the normalized, label-embedded image (or the previous layer's
normalized activity) and learns to give positive data high goodness and
negative data low goodness.  Schedules decide only *where* and *when* these
functions run.

Positive and negative examples of a minibatch travel together as one tensor
``x`` of shape [2n, d]: rows [:n] positive, rows [n:] negative.  One tensor
means one matmul per layer and one message per hop.  The first layer's are a
PairBatch instead (pffbench/ff/inputs.py): the same n normalized rows under
two labels, which its step multiplies once for both.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from ..core import optim

if TYPE_CHECKING:
    from .inputs import PairBatch


def embed_labels(x: torch.Tensor, labels: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    """Copy of ``x`` whose first ``num_classes`` values hold the one-hot label.

    ``labels=None`` gives the neutral label (every slot 1/num_classes).
    """
    out = x.clone()
    if labels is None:
        out[:, :num_classes] = 1.0 / num_classes
    else:
        out[:, :num_classes] = F.one_hot(labels, num_classes).to(out.dtype)
    return out


NORMS = ("rms", "length")


def input_scale(norm: str, in_features: int) -> float:
    """How much smaller a layer's input is under ``norm`` than under RMS
    normalization: 1 for ``rms``, 1 / sqrt(in_features) for ``length`` (a
    unit-length row of d values has RMS 1 / sqrt(d)).  Hinton's paper
    ("normalize the length of the hidden vector") and pytorch_forward_forward
    (``x / (x.norm(2) + 1e-4)``, every layer) normalize to unit length."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return 1.0 if norm == "rms" else in_features ** -0.5


def normalize(h: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """RMS (length) normalization: hides the previous layer's goodness so the
    next layer must find new features instead of re-reading the old length."""
    return h / (h.pow(2).mean(dim=1, keepdim=True).sqrt() + eps)


def goodness(h: torch.Tensor) -> torch.Tensor:
    """Mean squared activity per unit: width-independent, so one threshold
    serves every layer size (the sum-of-squares goodness is this x width)."""
    return h.pow(2).mean(dim=1)


def ff_loss(g: torch.Tensor, num_positive: int, threshold: float, sharpness: float) -> torch.Tensor:
    """Logistic loss pushing positive goodness above the threshold and negative
    goodness below it: softplus(k(theta - g+)) + softplus(k(g- - theta))."""
    sign = torch.ones_like(g)
    sign[num_positive:] = -1.0
    return 2.0 * F.softplus(sharpness * sign * (threshold - g)).mean()


def make_linear(in_features: int, out_features: int, seed: int, layer_index: int,
                scale: float = 1.0) -> torch.nn.Linear:
    """Initial weights depend only on (seed, layer index), never on which rank
    builds the layer, so every partition of the net starts from one state:
    uniform in +-scale / sqrt(in_features), biases zero.  ``scale`` is the
    FF layer's input_scale (FFLayer: a unit-length input's weights)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + layer_index)
    linear = torch.nn.Linear(in_features, out_features)
    bound = scale * in_features ** -0.5
    with torch.no_grad():
        linear.weight.uniform_(-bound, bound, generator=generator)
        linear.bias.zero_()
    return linear


class FFLayer:
    """One Linear+ReLU layer with its own Adam optimizer and local FF loss.

    ``input_scale`` s (input_scale(): 1 for RMS-normalized inputs, 1/sqrt(d_in)
    for unit-length ones) trains the layer as if its input were s times the
    RMS-normalized one it is given: a layer W on s x equals the layer W' = s W
    on x, and since Adam's step does not depend on the gradient's scale (its
    epsilon aside), Adam at ``lr`` on W is Adam at s * lr (epsilon / s) on W'.
    So the weights pffbench keeps, publishes and evaluates stay those of RMS
    inputs (every activity, goodness and message is unchanged); only the
    weights' step (and their initial size: make_linear's ``scale``) shrink.
    The biases' step is ``lr`` either way.  With s = 1 this is the plain layer.
    """

    def __init__(self, linear: torch.nn.Linear, lr: float, threshold: float, sharpness: float,
                 input_scale: float = 1.0):
        self.linear = linear
        self.threshold = threshold
        self.sharpness = sharpness
        if input_scale == 1.0:
            self.optimizer = optim.adam(linear.parameters(), lr)
        else:
            eps = self._ADAM_EPS
            self.optimizer = optim.adam(
                [{"params": [linear.weight], "lr": lr * input_scale, "eps": eps / input_scale,
                  "lr_scale": input_scale},
                 {"params": [linear.bias], "lr": lr, "eps": eps, "lr_scale": 1.0}], lr)

    _ADAM_EPS = 1e-8  # torch.optim.Adam's default

    def set_lr(self, lr: float) -> None:
        optim.set_lr(self.optimizer, lr)

    @torch.no_grad()
    def train_step(self, x: torch.Tensor, num_positive: int, out: torch.Tensor | None = None,
                   normalize: bool = True, norm_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a stacked (positive; negative) normalized batch.

        Returns the normalized activity of this step's own forward pass (i.e.
        *before* the update, which is what makes the pipeline and the
        sequential schedule compute exactly the same thing), written into
        ``out`` if given (e.g. a buffer the next rank reads), and the loss as
        a 0-d tensor, so no device sync happens here.  With ``normalize=False``
        the activity is returned as it is (a pass less where nobody reads it,
        or where the next rank normalizes it: the first rank also makes the
        data), its row norms written to ``norm_out`` (rows x 1) if given.

        The gradient is written out by hand: with L = 2 mean softplus(z),
        z = k s (theta - g), g = mean(h^2), s = +1/-1 for positive/negative,
        dL/dh = -(4k / (rows * width)) s sigmoid(z) h, which is already zero
        where the ReLU is off.  Two matmuls and a few row-wise ops, none of
        autograd's bookkeeping (see test_manual_gradient_matches_autograd).
        """
        weight, bias = self.linear.weight, self.linear.bias
        h = (torch.addmm(bias, x, weight.t()) if normalize or out is None
             else torch.addmm(bias, x, weight.t(), out=out)).clamp_(min=0)
        g, loss, grad_h = self._goodness_loss_and_gradient(h, num_positive)
        torch.mm(grad_h.t(), x, out=weight.grad)
        torch.sum(grad_h, dim=0, out=bias.grad)
        self.optimizer.step()
        return self._activity(h, g, out, normalize, norm_out), loss

    @torch.no_grad()
    def train_step_pairs(self, pairs: PairBatch, out: torch.Tensor | None = None, normalize: bool = True,
                         norm_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """train_step(pairs.stacked(), n, ...) at half the matmul work: a
        positive and its negative differ only in the label slots, so
        W x = W body + W slots, and the body's product is made once for both;
        the weight gradient likewise sums the pair's activity gradients before
        one product with the body.  The body's label slots must be zero (as
        FirstLayerInputs makes them): both products rely on it.  Equal to
        train_step up to float32 rounding (test_pair_step_matches_the_plain_step)."""
        weight, bias = self.linear.weight, self.linear.bias
        body, slots = pairs.body, pairs.label_slots
        n, classes = body.shape[0], slots.shape[1]
        h = out if out is not None and not normalize else weight.new_empty((2 * n, weight.shape[0]))
        torch.mm(slots, weight[:, :classes].t(), out=h)
        h.view(2, n, -1).add_(torch.addmm(bias, body, weight.t())).clamp_(min=0)
        g, loss, grad_h = self._goodness_loss_and_gradient(h, n)
        torch.mm(grad_h.view(2, n, -1).sum(dim=0).t(), body, out=weight.grad)
        # the body's label slots are zero, so were these columns; the [classes, width] product is contiguous
        # (adding into the strided columns directly cost ~0.1 ms more per step, 784 x 784)
        weight.grad[:, :classes].add_(torch.mm(slots.t(), grad_h).t())
        torch.sum(grad_h, dim=0, out=bias.grad)
        self.optimizer.step()
        return self._activity(h, g, out, normalize, norm_out), loss

    def _goodness_loss_and_gradient(self, h: torch.Tensor, num_positive: int):
        """(goodness per row, loss, dL/dh) of activity ``h``; makes sure the
        parameters have gradient buffers to write into."""
        rows, width = h.shape
        sign = torch.ones(rows, device=h.device)
        sign[num_positive:] = -1.0
        g = goodness(h)
        z = self.sharpness * sign * (self.threshold - g)
        loss = 2.0 * F.softplus(z).mean()
        grad_h = h * ((-4.0 * self.sharpness / (rows * width)) * sign * torch.sigmoid(z)).unsqueeze(1)
        weight, bias = self.linear.weight, self.linear.bias
        if weight.grad is None:  # kept between steps: a fresh 4 MB gradient per step costs page faults
            weight.grad, bias.grad = torch.empty_like(weight), torch.empty_like(bias)
        return g, loss, grad_h

    @staticmethod
    def _activity(h: torch.Tensor, g: torch.Tensor, out, normalize: bool, norm_out) -> torch.Tensor:
        if not normalize:
            if norm_out is not None:
                torch.sqrt(g, out=norm_out[:, 0]).add_(1e-8)
            return h
        norm = g.sqrt_().add_(1e-8).unsqueeze(1)  # = normalize(h): g is its mean square
        return h.div_(norm) if out is None else torch.div(h, norm, out=out)


def cooldown_lr(base_lr: float, step: int, total_steps: int, start_fraction: float = 0.5) -> float:
    """Constant, then linear decay to zero over the last part of training (the
    paper's cooldown after epoch 50 of 100)."""
    start = int(total_steps * start_fraction)
    if step < start:
        return base_lr
    return base_lr * (total_steps - step) / max(1, total_steps - start)


@torch.no_grad()
def label_goodness(linears, x: torch.Tensor, num_classes: int, score_layers) -> torch.Tensor:
    """Goodness summed over ``score_layers`` for every candidate label: [N, num_classes]."""
    scores = torch.zeros(x.shape[0], num_classes, device=x.device)
    for label in range(num_classes):
        labels = torch.full((x.shape[0],), label, device=x.device)
        h = normalize(embed_labels(x, labels, num_classes))
        for index, linear in enumerate(linears):
            a = F.relu(linear(h))
            if index in score_layers:
                scores[:, label] += goodness(a)
            h = normalize(a)
    return scores


@torch.no_grad()
def predict(linears, x: torch.Tensor, num_classes: int, score_layers, batch_size: int = 1000) -> torch.Tensor:
    """Goodness classification: argmax over labels of the summed goodness."""
    return torch.cat([
        label_goodness(linears, x[i:i + batch_size], num_classes, score_layers).argmax(dim=1)
        for i in range(0, x.shape[0], batch_size)
    ])


def accuracy(linears, x: torch.Tensor, y: torch.Tensor, num_classes: int, score_layers) -> float:
    return (predict(linears, x, num_classes, score_layers) == y).float().mean().item()


def default_score_layers(num_layers: int) -> tuple[int, ...]:
    """Every layer.  Hinton (and the paper) leave out the first layer, which
    sees the label itself; on MNIST both choices score within 0.2 points,
    and on data the first layer already separates, the deeper layers alone
    can score below chance, so the core counts them all."""
    return tuple(range(num_layers))

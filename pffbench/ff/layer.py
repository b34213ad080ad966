"""Forward-Forward math in pure torch: no MPI, no I/O.

A layer sees the normalized, label-embedded image (or the previous layer's
normalized activity) and learns to give positive data high goodness and
negative data low goodness.  Schedules decide only *where* and *when* these
functions run.

Positive and negative examples of a minibatch travel together as one tensor
``x`` of shape [2n, d]: rows [:n] positive, rows [n:] negative.  One tensor
means one matmul per layer and one message per hop.  The first layer's are a
PairBatch instead: the same n normalized rows under two labels, which its
step multiplies once for both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def random_wrong_labels(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from the true one, per example."""
    offset = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels + offset.to(labels.device)) % num_classes


class FirstLayerInputs:
    """The first layer's normalized (positive; negative) minibatches, which
    rank 0 makes on the pipeline's critical path, so they must cost little
    more than copying their rows.

    A one-hot label adds exactly 1 to a row's sum of squares whichever label it
    is, so a row has one RMS under every label: each row is normalized once,
    with its label slots empty, and a minibatch carries 1/RMS in the slot of
    its positive's and of its negative's label (PairBatch).  The values are
    those of normalize(embed_labels(x, label)) up to float32 rounding."""

    def __init__(self, x: torch.Tensor, num_classes: int, eps: float = 1e-8):
        body = x.clone()
        body[:, :num_classes] = 0.0
        rms = ((body.double().pow(2).sum(dim=1) + 1.0) / x.shape[1]).sqrt()
        self.scale = (1.0 / (rms + eps)).to(x.dtype)
        self.num_classes = num_classes
        self.normalized = body.mul_(self.scale.unsqueeze(1))

    def epoch(self, order: torch.Tensor, labels: torch.Tensor, wrong: torch.Tensor, sizes: list[int],
              chunk_bytes: int = 4 << 20) -> "EpochInputs":
        """The minibatches of one pass over ``order`` (rows of x, with their
        true and wrong labels), split into ``sizes``."""
        return EpochInputs(self, order, labels, wrong, sizes, chunk_bytes)


@dataclass
class PairBatch:
    """A first-layer minibatch: n positives and their n negatives, which
    differ only in the label slots.  Positive i is ``body[i]`` with
    ``label_slots[i]`` in its first C values, negative i is ``body[i]`` with
    ``label_slots[n + i]``.  Kept that way, a minibatch is half the rows to
    gather, and a layer step multiplies the body once for both
    (FFLayer.train_step_pairs)."""
    body: torch.Tensor         # [n, d], normalized, its label slots zero
    label_slots: torch.Tensor  # [2n, C]: the row's 1/RMS in its label's slot, zero elsewhere

    def stacked(self) -> torch.Tensor:
        """The plain [2n, d] (positive; negative) rows."""
        rows = torch.cat((self.body, self.body))
        rows[:, :self.label_slots.shape[1]] = self.label_slots
        return rows


class EpochInputs:
    """One epoch's minibatches, gathered a chunk of minibatches at a time.

    Minibatch b is the epoch's rows [s_b, s_b + n_b) (s_b = rows before it)
    as a PairBatch, its label slots rows [2 s_b, 2 s_b + 2 n_b) of the
    epoch's pair rows (its n_b positives, then its n_b negatives).  Which
    slot each pair row fills, and with what, is worked out for the whole
    epoch up front; a minibatch is then views into a chunk of ~``chunk_bytes``
    filled by one row gather and one scatter.  Why chunks: right after a
    layer step has flushed the caches, a single minibatch's gather waits on
    memory row by row, while one gather of many rows streams at memory
    bandwidth (on a 2-core VM, MNIST: 220 -> 110 us per minibatch).  Every
    chunk is a fresh tensor, so a minibatch stays valid for as long as it is
    referenced."""

    def __init__(self, inputs: FirstLayerInputs, order, labels, wrong, sizes: list[int], chunk_bytes: int):
        self.inputs, self.order, self.sizes = inputs, order, list(sizes)
        counts = torch.tensor(self.sizes, device=order.device)
        starts = torch.cumsum(counts, 0) - counts
        start_of, n_of = starts.repeat_interleave(counts), counts.repeat_interleave(counts)
        positive = start_of + torch.arange(len(order), device=order.device)  # = 2 s_b + (row within b)
        negative = positive + n_of
        self.slot_of = torch.empty(2 * len(order), dtype=torch.long, device=order.device)
        self.slot_of[positive], self.slot_of[negative] = labels, wrong
        self.scale_of = torch.empty(2 * len(order), dtype=inputs.scale.dtype, device=order.device)
        self.scale_of[positive] = self.scale_of[negative] = inputs.scale[order]
        self.bounds = [(s, s + n) for s, n in zip(starts.tolist(), self.sizes)]

        row_bytes = inputs.normalized.shape[1] * inputs.normalized.element_size()
        self.chunks, self.chunk_of = [], []  # chunk: [minibatches], at least one each
        for index, (start, end) in enumerate(self.bounds):
            if self.chunks and (end - self.bounds[self.chunks[-1][0]][0]) * row_bytes <= chunk_bytes:
                self.chunks[-1].append(index)
            else:
                self.chunks.append([index])
            self.chunk_of.append(len(self.chunks) - 1)
        self._views, self._chunk_index = {}, -1

    def __len__(self) -> int:
        return len(self.sizes)

    def batch(self, index: int) -> PairBatch:
        if self.chunk_of[index] != self._chunk_index:
            self._chunk_index = self.chunk_of[index]
            batches = self.chunks[self._chunk_index]
            first = self.bounds[batches[0]][0]
            body, slots = self._gather(first, self.bounds[batches[-1]][1])
            # the views are cut here, in one go: slicing a tensor right after a layer step costs ~50 us
            self._views = {b: PairBatch(body[self.bounds[b][0] - first:self.bounds[b][1] - first],
                                        slots[2 * (self.bounds[b][0] - first):2 * (self.bounds[b][1] - first)])
                           for b in batches}
        return self._views[index]

    def _gather(self, first: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        data, rows = self.inputs.normalized, self.order[first:end]
        body = torch.empty((end - first, data.shape[1]), dtype=data.dtype, device=data.device)
        torch.index_select(data, 0, rows, out=body)
        slots = torch.zeros((2 * (end - first), self.inputs.num_classes), dtype=data.dtype, device=data.device)
        slots[torch.arange(2 * (end - first), device=data.device), self.slot_of[2 * first:2 * end]] = \
            self.scale_of[2 * first:2 * end]
        return body, slots


def make_linear(in_features: int, out_features: int, seed: int, layer_index: int) -> torch.nn.Linear:
    """Initial weights depend only on (seed, layer index), never on which rank
    builds the layer, so every partition of the net starts from one state."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + layer_index)
    linear = torch.nn.Linear(in_features, out_features)
    bound = in_features ** -0.5
    with torch.no_grad():
        linear.weight.uniform_(-bound, bound, generator=generator)
        linear.bias.zero_()
    return linear


class FFLayer:
    """One Linear+ReLU layer with its own Adam optimizer and local FF loss."""

    def __init__(self, linear: torch.nn.Linear, lr: float, threshold: float, sharpness: float):
        self.linear = linear
        self.threshold = threshold
        self.sharpness = sharpness
        # fused: one kernel for the whole update; the unfused Adam costs as much as the matmuls at batch 64
        self.optimizer = torch.optim.Adam(linear.parameters(), lr=lr, fused=True)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

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

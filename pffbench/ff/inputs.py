"""The first layer's (positive; negative) inputs, made cheaply (pure torch).

A positive and its negative differ only in the label slots, so a minibatch
is a PairBatch: the rows once, plus each pair's label slots.  The pipeline's
rank 0 makes them per epoch (FirstLayerInputs.epoch -> EpochInputs), the PFF
variants per chapter (FirstLayerPairs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .layer import normalize


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


class FirstLayerPairs:
    """A chapter's first-layer inputs: every training row, normalized, with
    its label (the positive) and its wrong label (the negative).  The two
    differ only in the label slots, so neither is materialized: a minibatch
    is a PairBatch and the first layer's step multiplies its rows once for
    both (FFLayer.train_step_pairs); the next layer's inputs likewise."""

    def __init__(self, inputs: FirstLayerInputs, labels: torch.Tensor, wrong: torch.Tensor):
        self.inputs, self.labels, self.wrong = inputs, labels, wrong

    def batch(self, rows: torch.Tensor) -> PairBatch:
        n, scale = len(rows), self.inputs.scale[rows]
        slots = scale.new_zeros((2 * n, self.inputs.num_classes))
        slots[:n].scatter_(1, self.labels[rows].unsqueeze(1), scale.unsqueeze(1))
        slots[n:].scatter_(1, self.wrong[rows].unsqueeze(1), scale.unsqueeze(1))
        return PairBatch(self.inputs.normalized.index_select(0, rows), slots)

    @torch.no_grad()
    def forward(self, linear: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """The first layer's normalized outputs for every row, positive and
        negative: the product with the rows is made once and each label's
        weight column added to it (half the FLOPs of two forward passes)."""
        shared = torch.addmm(linear.bias, self.inputs.normalized, linear.weight.t())
        columns = linear.weight.t()  # row j: what label slot j adds per unit of its value
        scale = self.inputs.scale.unsqueeze(1)
        return tuple(normalize(torch.addcmul(shared, scale, columns[which]).clamp_(min=0))
                     for which in (self.labels, self.wrong))

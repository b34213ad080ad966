"""What the paper's PFF variants share: chapters, one layer's chapter of
training, the softmax head, adaptive negatives, evaluation and time accounts.

E epochs run as S chapters ("splits") of C = E/S epochs.  In chapter c,
layer l starts from its state as published at the end of chapter c-1, with a
fresh Adam (only weights travel, as in the paper), and trains C epochs on
inputs computed through layers 0..l-1 of chapter c.  Minibatch order and
negatives are keyed by (seed, chapter, layer, epoch), never by rank, so
whichever rank trains a (chapter, layer) computes the same thing: every
schedule gives the weights of its one-rank sequential twin.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from . import faults, ff, heads, transport
from .config import Config
from .negatives import Negatives, generator
from .pff_communications import share_training_data
from .pipeline import Shape, TrainResult, batch_rows
from .timing import CATEGORIES, COLUMNS
from .world import World

# per-chapter accounts, and the per-epoch columns they sum
CHAPTER_COLUMNS = {"compute": ("compute", "data"), "publish": ("send_wait",), "wait": ("recv_wait",)}


class Clock:
    """A rank's time, charged by epoch (the core's timing table) and by chapter.

    A rank's chapters interleave its epochs (all-layers runs epochs 0..C-1
    once per layer), so instead of timing epochs as intervals every block is
    charged to one (epoch, category), and the gap since the previous block is
    that epoch's idle time: an epoch's columns add up to its wall time, and
    the epochs to the rank's whole training time.
    """

    def __init__(self, epochs: int):
        self._spent = np.zeros((epochs, len(CATEGORIES) + 1))  # the last column is idle
        self._last = time.perf_counter()

    @contextmanager
    def __call__(self, category: str, epoch: int):
        start = time.perf_counter()
        self._spent[epoch, -1] += start - self._last
        try:
            yield
        finally:
            self._last = time.perf_counter()
            self._spent[epoch, CATEGORIES.index(category)] += self._last - start

    def table(self) -> np.ndarray:
        """[epochs, len(COLUMNS)]."""
        return np.column_stack((self._spent, self._spent.sum(axis=1)))

    def chapter_table(self, per_chapter: int) -> np.ndarray:
        """[len(CHAPTER_COLUMNS), chapters] seconds."""
        table = self.table()
        rows = [table[:, [COLUMNS.index(c) for c in cols]].sum(axis=1) for cols in CHAPTER_COLUMNS.values()]
        return np.stack(rows).reshape(len(rows), -1, per_chapter).sum(axis=2)


def load_flat(parameters, flat) -> None:
    flat = torch.as_tensor(flat)
    with torch.no_grad():
        offset = 0
        for p in parameters:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


def flat_state(parameters) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in parameters])


class FFKind:
    """Layer-wise Forward-Forward: (positive; negative) inputs, goodness loss,
    and the Goodness or Softmax classifier."""
    uses_negatives = True

    def __init__(self, config: Config, dims: list[int], num_classes: int, device: torch.device):
        self.config, self.dims, self.num_classes, self.device = config, dims, num_classes, device
        self.score_layers = config.score_layers or ff.default_score_layers(len(dims) - 1)
        self.has_head = config.classifier == "softmax"

    def build(self, index: int, state=None) -> ff.FFLayer:
        c = self.config
        layer = ff.FFLayer(ff.make_linear(self.dims[index], self.dims[index + 1], c.seed, index).to(self.device),
                           c.lr, c.threshold, c.sharpness)
        if state is not None:
            load_flat(self.parameters(layer), state)
        return layer

    @staticmethod
    def parameters(layer):
        return [layer.linear.weight, layer.linear.bias]

    def build_head(self, state=None) -> heads.SoftmaxHead:
        width = sum(self.dims[i + 1] for i in self.score_layers)
        head = heads.SoftmaxHead(heads.zero_linear(width, self.num_classes).to(self.device), self.config.softmax_lr)
        if state is not None:
            load_flat(head.parameters(), state)
        return head

    def inputs(self, x: torch.Tensor, y: torch.Tensor, wrong: torch.Tensor) -> tuple:
        return (ff.normalize(ff.embed_labels(x, y, self.num_classes)),
                ff.normalize(ff.embed_labels(x, wrong.to(x.device), self.num_classes)))

    @staticmethod
    def step(layer, xs: tuple, labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return layer.train_step(torch.cat([x[rows] for x in xs]), len(rows))[1]

    @staticmethod
    @torch.no_grad()
    def forward(layer, xs: tuple) -> tuple:
        return tuple(ff.normalize(F.relu(layer.linear(x))) for x in xs)

    def scores(self, layers, head, x: torch.Tensor) -> torch.Tensor:
        """Label logits of the current model on ``x``: the head's, or goodness
        times the loss's sharpness (the logit the FF loss itself uses)."""
        linears = [layer.linear for layer in layers]
        if head is not None:
            return head.logits(heads.features(linears, x, self.num_classes, self.score_layers))
        return torch.cat([self.config.sharpness * ff.label_goodness(linears, x[i:i + 1000], self.num_classes,
                                                                     self.score_layers)
                          for i in range(0, x.shape[0], 1000)])

    def evaluate(self, layers, head, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict]:
        accuracy = (self.scores(layers, head, x).argmax(1) == y).float().mean().item()
        return accuracy, {"classifier": self.config.classifier, "score_layers": list(self.score_layers)}


class Chapters:
    """One rank's share of a PFF run: its data, the chapter arithmetic, and
    the steps every variant is made of.  ``kind`` says what a layer is."""

    def __init__(self, config: Config, world: World, shape: Shape, dataset, kind=None, rows_per_rank=None):
        self.config, self.world, self.shape = config, world, shape
        self.device = world.device(config.device)
        self.dims = [shape.num_features, *config.layers]
        self.num_layers = len(config.layers)
        self.num_chapters = config.splits or config.epochs
        self.per_chapter = config.epochs // self.num_chapters
        self.kind = kind or FFKind(config, self.dims, shape.num_classes, self.device)
        self.clock = Clock(config.epochs)
        with self.clock("data", 0):
            x, y = share_training_data(world.comm, dataset, rows_per_rank)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.dataset = dataset
        self.batches = batch_rows(self.x.shape[0], config.batch_size)
        self.negatives = Negatives(config.neg, y, shape.num_classes, config.seed)
        self.loss = np.zeros((self.num_layers, config.epochs))
        self.head_slot, self.scores_slot = self.num_layers, self.num_layers + 1

    def slot_sizes(self) -> dict[int, int]:
        sizes = {i: sum(p.numel() for p in self.kind.parameters(self.kind.build(i))) for i in range(self.num_layers)}
        if getattr(self.kind, "has_head", False):
            sizes[self.head_slot] = sum(p.numel() for p in self.kind.build_head().parameters())
        sizes[self.scores_slot] = self.x.shape[0] * self.shape.num_classes
        return sizes

    def first_epoch(self, chapter: int) -> int:
        return chapter * self.per_chapter

    def last_epoch(self, chapter: int) -> int:
        return (chapter + 1) * self.per_chapter - 1

    def state(self, layer) -> torch.Tensor:
        return flat_state(self.kind.parameters(layer))

    def inputs(self, chapter: int) -> tuple:
        """The first layer's inputs in ``chapter``, with the chapter's negatives."""
        with self.clock("data", self.first_epoch(chapter)):
            wrong = self.negatives.for_chapter(chapter) if self.kind.uses_negatives else None
            return self.kind.inputs(self.x, self.y, wrong)

    def forward(self, layer, xs: tuple, chapter: int) -> tuple:
        """The next layer's inputs: the paper recomputes them locally, once per chapter."""
        with self.clock("data", self.first_epoch(chapter)):
            return self.kind.forward(layer, xs)

    def _epochs_of_minibatches(self, chapter: int, key: int, step):
        """Run ``step(rows, lr)`` over C shuffled epochs with the global cooldown;
        yields (epoch, mean loss)."""
        total_steps = self.config.epochs * len(self.batches)
        for epoch in range(self.first_epoch(chapter), self.last_epoch(chapter) + 1):
            faults.at_epoch_start(self.config, self.world.rank, epoch)
            with self.clock("compute", epoch):
                order = torch.randperm(self.x.shape[0], generator=generator(self.config.seed, chapter, key, epoch))
                order = order.to(self.device)
                loss, start = torch.zeros((), device=self.device), 0
                for b, n in enumerate(self.batches):
                    lr = ff.cooldown_lr(1.0, epoch * len(self.batches) + b, total_steps, self.config.cooldown)
                    loss += step(order[start:start + n], lr)
                    start += n
                yield epoch, loss.item() / len(self.batches)

    def train(self, layer, index: int, chapter: int, xs: tuple) -> None:
        """Layer ``index``'s C epochs of ``chapter``."""
        def step(rows, scale):
            layer.set_lr(self.config.lr * scale)
            return self.kind.step(layer, xs, self.y, rows)
        for epoch, loss in self._epochs_of_minibatches(chapter, index, step):
            self.loss[index, epoch] = loss

    def end_chapter(self, chapter: int, layers: list, head) -> torch.Tensor | None:
        """After the chapter's last layer: train the softmax head (if any) on
        the new layers, and return the label scores adaptive negatives need."""
        if head is not None:
            with self.clock("compute", self.last_epoch(chapter)):
                linears = [layer.linear for layer in layers]
                features = heads.features(linears, self.x, self.shape.num_classes, self.kind.score_layers)

            def step(rows, scale):
                head.set_lr(self.config.softmax_lr * scale)
                return head.train_step(features[rows], self.y[rows])
            for _ in self._epochs_of_minibatches(chapter, self.head_slot, step):
                pass
        if not (self.kind.uses_negatives and self.negatives.adaptive) or chapter == self.num_chapters - 1:
            return None
        with self.clock("compute", self.last_epoch(chapter)):
            return self.kind.scores(layers, head, self.x)

    def finish(self, layers, head, blocks: list[range], on_epoch=None, loss_divisor: int = 1,
               arrays: dict | None = None, attrs: dict | None = None) -> TrainResult | None:
        """Rank 0 evaluates the final ``layers`` (None elsewhere); every rank
        reports its losses and times."""
        last = self.config.epochs - 1
        accuracy = np.full(self.config.epochs, np.nan)
        attrs = dict(attrs or {}, splits=self.num_chapters, epochs_per_chapter=self.per_chapter,
                     negatives=self.config.neg if self.kind.uses_negatives else "none")
        if self.world.is_first:
            with self.clock("eval", last):
                accuracy[last], more = self.kind.evaluate(layers, head, self.dataset.x_test.to(self.device),
                                                          self.dataset.y_test.to(self.device))
            attrs.update(more)
        with self.clock("sync", last):
            loss = transport.sum_to_root(self.world.comm, self.loss)
        timing = transport.gather_rows(self.world.comm, self.clock.table())
        chapters = transport.gather_rows(self.world.comm, self.clock.chapter_table(self.per_chapter))
        if not self.world.is_first:
            return None
        loss /= loss_divisor
        arrays = dict(arrays or {})
        arrays.update({f"timing_chapter/{name}": chapters[:, i] for i, name in enumerate(CHAPTER_COLUMNS)})
        if on_epoch:
            training = timing[:, :, COLUMNS.index("wall")] - timing[:, :, COLUMNS.index("eval")]
            for epoch in range(self.config.epochs):
                on_epoch(epoch, loss[:, epoch], accuracy[epoch], max(training[:, epoch].max(), 1e-9))
        linears = [layer.linear.cpu() for layer in layers]
        return TrainResult(timing=timing, loss=loss, test_accuracy=accuracy, linears=linears, dims=self.dims,
                           blocks=blocks, arrays=arrays, attrs=attrs)

"""What the paper's PFF variants share: chapters, one layer's chapter of
training, the softmax head, adaptive negatives, evaluation and time accounts.

E epochs run as S chapters ("splits") of C = E/S epochs.  In chapter c,
layer l starts from its state as published at the end of chapter c-1, with a
fresh Adam (only weights travel, as in the paper), and trains C epochs on
inputs computed through layers 0..l-1 of chapter c.  Minibatch order and
negatives are keyed by (seed, chapter, layer, epoch), never by rank, so
whichever rank trains a (chapter, layer) computes the same thing: with the
same torch threads per rank, every schedule gives the weights of its
one-rank sequential twin (adaptive
negatives aside: on N ranks they come from the model N chapters back).  The same keys
make a run resumed at a chapter boundary (boundaries.py) end with the
weights of the uninterrupted run.  What a layer is: kinds.py.

A rank's chapters interleave its epochs (All-Layers runs epochs 0..C-1 once
per layer), so its time is kept by a GapTimer (pffbench/instrument/timer.py):
every block charged to one (epoch, category), the gap before it that epoch's
idle time; ``chapter_table`` sums it by chapter.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ... import ff
from ...comm import collectives, guard
from .. import ending as outcome
from ...core.config import Config, hidden_layers
from ...core.types import Shape, TrainResult, batch_rows
from ...core.world import World
from ...ff import heads
from ...ff.negatives import Negatives, generator
from ...instrument import progress
from ...instrument.timer import COLUMNS, GapTimer
from ...reliability import faults
from . import kinds
from .kinds import flat_state

# per-chapter accounts, and the per-epoch columns they sum
CHAPTER_COLUMNS = {"compute": ("compute", "data"), "publish": ("send_wait",), "wait": ("recv_wait",)}


def chapter_table(table: np.ndarray, per_chapter: int) -> np.ndarray:
    """[len(CHAPTER_COLUMNS), chapters] seconds, from a timer's [epochs, COLUMNS] ``table``."""
    rows = [table[:, [COLUMNS.index(c) for c in cols]].sum(axis=1) for cols in CHAPTER_COLUMNS.values()]
    return np.stack(rows).reshape(len(rows), -1, per_chapter).sum(axis=2)


class Chapters:
    """One rank's share of a PFF run: its data, the chapter arithmetic, and
    the steps every variant is made of.  ``kind`` says what a layer is."""

    def __init__(self, config: Config, world: World, shape: Shape, dataset, kind=None, rows_per_rank=None):
        self.config, self.world, self.shape = config, world, shape
        self.device = world.device(config.device)
        self.num_layers = hidden_layers(config)
        self.num_chapters = config.splits or config.epochs
        self.per_chapter = config.epochs // self.num_chapters
        self.kind = kind or kinds.for_config(config, shape, self.device)
        self.dims = self.kind.dims  # the first layer's input width is the rule's
        x, y = collectives.share_training_data(world.comm, dataset, rows_per_rank)
        self.timer = GapTimer(config.epochs, trace=config.trace, device=self.device)  # started by start()
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.dataset = dataset
        self.batches = batch_rows(self.x.shape[0], config.batch_size)
        self.negatives = Negatives(config.neg, y, shape.num_classes, config.seed)
        self.loss = np.zeros((self.num_layers, config.epochs))
        self.head_slot, self.scores_slot = self.num_layers, self.num_layers + 1
        self.failure = None  # (what, layer, chapter, epoch) of this rank's first non-finite layer
        self.resumed_from = None  # epochs done when this run resumed from a checkpoint

    def start(self) -> None:
        """Set-up is over (data shared, links and checkpoints ready): every
        rank starts its timer together (see pffbench/instrument/timer.py)."""
        guard.barrier(self.world.comm, "set-up")
        self.timer.start()

    def slot_sizes(self) -> dict[int, int]:
        sizes = {i: sum(p.numel() for p in self.kind.parameters(self.kind.build(i))) for i in range(self.num_layers)}
        if self.kind.has_head:
            sizes[self.head_slot] = sum(p.numel() for p in self.kind.build_head().parameters())
        sizes[self.scores_slot] = self.x.shape[0] * self.shape.num_classes
        return sizes

    def first_epoch(self, chapter: int) -> int:
        return chapter * self.per_chapter

    def last_epoch(self, chapter: int) -> int:
        return (chapter + 1) * self.per_chapter - 1

    def state(self, layer) -> torch.Tensor:
        return flat_state(self.kind.parameters(layer))

    def inputs(self, chapter: int):
        """The first layer's inputs in ``chapter``, with the chapter's negatives."""
        with self.timer("data", self.first_epoch(chapter)):
            wrong = self.negatives.for_chapter(chapter) if self.kind.uses_negatives else None
            return self.kind.inputs(self.x, self.y, wrong, chapter)

    def forward(self, layer, xs, chapter: int) -> tuple:
        """The next layer's inputs: the paper recomputes them locally, once per chapter."""
        with self.timer("data", self.first_epoch(chapter)):
            return self.kind.forward(layer, xs)

    def _epochs_of_minibatches(self, chapter: int, key: int, step, module=None):
        """Run ``step(rows, lr)`` over C shuffled epochs with the global cooldown;
        yields (epoch, mean loss).  ``module``: what --inject-nan poisons."""
        total_steps = self.config.epochs * len(self.batches)
        half = len(self.batches) // 2
        what = "the softmax head" if key == self.head_slot else f"layer {key}"
        where = f"chapter {chapter + 1}/{self.num_chapters}, {what}"
        for epoch in range(self.first_epoch(chapter), self.last_epoch(chapter) + 1):
            faults.at_epoch_start(self.config, self.world.rank, epoch)
            with self.timer("compute", epoch):
                order = torch.randperm(self.x.shape[0], generator=generator(self.config.seed, chapter, key, epoch))
                order = order.to(self.device)
                loss, start = torch.zeros((), device=self.device), 0
                for b, n in enumerate(self.batches):
                    if b == half:
                        faults.mid_epoch(self.config, self.world.rank, epoch, [] if module is None else [module])
                    lr = ff.cooldown_lr(1.0, epoch * len(self.batches) + b, total_steps, self.config.cooldown)
                    loss += step(order[start:start + n], lr)
                    start += n
                    progress.tick(epoch, b + 1, len(self.batches), where)
                yield epoch, loss.item() / len(self.batches)

    def train(self, layer, index: int, chapter: int, xs) -> None:
        """Layer ``index``'s C epochs of ``chapter``."""
        def step(rows, scale):
            layer.set_lr(self.config.lr * scale)
            return self.kind.step(layer, xs, self.y, rows)
        for epoch, loss in self._epochs_of_minibatches(chapter, index, step, self.kind.module(layer)):
            self.loss[index, epoch] = loss
        self.check(self.kind.parameters(layer), index, chapter)

    def check(self, parameters, index: int, chapter: int) -> None:
        """Note this rank's first non-finite layer (or head) of the run; the
        ranks agree on it at the next chapter boundary (``Boundaries``)."""
        if self.failure:
            return
        epochs = range(self.first_epoch(chapter), self.last_epoch(chapter) + 1)
        bad_loss = [e for e in epochs if index < self.num_layers and not math.isfinite(self.loss[index, e])]
        bad_weights = not all(bool(torch.isfinite(p).all()) for p in parameters)
        if bad_loss or bad_weights:
            self.failure = (bool(bad_loss) + 2 * bad_weights, index, chapter, bad_loss[0] if bad_loss else epochs[-1])

    def end_chapter(self, chapter: int, layers: list, head, next_chapter: int) -> torch.Tensor | None:
        """After the chapter's last layer: train the softmax head (if any) on
        the new layers, and return the label scores adaptive negatives need
        in ``next_chapter`` (None if there is none)."""
        if head is not None:
            with self.timer("compute", self.last_epoch(chapter)):
                linears = [layer.linear for layer in layers]
                features = heads.features(linears, self.x, self.shape.num_classes, self.kind.score_layers)

            def step(rows, scale):
                head.set_lr(self.config.softmax_lr * scale)
                return head.train_step(features[rows], self.y[rows])
            for _ in self._epochs_of_minibatches(chapter, self.head_slot, step):
                pass
            self.check(head.parameters(), self.head_slot, chapter)
        if not (self.kind.uses_negatives and self.negatives.adaptive) or next_chapter >= self.num_chapters:
            return None
        with self.timer("compute", self.last_epoch(chapter)):
            return self.kind.scores(layers, head, self.x)

    def finish(self, layers, head, blocks: list[range], on_epoch=None, loss_divisor: int = 1,
               arrays: dict | None = None, attrs: dict | None = None) -> TrainResult | None:
        """Rank 0 evaluates the final ``layers`` (None elsewhere); every rank
        reports its losses and times."""
        last = self.config.epochs - 1
        accuracy = np.full(self.config.epochs, np.nan)
        attrs = dict(attrs or {}, splits=self.num_chapters, epochs_per_chapter=self.per_chapter,
                     negatives=self.config.neg if self.kind.uses_negatives else "none", **self.kind.attrs())
        if self.world.is_first:
            with self.timer("eval", last):
                accuracy[last], more = self.kind.evaluate(layers, head, self.dataset.x_test.to(self.device),
                                                          self.dataset.y_test.to(self.device))
            attrs.update(more)
        with self.timer("sync", last):
            loss = collectives.sum_to_root(self.world.comm, self.loss)
        chapters = collectives.gather_rows(self.world.comm, chapter_table(self.timer.table(), self.per_chapter))
        if self.world.is_first:
            loss /= loss_divisor
            arrays = dict(arrays or {})
            arrays.update({f"timing_chapter/{name}": chapters[:, i] for i, name in enumerate(CHAPTER_COLUMNS)})
        classifier_heads = [layer.head.cpu() for layer in layers or () if hasattr(layer, "head")]  # perf-opt
        if head is not None:
            classifier_heads.append(head.linear.cpu())
        result = outcome.finish(self.config, self.world.comm, self.timer, self.shape.num_train, self.resumed_from,
                                loss=loss, test_accuracy=accuracy,
                                linears=[self.kind.module(layer).cpu() for layer in layers or ()],
                                dims=self.dims, blocks=blocks, arrays=arrays, attrs=attrs, heads=classifier_heads,
                                check_health=self.kind.checks_health, health_threshold=self.kind.health_threshold,
                                health_inputs=self.kind.health_inputs)
        if result is not None:
            outcome.report_epochs(on_epoch, result.timing, loss, accuracy)
        return result

"""What the paper's PFF variants share: chapters, one layer's chapter of
training, the softmax head, adaptive negatives, evaluation and time accounts.

E epochs run as S chapters ("splits") of C = E/S epochs.  In chapter c,
layer l starts from its state as published at the end of chapter c-1, with a
fresh Adam (only weights travel, as in the paper), and trains C epochs on
inputs computed through layers 0..l-1 of chapter c.  Minibatch order and
negatives are keyed by (seed, chapter, layer, epoch), never by rank, so
whichever rank trains a (chapter, layer) computes the same thing: every
schedule gives the weights of its one-rank sequential twin (adaptive
negatives aside: on N ranks they come from the model N chapters back).  The same keys
make a run resumed at a chapter boundary (``Boundaries``) end with the
weights of the uninterrupted run.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint, faults, ff, heads, transport
from .config import Config
from .negatives import Negatives, generator
from .pff_communications import share_training_data
from .pipeline import Shape, TrainResult, batch_rows
from .timing import CATEGORIES, COLUMNS, settler
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

    def __init__(self, epochs: int, device: torch.device | None = None):
        self._settle = settler(device)  # on a GPU a block ends when its queued work has run
        self._spent = np.zeros((epochs, len(CATEGORIES) + 1))  # the last column is idle
        self._last = time.perf_counter()

    @contextmanager
    def __call__(self, category: str, epoch: int):
        start = time.perf_counter()
        self._spent[epoch, -1] += start - self._last
        try:
            yield
        finally:
            if self._settle:
                self._settle()
            self._last = time.perf_counter()
            self._spent[epoch, CATEGORIES.index(category)] += self._last - start

    @contextmanager
    def off(self, epoch: int):
        """A block that is no training time (writing a checkpoint, which the
        pipeline also does between its timed epochs); the gap before it is
        ``epoch``'s idle time."""
        start = time.perf_counter()
        self._spent[epoch, -1] += start - self._last
        try:
            yield
        finally:
            self._last = time.perf_counter()

    def table(self) -> np.ndarray:
        """[epochs, len(COLUMNS)]."""
        return np.column_stack((self._spent, self._spent.sum(axis=1)))

    def state(self) -> np.ndarray:
        return self._spent.copy()

    def restore(self, spent) -> None:
        self._spent[:] = spent
        self._last = time.perf_counter()  # the time between the runs is no epoch's

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


class FirstLayerPairs:
    """A chapter's first-layer inputs: every training row, normalized, with
    its label (the positive) and its wrong label (the negative).  The two
    differ only in the label slots, so neither is materialized: a minibatch
    is a PairBatch and the first layer's step multiplies its rows once for
    both (FFLayer.train_step_pairs); the next layer's inputs likewise."""

    def __init__(self, inputs: ff.FirstLayerInputs, labels: torch.Tensor, wrong: torch.Tensor):
        self.inputs, self.labels, self.wrong = inputs, labels, wrong

    def batch(self, rows: torch.Tensor) -> ff.PairBatch:
        n, scale = len(rows), self.inputs.scale[rows]
        slots = scale.new_zeros((2 * n, self.inputs.num_classes))
        slots[:n].scatter_(1, self.labels[rows].unsqueeze(1), scale.unsqueeze(1))
        slots[n:].scatter_(1, self.wrong[rows].unsqueeze(1), scale.unsqueeze(1))
        return ff.PairBatch(self.inputs.normalized.index_select(0, rows), slots)

    @torch.no_grad()
    def forward(self, linear: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """The first layer's normalized outputs for every row, positive and
        negative: the product with the rows is made once and each label's
        weight column added to it (half the FLOPs of two forward passes)."""
        shared = torch.addmm(linear.bias, self.inputs.normalized, linear.weight.t())
        columns = linear.weight.t()  # row j: what label slot j adds per unit of its value
        scale = self.inputs.scale.unsqueeze(1)
        return tuple(ff.normalize(torch.addcmul(shared, scale, columns[which]).clamp_(min=0))
                     for which in (self.labels, self.wrong))


class FFKind:
    """Layer-wise Forward-Forward: (positive; negative) inputs, goodness loss,
    and the Goodness or Softmax classifier."""
    uses_negatives = True

    def __init__(self, config: Config, dims: list[int], num_classes: int, device: torch.device):
        self.config, self.dims, self.num_classes, self.device = config, dims, num_classes, device
        self.score_layers = config.score_layers or ff.default_score_layers(len(dims) - 1)
        self.has_head = config.classifier == "softmax"
        self._batch = None  # the minibatch buffer of step()
        self._first_layer = None  # (x, its FirstLayerInputs)

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

    def inputs(self, x: torch.Tensor, y: torch.Tensor, wrong: torch.Tensor) -> "FirstLayerPairs":
        # rows normalized once per run (MNIST: 0.54 s), each chapter only brings its labels
        if self._first_layer is None or self._first_layer[0] is not x:
            self._first_layer = (x, ff.FirstLayerInputs(x, self.num_classes))
        return FirstLayerPairs(self._first_layer[1], y.to(x.device), wrong.to(x.device))

    def step(self, layer, xs, labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if isinstance(xs, FirstLayerPairs):
            return layer.train_step_pairs(xs.batch(rows), normalize=False)[1]
        # gathered into one reused buffer: indexing twice and concatenating copied every row twice and
        # allocated twice per minibatch (MNIST, 784 wide, batch 64: 300 -> 190 us)
        n, (positive, negative) = len(rows), xs
        if self._batch is None or self._batch.shape != (2 * n, positive.shape[1]):
            self._batch = positive.new_empty((2 * n, positive.shape[1]))
        torch.index_select(positive, 0, rows, out=self._batch[:n])
        torch.index_select(negative, 0, rows, out=self._batch[n:])
        return layer.train_step(self._batch, n, normalize=False)[1]

    @torch.no_grad()
    def forward(self, layer, xs) -> tuple:
        if isinstance(xs, FirstLayerPairs):
            return xs.forward(layer.linear)
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
        self.clock = Clock(config.epochs, self.device)
        with self.clock("data", 0):
            x, y = share_training_data(world.comm, dataset, rows_per_rank)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.dataset = dataset
        self.batches = batch_rows(self.x.shape[0], config.batch_size)
        self.negatives = Negatives(config.neg, y, shape.num_classes, config.seed)
        self.loss = np.zeros((self.num_layers, config.epochs))
        self.head_slot, self.scores_slot = self.num_layers, self.num_layers + 1
        self.failure = None  # (what, layer, chapter, epoch) of this rank's first non-finite layer
        self.resumed_from = None  # epochs done when this run resumed from a checkpoint

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

    def inputs(self, chapter: int):
        """The first layer's inputs in ``chapter``, with the chapter's negatives."""
        with self.clock("data", self.first_epoch(chapter)):
            wrong = self.negatives.for_chapter(chapter) if self.kind.uses_negatives else None
            return self.kind.inputs(self.x, self.y, wrong)

    def forward(self, layer, xs, chapter: int) -> tuple:
        """The next layer's inputs: the paper recomputes them locally, once per chapter."""
        with self.clock("data", self.first_epoch(chapter)):
            return self.kind.forward(layer, xs)

    def _epochs_of_minibatches(self, chapter: int, key: int, step, linear=None):
        """Run ``step(rows, lr)`` over C shuffled epochs with the global cooldown;
        yields (epoch, mean loss).  ``linear``: what --inject-nan poisons."""
        total_steps = self.config.epochs * len(self.batches)
        half = len(self.batches) // 2
        for epoch in range(self.first_epoch(chapter), self.last_epoch(chapter) + 1):
            faults.at_epoch_start(self.config, self.world.rank, epoch)
            with self.clock("compute", epoch):
                order = torch.randperm(self.x.shape[0], generator=generator(self.config.seed, chapter, key, epoch))
                order = order.to(self.device)
                loss, start = torch.zeros((), device=self.device), 0
                for b, n in enumerate(self.batches):
                    if b == half:
                        faults.mid_epoch(self.config, self.world.rank, epoch, [] if linear is None else [linear])
                    lr = ff.cooldown_lr(1.0, epoch * len(self.batches) + b, total_steps, self.config.cooldown)
                    loss += step(order[start:start + n], lr)
                    start += n
                yield epoch, loss.item() / len(self.batches)

    def train(self, layer, index: int, chapter: int, xs) -> None:
        """Layer ``index``'s C epochs of ``chapter``."""
        def step(rows, scale):
            layer.set_lr(self.config.lr * scale)
            return self.kind.step(layer, xs, self.y, rows)
        for epoch, loss in self._epochs_of_minibatches(chapter, index, step, layer.linear):
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
            with self.clock("compute", self.last_epoch(chapter)):
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
        if self.resumed_from is not None:
            attrs["resumed_from_epoch"] = self.resumed_from
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
        classifier_heads = [layer.head.cpu() for layer in layers if hasattr(layer, "head")]  # perf-opt
        if head is not None:
            classifier_heads.append(head.linear.cpu())
        return TrainResult(timing=timing, loss=loss, test_accuracy=accuracy, linears=linears, dims=self.dims,
                           blocks=blocks, arrays=arrays, attrs=attrs, heads=classifier_heads)


class Boundaries:
    """Between chapters: resuming from a checkpoint, and the ranks' agreement
    on signals, non-finite layers and checkpoints (see README, Reliability).

    Chapters come in rounds of ``per_round``: one chapter per rank for the
    round-robin variants, one chapter for those in which every rank trains
    every chapter.  After its part of round k a rank writes its checkpoint
    file, posts its flags without waiting (``faults.LaggedAgreement``) and
    reads the verdict on round k - ``lag``, which every rank posted long ago;
    so all ranks stop after the same round, every chapter before the cut
    complete everywhere, and none waits for the slowest.  ``lag`` is how many
    rounds the first rank may run ahead of the last: one in the wavefront, N
    chapters in Single-Layer.  The last round ends with the run: it gets no
    checkpoint, and the verdicts still due then (on the last ``lag`` + 1
    rounds) are read only for non-finite layers, which fail the run; a signal
    in those rounds lets it finish, as one in the pipeline's last epoch does.

    ``carry`` is what a rank published in its last chapter of a round
    ({slot: state}), which the next round starts from; a resumed run
    publishes it again.
    """
    FLAGS = ("signal", "written", "what", "layer", "chapter", "epoch")

    def __init__(self, pff: Chapters, exchange, blocks: list[range], per_round: int = 1, lag: int = 1,
                 loss_divisor: int = 1):
        self.pff, self.exchange, self.blocks, self.loss_divisor = pff, exchange, blocks, loss_divisor
        self.per_round, self.num_rounds = per_round, -(-pff.num_chapters // per_round)
        comm = pff.world.comm
        self.agreement = faults.LaggedAgreement(comm, lag)
        self.checkpoints = checkpoint.Checkpoints.from_config(pff.config, comm)
        self.start, self.carry, self.error, self.committed = 0, {}, "", None
        self.first_posted = None  # the first round whose flags carried a signal or a failure
        resumed = self.checkpoints.load_latest() if self.checkpoints and pff.config.resume else None
        if resumed:
            pff.resumed_from, state = resumed
            self.start, self.carry = state["chapter"], state["carry"]
            pff.negatives.scores, pff.loss[:] = state["scores"], state["loss"]
            pff.clock.restore(state["clock"])
            if pff.world.is_first:
                print(f"resuming from {pff.config.checkpoint_dir} after epoch {pff.resumed_from}/{pff.config.epochs}"
                      f" (chapter {self.start}/{pff.num_chapters})", flush=True)

    def _epochs_done(self, round_: int) -> int:
        return min((round_ + 1) * self.per_round, self.pff.num_chapters) * self.pff.per_chapter

    def after(self, chapter: int, carry: dict) -> None:
        """This rank's part of ``chapter`` is done; may raise RunStopped (on every rank at once)."""
        round_ = chapter // self.per_round
        if round_ < self.num_rounds - 1:
            epoch = self.pff.last_epoch(chapter)
            with self.pff.clock.off(epoch):
                written = self._checkpoint(round_, carry)
            with self.pff.clock("sync", epoch):
                self._boundary(round_, written)

    def _checkpoint(self, round_: int, carry: dict) -> int:
        """This rank's file of round ``round_``'s checkpoint: 1 written, -1 failed, 0 none."""
        if not self.checkpoints or self.pff.failure:  # a diverged state is not worth resuming
            return 0
        pff = self.pff
        self.error = self.error or self.checkpoints.write(self._epochs_done(round_), {
            "chapter": (round_ + 1) * self.per_round, "carry": carry, "scores": pff.negatives.scores,
            "loss": pff.loss.copy(), "clock": pff.clock.state()})
        return -1 if self.error else 1

    def _boundary(self, round_: int, written: int) -> None:
        self.agreement.post(round_, [faults.INTERRUPTS.signum, written, *(self.pff.failure or (0, 0, 0, 0))])
        for past, table in self.agreement.due(round_):
            self._settle(past, table)
            failure, signum = self._verdict(table)
            if (failure or signum) and self.first_posted is None:
                self.first_posted = past
            if failure or signum:
                for later, table in self.agreement.due():  # the rounds since: every rank has posted them
                    self._settle(later, table)
                self._stop(self._epochs_done(round_), table, seen=self._epochs_done(self.first_posted))

    def close(self) -> None:
        """After this rank's last chapter: a non-finite layer anywhere fails the run."""
        with self.pff.clock("sync", self.pff.config.epochs - 1):
            self.agreement.post(self.num_rounds - 1, [0, 0, *(self.pff.failure or (0, 0, 0, 0))])
            for past, table in self.agreement.due():
                self._settle(past, table)
                if self._verdict(table)[0] and self.first_posted is None:
                    self.first_posted = past
        if self._verdict(table)[0]:
            self._stop(self.pff.config.epochs, table, seen=self._epochs_done(self.first_posted))

    def _settle(self, round_: int, table) -> None:
        """Round ``round_``'s checkpoint: complete once every rank wrote its file."""
        written = table[:, self.FLAGS.index("written")]
        if (written < 0).any():
            self.checkpoints.check_written(self._epochs_done(round_), False, self.error)
        if self.checkpoints and (written > 0).all():
            self.checkpoints.commit(self._epochs_done(round_))
            self.committed = self._epochs_done(round_)

    def _verdict(self, table) -> tuple[str | None, int]:
        """(the first non-finite layer in training order, or None; the signal to stop for, or 0)."""
        what, layer, chapter, epoch = (self.FLAGS.index(f) for f in ("what", "layer", "chapter", "epoch"))
        failed = [r for r in range(len(table)) if table[r, what]]
        failure = None
        if failed:
            rank = min(failed, key=lambda r: (table[r, chapter], table[r, layer]))
            row = table[rank].astype(int)
            where = "the softmax head" if row[layer] == self.pff.head_slot else f"layer {row[layer]}"
            failure = faults.diverged(row[what], where, rank, row[epoch],
                                      f" (chapter {row[chapter] + 1} of {self.pff.num_chapters})")
        return failure, faults.agreed_signal(table[:, self.FLAGS.index("signal")])

    def _stop(self, epochs_done: int, table, seen: int | None = None) -> None:
        """Every rank agreed to stop after ``epochs_done`` epochs (a rank first
        posted the problem after ``seen``): settle the messages in flight,
        gather the accounts, raise RunStopped (rank 0's carries the partial
        run for the results file)."""
        failure, signum = self._verdict(table)
        pff, comm = self.pff, self.pff.world.comm
        self.exchange.drain()
        loss = transport.sum_to_root(comm, pff.loss)
        timing = transport.gather_rows(comm, pff.clock.table())
        result = None
        if pff.world.is_first:
            loss /= self.loss_divisor
            loss[:, epochs_done:] = np.nan
            result = TrainResult(timing=timing, loss=loss, test_accuracy=np.full(pff.config.epochs, np.nan),
                                 linears=[], dims=pff.dims, blocks=self.blocks,
                                 attrs={"epochs_completed": epochs_done, "splits": pff.num_chapters,
                                        "epochs_per_chapter": pff.per_chapter,
                                        "stop_posted_after_epoch": epochs_done if seen is None else seen})
        stop = faults.stopped(failure, signum, epochs_done, self.committed == epochs_done, result)
        if result is not None:
            result.attrs["stop_reason"] = stop.message
        raise stop

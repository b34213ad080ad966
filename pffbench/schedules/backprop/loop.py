"""The epoch loop every backprop baseline shares: ``backprop``,
``dp-backprop`` (data_parallel.py), ``ddp`` (ddp.py), ``gpipe`` and ``1f1b``
(torch_pipeline.py).

A *trainer* owns the model (or this rank's stage of it), the optimizer and
whatever parallel machinery it uses; this loop owns what they have in
common, so they are measured and recorded alike:

- data: every rank holds the training set (broadcast once from rank 0 before
  the clock starts); minibatches follow one seeded permutation per epoch, the
  same on every rank; ``trainer.rows(n)`` picks the rows of an n-row
  minibatch this rank feeds (its shard, or all of them);
- ``--augment`` (learn/augment.py): every row of the epoch gets its crop
  offset and flip at the epoch's start, drawn after the permutation from the
  same generator, so every rank draws the whole minibatch's and takes its own
  rows' (p ranks augment as one process does), and an epoch checkpoint holds
  them; without --augment nothing more is drawn;
- the learning rate (Adam, linear cooldown, ff.cooldown_lr);
- evaluation every ``--eval-every`` epochs and/or ``--eval-every-steps``
  steps, and the time to ``--target-accuracy`` (instrument/target.py);
- the epoch boundary: one guarded MPI allreduce sums the ranks' loss shares
  and every rank's signal flags, so all ranks stop together on SIGTERM/SIGINT;
- checkpoints at epoch boundaries (reliability/checkpoint.py) and ``--resume``;
- the fault-injection hooks (reliability/faults.py).

It ends epochs and the run through schedules/ending.py, as the FF schedules do.

The net is the MLP of --layers or, with --conv, the conv net of
learn/nets/conv.py (``net``): its layers are the blocks, the dense layers
and the head, ``dims`` their flattened widths (what the results file
records), ``layer_shapes`` (an attribute) their shapes.

Trainers derive from trainer.Trainer (the Adam step, owned layers,
checkpoint state), are made as ``make_trainer(config, world, dims, device,
timer, net)`` and add ``rows(n) -> slice`` and ``step(x, y, n, lr) ->
loss share`` (a 0-d tensor: the rank's part of the minibatch-mean loss; the
shares of all ranks add up to it).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ... import ff
from ...comm import collectives, guard
from ...core.config import Config
from ...core.types import Shape, TrainResult, batch_rows
from ...core.world import World
from ...instrument import progress
from ...instrument.target import TargetClock
from ...instrument.timer import EpochTimer
from ...reliability import checkpoint, faults
from ...reliability.agreement import agreed_signal
from .. import ending
from ...learn import augment
from ...learn.nets.conv import ConvNet
from .mlp import layers_accuracy


class Loop:
    """One run of a backprop baseline on this rank (see the module docstring)."""

    def __init__(self, config: Config, world: World, shape: Shape, dataset, make_trainer):
        self.config, self.world, self.shape, self.dataset = config, world, shape, dataset
        self.device = device = world.device(config.device)
        self.net = ConvNet.of(config, shape) if config.conv else None
        self.dims = self.net.dims if self.net else [shape.num_features, *config.layers, shape.num_classes]
        setup_start = time.perf_counter()  # set-up is not timed per epoch
        if world.size > 1:
            x_train, y_train = collectives.share_training_data(world.comm, dataset)
        else:
            x_train, y_train = dataset.x_train, dataset.y_train
        self.x_train, self.y_train = x_train.to(device), y_train.to(device)
        self.timer = EpochTimer(config.epochs, trace=config.trace, device=device)
        self.trainer = make_trainer(config, world, self.dims, device, self.timer, self.net)
        mine = world.comm.allgather(sorted(self.trainer.owned()))  # layer indices each rank holds
        self.owner_of = [0 if self.trainer.replicated else next(r for r, held in enumerate(mine) if i in held)
                         for i in range(len(self.dims) - 1)]
        self.generator = torch.Generator().manual_seed(config.seed)  # the same permutation on every rank
        self.image = augment.image_shape_of(shape) if config.augment else None  # (C, H, W) of what --augment crops
        self.sizes = batch_rows(shape.num_train, config.batch_size)
        self.loss = np.full((1, config.epochs), np.nan)
        self.test_accuracy = np.full(config.epochs, np.nan)
        self.target = TargetClock(config.target_accuracy, config.stop_at_target)
        self.step = 0
        self.checkpoints = checkpoint.Checkpoints.from_config(config, world.comm)
        self.start_epoch = 0
        resumed = self.checkpoints.load_latest() if self.checkpoints and config.resume else None
        if resumed:
            self._restore(*resumed)
        self.setup_seconds = time.perf_counter() - setup_start

    # --- evaluation ---
    def _linears_on_root(self) -> list | None:
        """Every layer on rank 0, None elsewhere: rank 0's own modules if every rank holds the
        model, else copies on the CPU gathered from their owners (collective)."""
        owned = self.trainer.owned()
        if self.trainer.replicated:
            return [owned[i] for i in range(len(owned))] if self.world.is_first else None
        make = (lambda index: self.net.make_layer(index, self.config.seed)) if self.net else None
        return collectives.gather_layers(self.world.comm, owned, self.dims, self.owner_of, make=make)

    def evaluate(self, epoch: int) -> bool:
        """Test accuracy now (collective); True if the run should stop at the target."""
        if self.world.size > 1:
            with self.timer("sync"):  # every rank finishes its share of the steps so far: still training
                guard.barrier(self.world.comm, f"step {self.step}")
        seconds = self.timer.training_so_far()
        with self.timer("eval"):
            linears = self._linears_on_root()
            value = 0.0
            if self.world.is_first:
                value = layers_accuracy([l.to(self.device) for l in linears], self.dataset.x_test.to(self.device),
                                        self.dataset.y_test.to(self.device), self.net)
            if self.world.size > 1:
                value = float(collectives.sum_everywhere(self.world.comm, np.array([value]), "the evaluation")[0])
        self.test_accuracy[epoch] = value
        self.target.record(self.step, epoch, seconds, value)
        return self.config.stop_at_target and self.target.reached

    # --- the loop ---
    def run(self, on_epoch=None) -> TrainResult | None:
        config, world, timer = self.config, self.world, self.timer
        total_steps = config.epochs * len(self.sizes)
        half = len(self.sizes) // 2
        every = config.eval_every_steps
        guard.barrier(world.comm, "set-up")  # the clocks start together
        for epoch in range(self.start_epoch, config.epochs):
            faults.at_epoch_start(config, world.rank, epoch)
            timer.start_epoch(epoch)
            with timer("data"):
                order = torch.randperm(self.shape.num_train, generator=self.generator).to(self.device)
                # the epoch's crops and flips, by position in the epoch's order: every rank draws all of them
                draws = augment.draw(self.shape.num_train, self.generator).to(self.device) if self.image else None
            share, steps, stop, evaluated = torch.zeros((), device=self.device), 0, False, False
            for b, n in enumerate(self.sizes):
                if b == half:
                    faults.mid_epoch(config, world.rank, epoch)  # --inject-hang
                with timer("data"):
                    batch, mine = slice(b * config.batch_size, b * config.batch_size + n), self.trainer.rows(n)
                    rows = order[batch][mine]
                    x, y = self.x_train[rows], self.y_train[rows]
                    if draws is not None:  # this rank's rows of the minibatch, with their draws
                        x = augment.augment_rows(x, self.image, draws[batch][mine])
                share += self.trainer.step(x, y, n, ff.cooldown_lr(config.lr, self.step, total_steps, config.cooldown))
                self.step, steps = self.step + 1, steps + 1
                progress.tick(epoch, b + 1, len(self.sizes))  # a no-op but on rank 0
                evaluated = bool(every) and self.step % every == 0
                if evaluated and self.evaluate(epoch):
                    stop = True
                    break
            last_epoch = epoch == config.epochs - 1
            if ending.evaluates(config, epoch) and not evaluated:
                stop = self.evaluate(epoch)
            signals = [float(faults.INTERRUPTS.signum == s) for s in faults.EXIT_SIGNAL]
            local = np.array([share.item(), *signals])
            if world.size > 1:
                with timer("sync"):  # the epoch's loss, and every rank's signal flags
                    total = collectives.sum_everywhere(world.comm, local, f"the reduction at the end of epoch {epoch + 1}")
            else:
                total = local
            self.loss[0, epoch] = total[0] / steps
            signum = agreed_signal(s for s, flag in zip(faults.EXIT_SIGNAL, total[1:]) if flag)
            ending.end_epoch(timer, world, on_epoch, epoch, self.loss, self.test_accuracy)
            if self.checkpoints and not last_epoch and not stop:
                unwritten = ending.save_checkpoint(self.checkpoints, epoch + 1, self._state(epoch + 1))
                if unwritten:  # a checkpoint that cannot be written (a full disk) fails the run, every rank together
                    raise self._stopped(epoch + 1, 0, unwritten)
            if signum and not last_epoch and not stop:  # a signal during the last epoch lets the run finish
                raise self._stopped(epoch + 1, signum)
            if stop:
                break
        return self._result()

    def _result(self) -> TrainResult | None:
        linears = self._linears_on_root()
        attrs = {"classifier": "softmax head, cross-entropy, trained end to end by backprop",
                 "setup_seconds": self.setup_seconds, **self.trainer.attrs, **self.target.attrs()}
        if self.net:  # what each layer's input is, (C, H, W) or (width,), the logits last
            attrs["layer_shapes"] = [list(shape) for shape in self.net.shapes()]
        if self.target.stopped_at:
            attrs["stop_reason"] = self.target.stopped_at
        num_hidden = len(self.dims) - 2
        blocks = getattr(self.trainer, "blocks", None) or [range(num_hidden + 1)] * self.world.size
        result = ending.finish(self.config, self.world.comm, self.timer, self.shape.num_train,
                               self.start_epoch or None, loss=self.loss, test_accuracy=self.test_accuracy,
                               linears=[l.cpu() for l in linears] if self.world.is_first else [], dims=self.dims,
                               blocks=blocks, arrays={"evaluations": self.target.table()}, attrs=attrs)
        self.trainer.close()
        return result

    def _stopped(self, epochs_done: int, signum: int, failure: str | None = None) -> faults.RunStopped:
        stop = ending.stop(self.config, self.world.comm, self.timer, self.shape.num_train,
                           self.loss if self.world.is_first else None, self.test_accuracy, epochs_done, failure,
                           signum, bool(self.checkpoints), self.dims, [range(len(self.dims) - 1)] * self.world.size,
                           arrays={"evaluations": self.target.table()}, attrs=self.target.attrs())
        self.trainer.close()
        return stop

    # --- checkpoints ---
    def _state(self, epochs_done: int) -> dict:
        return ending.checkpoint_state(epochs_done, self.step, self.loss, self.test_accuracy, self.timer,
                                       self.generator, trainer=self.trainer.state(), target=self.target.state())

    def _restore(self, epochs_done: int, state: dict) -> None:
        self.trainer.restore(state["trainer"])
        self.start_epoch = epochs_done
        self.step = ending.restore_state(state, self.loss, self.test_accuracy, self.timer, self.generator)
        self.target.restore(state["target"])
        if self.world.is_first:
            print(f"resuming from {self.config.checkpoint_dir} after epoch {epochs_done}/{self.config.epochs}",
                  flush=True)

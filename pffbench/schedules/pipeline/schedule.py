"""The activation pipeline (the core schedule).

Rank r owns a contiguous block of layers.  For every minibatch, in order:
rank 0 builds the normalized (positive; negative) input (a PairBatch: the two
differ only in the label, so the first layer multiplies the rest once), each
rank receives its block's input from rank r-1, takes one local FF step on
each of its layers, and sends the output of the step's own forward pass to rank r+1
(with its row norms: rank r+1 normalizes it, so rank 0, which also makes the
data, does not).  Rank p-1 runs a minibatch while rank 0 is already several
minibatches ahead: the layers train in parallel.

Evaluation (rank 0, on every layer gathered from its owner) runs at the
epoch boundaries --eval-every asks for and, with --eval-every-steps K,
after every K-th minibatch step: every rank finishes its own step K (the
pipeline drains: the wait is training, as the backprop baselines' barrier
is), then the evaluation, timed apart; time to --target-accuracy is
recorded as the baselines record it (instrument/target.py), and
--stop-at-target ends the run at that step.

A conv net (--conv, with --objective local-softmax or cwcomp) runs the same
loop: each block trains with its auxiliary head (local-softmax) or on its
channel groups' goodness (cwcomp), and its output travels as the contiguous
rows of [n, C, H, W] (Stage).

With p = 1 the same loop is the sequential baseline; because every layer sees
exactly the inputs it would see sequentially, any p gives the same weights,
given the same torch threads per rank (t threads sum a product's parts in an
order that depends on t).
"""
from __future__ import annotations

import sys

import numpy as np

from ... import ff
from ...comm import collectives, guard, shm_space
from .. import ending as outcome
from ...core import optim
from ...core.config import Config
from ...core.types import Shape, TrainResult, batch_rows
from ...core.world import World
from ...instrument import progress
from ...instrument.target import TargetClock
from ...instrument.timer import EpochTimer
from ...reliability import checkpoint, faults
from ...reliability.agreement import agree_at_boundary
from .communications import Links
from .stage import BatchSource, Stage


def train(config: Config, world: World, shape: Shape, dataset=None, on_epoch=None) -> TrainResult | None:
    """Train ``config.epochs`` epochs; rank 0's TrainResult (None elsewhere)."""
    stage = Stage(config, world, shape)
    sizes = batch_rows(shape.num_train, config.batch_size)
    source = None
    if world.is_first:
        source = stage.rule.ConvSource(dataset, config, stage.device, sizes) if stage.net else \
            stage.rule.Source(dataset, config, stage.device, sizes) if stage.generic else \
            BatchSource(dataset, config, stage.device, sizes)
    checkpoints = checkpoint.Checkpoints.from_config(config, world.comm)
    resumed = checkpoints.load_latest() if checkpoints and config.resume else None
    start_epoch = resumed[0] if resumed else 0
    # set-up ends here, on every rank together (rank 0's data preparation is not training, on 1 rank either)
    guard.barrier(world.comm, "set-up")
    timer = EpochTimer(config.epochs, trace=config.trace, device=stage.device)
    links = Links(world.comm, timer, stage.dims[stage.block.start], stage.dims[stage.block.stop],
                  [stage.message_rows(n) for n in sizes] * (config.epochs - start_epoch), shared=config.transport == "auto")
    shm_short = _report_shm_shortfall(world, links) if config.transport == "auto" and world.size > 1 else 0
    loss = np.zeros((len(stage.dims) - 1, config.epochs))  # a row per hidden layer (a conv net's blocks too)
    accuracy = np.full(config.epochs, np.nan)
    step = _restore(resumed[1], stage, source, timer, loss, accuracy) if resumed else 0
    if resumed and world.is_first:
        progress.resumed(start_epoch)
        print(f"resuming from {config.checkpoint_dir} after epoch {start_epoch}/{config.epochs}", flush=True)
    evaluation = Evaluation(config, stage, timer, accuracy, dataset)
    if resumed and evaluation.clock:
        evaluation.clock.restore(resumed[1]["target"])
    stop_reason = None
    for epoch in range(start_epoch, config.epochs):
        faults.at_epoch_start(config, world.rank, epoch)
        timer.start_epoch(epoch)
        step, stopped, evaluated = _epoch(config, stage, source, links, timer, sizes, epoch, step, loss, evaluation)
        failure, signum, reached = _boundary(config, stage, links, timer, epoch, step, loss, evaluation,
                                             stopped or evaluated)
        reached = reached or stopped
        outcome.end_epoch(timer, world, on_epoch, epoch, loss, accuracy)
        last_epoch = epoch == config.epochs - 1
        if reached and (stopped or not last_epoch):  # --stop-at-target: a complete run, ended here
            stop_reason = evaluation.clock.stopped_at if evaluation.clock else \
                f"reached the target test accuracy {config.target_accuracy:g} after epoch {epoch + 1}: --stop-at-target"
            if links.receiver:
                links.receiver.cancel()  # the minibatches of the epochs that will not run
            break
        if checkpoints and not failure and not last_epoch:  # a checkpoint that cannot be written fails the run
            failure = outcome.save_checkpoint(checkpoints, epoch + 1, outcome.checkpoint_state(
                epoch + 1, step, loss, accuracy, timer, source.generator if source else None,
                layers={i: module.state_dict() for i, module in stage.modules().items()},
                heads={i: head.state_dict() for i, head in stage.heads().items()},
                optimizers={i: layer.optimizer.state_dict() for i, layer in stage.layers.items()},
                **({"target": evaluation.clock.state()} if evaluation.clock else {})))
        if failure or (signum and not last_epoch):  # a signal during the last epoch lets the run finish
            _drain(links)
            raise outcome.stop(config, world.comm, timer, shape.num_train, loss if world.is_first else None, accuracy,
                               epoch + 1, failure, signum, bool(checkpoints), stage.dims, stage.blocks,
                               arrays=evaluation.record())
    result = _finish(config, world, shape, stage, links, timer, loss, accuracy, start_epoch if resumed else None,
                     shm_short, evaluation.record())
    if result is not None and stop_reason:
        result.attrs["stop_reason"] = stop_reason
    return result


class Evaluation:
    """Test accuracy of the model as trained so far (collective: every
    layer to rank 0, which evaluates), and, with --eval-every-steps, the
    record of every evaluation (``clock``: steps, epoch, training seconds,
    accuracy; instrument/target.py)."""

    def __init__(self, config, stage: Stage, timer, accuracy: np.ndarray, dataset):
        self.config, self.stage, self.timer, self.accuracy, self.dataset = config, stage, timer, accuracy, dataset
        self.clock = TargetClock(config.target_accuracy, config.stop_at_target) if config.eval_every_steps else None

    def __call__(self, epoch: int, step: int) -> float:
        """Evaluate after ``step`` steps (all ranks there); the accuracy on every rank
        when it is needed there (--stop-at-target, or the step record), else on rank 0."""
        stage, comm = self.stage, self.stage.world.comm
        seconds = self.timer.training_so_far()
        with self.timer("eval"):
            _gather(stage)
            value = 0.0
            if stage.world.is_first:
                value = _accuracy(stage, self.dataset, self.config)
            # the next step cannot start before rank 0 is back: the others' wait is evaluation too
            if self.config.stop_at_target or self.clock:
                value = float(collectives.sum_everywhere(comm, np.array([value]), "the evaluation")[0])
            else:
                guard.barrier(comm, "evaluation")
        if stage.world.is_first:
            self.accuracy[epoch] = value
        if self.clock:
            self.clock.record(step, epoch, seconds, value)
        return value

    def record(self) -> dict:
        """The run's step-granular record for the results file (array ``evaluations``, from which
        schedules/ending.py takes the time to target), or nothing without --eval-every-steps."""
        return {"evaluations": self.clock.table()} if self.clock else {}

    def at_step(self, epoch: int, step: int) -> bool:
        """After step ``step`` (1-based count): evaluate if --eval-every-steps says so; True if the run stops here."""
        every = self.config.eval_every_steps
        if not every or step % every:
            return False
        if self.stage.world.size > 1:
            with self.timer("sync"):  # every rank finishes its own step ``step``: still training
                guard.barrier(self.stage.world.comm, f"step {step}")
        self(epoch, step)
        return self.config.stop_at_target and self.clock.reached


def _accuracy(stage: Stage, dataset, config) -> float:
    """Rank 0: the test accuracy of the layers (and heads) gathered from every rank, by the rule's classifier."""
    device = stage.device
    if stage.net:
        return stage.rule.conv_accuracy(stage.gathered, stage.gathered_heads, stage.net, dataset.x_test,
                                        dataset.y_test, config, device)
    if stage.generic:
        return stage.rule.accuracy(stage.gathered, stage.gathered_heads, dataset, config, device)
    return ff.accuracy([l.to(device) for l in stage.gathered], dataset.x_test.to(device), dataset.y_test.to(device),
                       stage.shape.num_classes, stage.score_layers)


def _epoch(config, stage: Stage, source, links: Links, timer, sizes: list[int], epoch: int, step: int,
           loss: np.ndarray, evaluation: Evaluation) -> tuple[int, bool, bool]:
    """One epoch's minibatches: receive (or make), step the stage, send,
    evaluate when --eval-every-steps says.  Returns the step count after it,
    whether --stop-at-target ended it early and whether its last step was
    evaluated; the stage's mean losses go to ``loss``."""
    receiver, sender = links.receiver, links.sender
    # the last layer computes straight into the outgoing message (on a GPU it is copied there)
    in_slot = sender is not None and stage.device.type == "cpu"
    epoch_loss = stage.zero_losses()
    if source:
        with timer("data"):  # the epoch's permutation, wrong labels and gather plan: ~4 ms on MNIST
            source.start_epoch()
    total_steps, half = config.epochs * len(sizes), len(sizes) // 2
    stopped = evaluated = False
    done = 0
    for b, n in enumerate(sizes):
        if b == half:
            faults.mid_epoch(config, stage.rank, epoch, stage.module_list())
        if source:
            with timer("data"):  # ff: a PairBatch; another rule: (x, its side column)
                x, norms = source.batch(b) if stage.generic else (source.batch(b), None)
        else:
            x, norms = stage.to_device(*receiver.receive())
        out = norms_out = None  # where the block's output goes, unnormalized; nowhere on the last rank
        if sender:  # may wait for the next rank to hand a slot back
            out, norms_out = sender.slot(stage.message_rows(n)) if in_slot else stage.empty_output(n)
        with timer("compute"):
            stage.step(x, norms, n, ff.cooldown_lr(config.lr, step, total_steps, config.cooldown), out, norms_out,
                       epoch_loss)
        if sender:
            sender.send(out, norms_out)
        step, done = step + 1, done + 1
        if source:  # rank 0
            progress.tick(epoch, b + 1, len(sizes))
        evaluated = bool(config.eval_every_steps) and step % config.eval_every_steps == 0
        if evaluation.at_step(epoch, step):
            stopped = True
            break
    with timer("compute"):
        for i in stage.block:
            loss[i, epoch] = epoch_loss[i].item() / done
    return step, stopped, evaluated


def _boundary(config, stage: Stage, links: Links, timer, epoch: int, step: int, loss, evaluation: Evaluation,
              evaluated: bool) -> tuple:
    """The epoch's end on every rank: the losses summed and every rank's
    verdict (NaN/Inf? a signal?) agreed, then evaluation when due (and not
    ``evaluated`` at its last step already).  Returns (failure message or
    None, signal number or 0, whether every rank stops here at
    --target-accuracy: --stop-at-target)."""
    comm = stage.world.comm
    with timer("sync"):
        reduced, failure, signum = agree_at_boundary(comm, epoch, loss[:, epoch], stage.modules(), stage.owner_of)
    if stage.world.is_first:
        loss[:, epoch] = reduced
    if epoch == config.epochs - 1 and links.sender:
        links.sender.flush()
    reached = False
    if not failure and not evaluated and outcome.evaluates(config, epoch):
        value = evaluation(epoch, step)
        reached = config.stop_at_target and value >= config.target_accuracy  # the same on every rank
    return failure, signum, reached and not signum


def _gather(stage: Stage) -> None:
    """Every layer (and auxiliary head) to rank 0, as ``stage.gathered`` (``gathered_heads``)."""
    comm, conv = stage.world.comm, stage.net is not None
    stage.gathered = collectives.gather_layers(comm, stage.modules(), stage.dims, stage.owner_of,
                                               make=stage.conv_layer if conv else None)
    if stage.heads():
        shapes = [(width, stage.shape.num_classes) for width in stage.dims[1:]]
        stage.gathered_heads = collectives.gather_layers(comm, stage.heads(), stage.dims, stage.owner_of, shapes,
                                                         make=stage.conv_head if conv else None)


def _finish(config, world, shape: Shape, stage: Stage, links: Links, timer, loss, accuracy, resumed_from,
            shm_short: int, record: dict) -> TrainResult | None:
    links.close()
    link_counts = collectives.sum_to_root(world.comm, np.array(links.counts(), dtype=np.float64))
    threshold, inputs = stage.rule.health(config)
    result = outcome.finish(config, world.comm, timer, shape.num_train, resumed_from, loss=loss,
                            test_accuracy=accuracy, linears=[l.cpu() for l in stage.gathered or ()], dims=stage.dims,
                            blocks=stage.blocks, heads=[h.cpu() for h in stage.gathered_heads or ()], arrays=record,
                            # the collapse check reads Linear layers (ff/health.py): none for a conv net yet
                            check_health=stage.net is None, health_threshold=threshold, health_inputs=inputs)
    if result is None:
        return None
    if stage.net:  # what each layer's input is, (C, H, W) or (width,), the logits last
        result.attrs["layer_shapes"] = [list(shape) for shape in stage.net.shapes()]
    rings, messages = link_counts
    result.attrs["transport"] = "none" if rings + messages == 0 else "messages" if not rings else \
        "shared" if not messages else "mixed"  # mixed: some links within a node, some between nodes
    if shm_short:
        result.attrs["shm_fallback_links"] = shm_short  # links that are messages for want of /dev/shm space
    return result


def _report_shm_shortfall(world: World, links: Links) -> int:
    """How many links became messages because /dev/shm had no room for their
    rings (summed over the nodes); rank 0 says so in one line."""
    short = collectives.sum_to_root(world.comm, np.array(links.shm_shortfall or (0, 0, 0), dtype=np.float64))
    if not world.is_first or not short[0]:
        return 0
    print(shm_space.shortfall_line(*(int(value) for value in short)), file=sys.stderr, flush=True)
    return int(short[0])


def _drain(links: Links) -> None:
    """The run stops early: withdraw what is posted, complete what is in flight (every rank together)."""
    if links.receiver:
        links.receiver.cancel()
    links.close()


def _restore(state, stage: Stage, source, timer, loss, accuracy) -> int:
    """Put back a checkpoint: this rank's layers with their Adam states, then the accounts, the position and (on
    rank 0) the minibatch/negatives generator (ending.restore_state)."""
    for i, module in stage.modules().items():
        layer = stage.layers[i]
        module.load_state_dict(state["layers"][i])
        if hasattr(layer, "head"):
            layer.head.load_state_dict(state["heads"][i])
        optim.load_state(layer.optimizer, state["optimizers"][i])
    return outcome.restore_state(state, loss, accuracy, timer, source.generator if source else None)


"""The activation pipeline (the core schedule).

Rank r owns a contiguous block of layers.  For every minibatch, in order:
rank 0 builds the normalized (positive; negative) input (a PairBatch: the two
differ only in the label, so the first layer multiplies the rest once), each
rank receives its block's input from rank r-1, takes one local FF step on
each of its layers, and sends the output of the step's own forward pass to rank r+1
(with its row norms: rank r+1 normalizes it, so rank 0, which also makes the
data, does not).  Rank p-1 runs a minibatch while rank 0 is already several
minibatches ahead: the layers train in parallel.

With p = 1 the same loop is the sequential baseline; because every layer sees
exactly the inputs it would see sequentially, any p gives the same weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import checkpoint, faults, ff, transport
from .pipeline_communications import Links
from .config import Config
from .partition import balanced_partition, layer_costs
from .timing import CATEGORIES, EpochTimer
from .world import World


@dataclass
class Shape:
    """What every rank must know about the data (only rank 0 holds it)."""
    num_train: int
    num_features: int
    num_classes: int


@dataclass
class TrainResult:
    """Everything rank 0 reports; other ranks get None."""
    timing: np.ndarray          # [ranks, epochs, len(COLUMNS)]
    loss: np.ndarray            # [layers, epochs], mean FF loss per minibatch
    test_accuracy: np.ndarray   # [epochs], NaN where not evaluated
    linears: list               # the trained layers, on the CPU
    dims: list[int]
    blocks: list[range]
    arrays: dict = field(default_factory=dict)  # variant-specific datasets for the results file
    attrs: dict = field(default_factory=dict)   # variant-specific attributes for the results file
    heads: list = field(default_factory=list)   # classifier heads on the CPU (softmax, per-layer), for --model-out


def batch_rows(num_train: int, batch_size: int) -> list[int]:
    full, rest = divmod(num_train, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


class BatchSource:
    """Rank 0's minibatches: a fresh permutation per epoch and a random wrong
    label per example, drawn at the epoch's start from one seeded generator
    (so a checkpoint at an epoch boundary holds the whole random state)."""

    def __init__(self, dataset, config: Config, device: torch.device, sizes: list[int]):
        self.inputs = ff.FirstLayerInputs(dataset.x_train.to(device), dataset.num_classes)
        self.y = dataset.y_train.to(device)
        self.num_classes = dataset.num_classes
        self.sizes = sizes
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch = None

    def start_epoch(self) -> None:
        order = torch.randperm(self.y.shape[0], generator=self.generator).to(self.y.device)
        labels = self.y[order]
        wrong = ff.random_wrong_labels(labels, self.num_classes, self.generator)
        self.epoch = self.inputs.epoch(order, labels, wrong, self.sizes)

    def batch(self, index: int) -> ff.PairBatch:
        return self.epoch.batch(index)


def train(config: Config, world: World, shape: Shape, dataset=None, on_epoch=None) -> TrainResult | None:
    device = world.device(config.device)
    dims = [shape.num_features, *config.layers]
    blocks = balanced_partition(layer_costs(dims), world.size)
    block = blocks[world.rank]
    layers = {i: ff.FFLayer(ff.make_linear(dims[i], dims[i + 1], config.seed, i).to(device),
                            config.lr, config.threshold, config.sharpness) for i in block}
    owner_of = [r for r, b in enumerate(blocks) for _ in b]
    score_layers = config.score_layers or ff.default_score_layers(len(config.layers))

    sizes = batch_rows(shape.num_train, config.batch_size)
    total_steps = config.epochs * len(sizes)
    source = BatchSource(dataset, config, device, sizes) if world.is_first else None
    checkpoints = checkpoint.Checkpoints.from_config(config, world.comm)
    resumed = checkpoints.load_latest() if checkpoints and config.resume else None
    start_epoch = resumed[0] if resumed else 0
    # the clocks start together, after rank 0's data preparation (which 1 rank does untimed as well;
    # otherwise rank 1 would count it as waiting), and give the trace a common time origin
    transport.barrier(world.comm, "set-up")
    timer = EpochTimer(config.epochs, trace=config.trace, device=device)
    links = Links(world.comm, timer, dims[block.start], dims[block.stop],
                  [2 * n for n in sizes] * (config.epochs - start_epoch), shared=config.transport == "auto")
    receiver, sender = links.receiver, links.sender
    # the last layer computes straight into the outgoing message (on a GPU it is copied there)
    in_slot = sender is not None and device.type == "cpu"

    loss = np.zeros((len(config.layers), config.epochs))
    accuracy = np.full(config.epochs, np.nan)
    step = 0
    if resumed:
        step = _restore(resumed[1], layers, source, timer, loss, accuracy)
        if world.is_first:
            print(f"resuming from {config.checkpoint_dir} after epoch {start_epoch}/{config.epochs}", flush=True)
    half = len(sizes) // 2
    for epoch in range(start_epoch, config.epochs):
        faults.at_epoch_start(config, world.rank, epoch)
        timer.start_epoch(epoch)
        epoch_loss = {i: torch.zeros((), device=device) for i in block}
        if source:
            with timer("data"):  # the epoch's permutation, wrong labels and gather plan: ~4 ms on MNIST
                source.start_epoch()
        for b, n in enumerate(sizes):
            if b == half:
                faults.mid_epoch(config, world.rank, epoch, [layers[i].linear for i in block])
            if source:
                with timer("data"):
                    x = source.batch(b)
            else:
                x, norms = receiver.receive()
                if device.type != "cpu":
                    x, norms = x.to(device, non_blocking=True), norms.to(device, non_blocking=True)
            out = norms_out = None  # where the block's output goes, unnormalized; nowhere on the last rank
            if sender:  # may wait for the next rank to hand a slot back
                out, norms_out = sender.slot(2 * n) if in_slot else (
                    torch.empty((2 * n, dims[block.stop]), device=device), torch.empty((2 * n, 1), device=device))
            with timer("compute"):
                if not source:
                    x = x.div_(norms)
                lr = ff.cooldown_lr(config.lr, step, total_steps, config.cooldown)
                for i in block:
                    layers[i].set_lr(lr)
                    to = {} if i < block[-1] else {"out": out, "normalize": False, "norm_out": norms_out}
                    x, step_loss = layers[i].train_step_pairs(x, **to) if i == 0 else layers[i].train_step(x, n, **to)
                    epoch_loss[i] += step_loss
            if sender:
                sender.send(out, norms_out)
            step += 1
        with timer("compute"):
            for i in block:
                loss[i, epoch] = epoch_loss[i].item() / len(sizes)
        with timer("sync"):  # the epoch's loss, and every rank's verdict: NaN/Inf? a signal?
            reduced, failure, signum = faults.agree_at_boundary(world.comm, epoch, loss[:, epoch],
                                                                {i: layers[i].linear for i in block}, owner_of)
        if world.is_first:
            loss[:, epoch] = reduced
        last_epoch = epoch == config.epochs - 1
        if last_epoch and sender:
            sender.flush()
        if not failure and (last_epoch or (config.eval_every and (epoch + 1) % config.eval_every == 0)):
            with timer("eval"):
                linears = transport.gather_layers(world.comm, {i: layers[i].linear for i in block}, dims, owner_of)
                if world.is_first:
                    accuracy[epoch] = ff.accuracy([l.to(device) for l in linears], dataset.x_test.to(device),
                                                  dataset.y_test.to(device), shape.num_classes, score_layers)
                # the next epoch cannot start before rank 0 is back: the others' wait is evaluation too
                transport.barrier(world.comm, "evaluation")
        timer.end_epoch()
        if world.is_first and on_epoch:
            on_epoch(epoch, loss[:, epoch], accuracy[epoch], timer.training_seconds(epoch))
        if checkpoints and not failure and not last_epoch:
            checkpoints.save(epoch + 1, _checkpoint_state(epoch + 1, step, layers, source, timer, loss, accuracy))
        if failure or (signum and not last_epoch):  # a signal during the last epoch lets the run finish
            raise _stopped(world, timer, links, loss, accuracy, dims, blocks, epoch + 1, failure, signum,
                           bool(checkpoints))

    links.close()
    link_counts = transport.sum_to_root(world.comm, np.array(links.counts(), dtype=np.float64))
    timing = transport.gather_rows(world.comm, timer.table())
    trace = transport.gather_events(world.comm, timer.events()) if config.trace else None
    if not world.is_first:
        return None
    traced = ({"arrays": {"trace/events": trace}, "attrs": {"trace_categories": list(CATEGORIES)}}
              if config.trace else {})
    result = TrainResult(timing=timing, loss=loss, test_accuracy=accuracy,
                         linears=[l.cpu() for l in linears], dims=dims, blocks=blocks, **traced)
    rings, messages = link_counts
    result.attrs["transport"] = "none" if rings + messages == 0 else "messages" if not rings else \
        "shared" if not messages else "mixed"  # mixed: some links within a node, some between nodes
    if resumed:
        result.attrs["resumed_from_epoch"] = start_epoch
    return result


def _checkpoint_state(epochs_done, step, layers, source, timer, loss, accuracy) -> dict:
    """This rank's part of a checkpoint: its layers with their Adam states, the
    schedule position, the accounts so far and every random state (on rank 0
    the minibatch/negatives generator)."""
    return {"epoch": epochs_done, "step": step,
            "layers": {i: layer.linear.state_dict() for i, layer in layers.items()},
            "optimizers": {i: layer.optimizer.state_dict() for i, layer in layers.items()},
            "loss": loss.copy(), "accuracy": accuracy.copy(), "timer": timer.state(),
            "rng": checkpoint.rng_state(source.generator if source else None)}


def _restore(state, layers, source, timer, loss, accuracy) -> int:
    for i, layer in layers.items():
        layer.linear.load_state_dict(state["layers"][i])
        layer.optimizer.load_state_dict(state["optimizers"][i])
    loss[:], accuracy[:] = state["loss"], state["accuracy"]
    timer.restore(state["timer"])
    checkpoint.set_rng_state(state["rng"], source.generator if source else None)
    return state["step"]


def _stopped(world, timer, links, loss, accuracy, dims, blocks, epochs_done, failure, signum,
             checkpointed) -> faults.RunStopped:
    """Every rank agreed to stop after ``epochs_done`` epochs: drain, gather
    the accounts, and build the exception each rank raises (rank 0's carries
    the partial result for the results file)."""
    if links.receiver:
        links.receiver.cancel()
    links.close()
    timing = transport.gather_rows(world.comm, timer.table())
    result = None
    if world.is_first:
        loss[:, epochs_done:] = np.nan
        result = TrainResult(timing=timing, loss=loss, test_accuracy=accuracy, linears=[], dims=dims, blocks=blocks,
                             attrs={"epochs_completed": epochs_done})
    stop = faults.stopped(failure, signum, epochs_done, checkpointed, result)
    if result is not None:
        result.attrs["stop_reason"] = stop.message
    return stop

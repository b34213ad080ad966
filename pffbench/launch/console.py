"""What rank 0 says around a run (issue 13): the start line and progress
(instrument/progress.py does the printing), the answers to SIGINT/SIGTERM,
--resume of a run that already finished.  Called by run.py.  (The timings
a resumed run records: schedules/ending.py.)"""
from __future__ import annotations

import sys

from ..instrument import progress
from ..reliability import checkpoint, faults
from ..core.config import Config
from ..core.partition import balanced_partition, layer_costs, stage_layers
from ..core.types import Shape, batch_rows
from ..core.variants import VARIANTS
from ..core.world import World


def planned_blocks(config: Config, world_size: int, dims: list[int], net=None) -> list[range]:
    """The layers each rank will hold, rank r's at [r], by the partition the
    variant's schedule makes (the same functions it calls): indices 0..L-1
    are the hidden layers and, in the backprop family, L is the softmax head.
    ``dims``: [input width, *hidden widths]; ``net``: the conv net (learn/nets/conv.py)
    where --conv gives one, whose layers are balanced by their FLOPs."""
    num_hidden = len(dims) - 1
    variant = VARIANTS[config.variant]
    if variant.family == "pipeline":
        if config.layer_costs:  # measured (probes/layer_costs.py)
            costs = config.layer_costs
        elif net:  # the FLOPs of each layer with its rule's loss (local-softmax's heads, cwcomp's goodness)
            from ..learn import rules
            costs = rules.module(rules.objective_of(config)).conv_costs(net)
        else:
            costs = layer_costs(dims)
        return balanced_partition(costs, world_size)
    if variant.microbatched:  # torch pipelining: the FF pipeline's partition, the head on the last stage
        return stage_layers(num_hidden, dims, world_size, config.layer_costs or (net.costs() if net else None))
    if variant.baseline:
        return [range(num_hidden + 1)] * world_size
    if variant.ranks == "layer" and world_size > 1:  # single-layer: rank i holds layer i
        return [range(r, r + 1) for r in range(world_size)]
    return [range(num_hidden)] * world_size


def net_text(net) -> str:
    """A conv net for the start line as an MLP's widths are shown, its input then each hidden layer's output,
    as shapes: "[1x28x28, 16x14x14, 32x14x14]" (--conv 16,32 on MNIST)."""
    return "[" + ", ".join("x".join(map(str, shape)) for shape in net.shapes()[:-1]) + "]"


def block_text(block: range, num_hidden: int) -> str:
    """One rank's layers: "0", "1-3", "2-3+head" (the softmax head is index ``num_hidden``)."""
    hidden = range(block.start, min(block.stop, num_hidden))
    text = "" if not hidden else f"{hidden.start}" if len(hidden) == 1 else f"{hidden.start}-{hidden.stop - 1}"
    if block.stop > num_hidden:
        text = f"{text}+head" if text else "head"
    return text or "-"


def layers_per_rank(config: Config, world_size: int, dims: list[int], net=None) -> str:
    """How the layers are shared out, for the start line: "layers per rank 0-1 | 2 | 3+head" (rank 0's |
    rank 1's | ...), or "all 4 layers on every rank, chapters round-robin" where every rank holds them all."""
    blocks, num_hidden = planned_blocks(config, world_size, dims, net), len(dims) - 1
    variant = VARIANTS[config.variant]
    if all(block == blocks[0] for block in blocks) and blocks[0].start == 0 and blocks[0].stop >= num_hidden:
        held = (f"all {num_hidden} layers" if num_hidden > 1 else "the one layer") + \
            (" and the head" if variant.baseline else "")
        if world_size == 1:
            return held
        return f"{held} on every rank" + (f", {variant.shares}" if variant.shares else "")
    return "layers per rank " + " | ".join(block_text(block, num_hidden) for block in blocks)


def start_progress(config: Config, world: World, shape: Shape, num_test: int):
    """Rank 0's progress lines (instrument/progress.py), after the start line; None elsewhere or --quiet."""
    if not world.is_first:
        return None
    from ..datasets.load import source_of
    from ..learn import rules
    from ..learn.nets.conv import ConvNet
    objective = rules.objective_of(config)
    width = rules.module(objective).input_width(shape.num_features) if objective else shape.num_features
    dims = [width, *config.layers]  # the net the rule trains (scff: a 2d-wide first layer), as the stages split it
    net = ConvNet.of(config, shape) if config.conv else None
    if net:
        dims = net.dims[:-1]  # the input, then each hidden layer's output, flattened
    batches = len(batch_rows(shape.num_train, config.batch_size))
    pff = VARIANTS[config.variant].pff
    # an evaluation's cost in epochs: classes x test rows label-conditioned passes against 2 x train rows
    # passes of ~3 passes' cost each (forward, backward, update).  Evaluations every K epochs are in the measured
    # rate already; the one at the end is added (backprop's: one pass per row, not one per class)
    per_row = 1 if VARIANTS[config.variant].baseline else shape.num_classes
    eval_share = per_row * num_test / (6 * shape.num_train)
    evals = 1 if pff or not config.eval_every else 0
    # the rule is named when asked for (--objective): the default lines stay as they were
    return progress.for_run(config, world.size, shape, net_text(net) if net else dims, config.objective,
                            source_of(config.dataset, config.data_dir), batches,
                            eval_share, evals, layers_per_rank(config, world.size, dims, net),
                            (config.splits or config.epochs) if pff else None)


def answer_signals(config: Config, reporter) -> None:
    """Rank 0 answers SIGINT/SIGTERM at once: the first with when the run
    stops, the second with what becomes of it (faults.Interrupts)."""
    pff = VARIANTS[config.variant].pff

    def first(signum):
        name = faults.signal_name(signum)
        if reporter is None:
            print(f"pffbench: {name} received: stopping at the next boundary; send it again to abort", flush=True)
            return
        if pff:
            boundary = "the next round of chapters every rank has passed (a chapter boundary)"
        elif reporter.epoch >= config.epochs - 1:
            boundary = f"epoch {config.epochs}/{config.epochs}, the last: the run finishes and is recorded"
        else:
            boundary = f"epoch {reporter.epoch + 1}/{config.epochs}, with a checkpoint" if config.checkpoint_dir \
                else f"epoch {reporter.epoch + 1}/{config.epochs}"
        print(reporter.stop_line(name, boundary), flush=True)

    def second(signum):
        kept = f"; the last complete checkpoint in {config.checkpoint_dir} can be resumed" \
            if config.checkpoint_dir else ""
        print(f"pffbench: aborted by a second {faults.signal_name(signum)}: nothing recorded in {config.out}{kept}",
              file=sys.stderr, flush=True)

    faults.INTERRUPTS.on_first, faults.INTERRUPTS.on_abort = first, second


class AlreadyComplete(Exception):
    """--resume of a run that finished and was recorded: nothing to do (exit 0)."""


def already_finished(config: Config, world: World) -> None:
    """Raise AlreadyComplete on every rank if --resume finds the run finished
    (checkpoint.FINISHED); otherwise a run about to train forgets an old marker."""
    marker = None
    if world.is_first:
        marker = checkpoint.finished(config, world.size) if config.resume else None
        if marker is None:
            checkpoint.forget_finished(config)
    marker = world.comm.bcast(marker, root=0)
    if marker is not None:
        where = f"recorded as run '{marker['run']}' in {marker['out']}" if marker.get("run") else "recorded"
        raise AlreadyComplete(f"already complete: this run finished and was {where}; nothing to resume "
                              f"(a new run: leave out --resume, or use another --checkpoint-dir)")

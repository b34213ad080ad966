"""Each layer's measured training-step time, for the pipeline's partition (``--layer-costs``).

The pipeline splits its layers into contiguous blocks that minimise the slowest block
(core/partition.py).  By default a layer's cost is modelled: its weight count (an MLP) or its FLOPs with
its rule's loss (a conv net, the rule's ``conv_costs``).  The FLOPs of a conv block misjudge its time:
GroupNorm, ReLU and pooling at full resolution cost far more than their FLOPs say (CIFAR-10,
``--conv 40,80,160``, local-softmax: the FLOPs split left rank 1 waiting 50-58 % of its time;
docs/measurements.md).  This probe times what the pipeline runs, each layer's step through its rule
(``rule.step``: forward, the local loss, backward, the Adam step) on a minibatch of the run's size, on
this process's torch threads, warm-up first, then the median of the timed repetitions, the layers taken in
turn (a round of one step each)::

    python -m pffbench.probes.layer_costs --conv 40,80,160 --objective local-softmax --dataset imagefolder \\
        --data-dir DIR --threads 1

prints the milliseconds per layer and the ``--layer-costs`` flag that partitions by them; the run records
the costs in its config, so a resumed run splits its layers as it did.  Inputs are random tensors of each
layer's input shape (the time of these ops does not depend on the values: no sparsity is exploited).

For the backprop pipelines (``--variant gpipe`` or ``1f1b``) a layer's step is what its stage computes of
it in one minibatch: ``--microbatches`` forward and backward passes of n/M rows each (the input gradient
too, but for the first layer, which has none to pass back), against a random gradient of its output,
then one Adam step.  The head goes with the last block (core/partition.stage_layers): its passes and
step are timed with the last hidden layer's.
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

from ..core.config import Config, UsageError
from ..core.partition import balanced_partition
from ..core.types import Shape
from ..core.variants import VARIANTS
from ..launch.command import command

WARMUP, REPEATS = 5, 20


def measure(config: Config, shape: Shape, device: torch.device | str = "cpu", warmup: int = WARMUP,
            repeats: int = REPEATS) -> list[float]:
    """Seconds of one training step of each hidden layer (index order) of the run ``config`` on data of
    ``shape``: the median of ``repeats`` steps after ``warmup``, each on fresh throwaway layers (the run's
    own are untouched); a local rule's step, or a gpipe/1f1b stage's share of a minibatch (module
    docstring).  Raises UsageError for the ff rule and the other variants (no per-layer step: their
    partition stays the modelled one) and for a non-positive ``repeats``."""
    from ..learn import rules
    from ..learn.nets.conv import ConvNet
    if repeats < 1 or warmup < 0:
        raise UsageError("layer costs: repeats must be >= 1 and warmup >= 0")
    device = torch.device(device)
    if VARIANTS[config.variant].microbatched:
        return _rounds(_backprop_steps(config, shape, device), device, warmup, repeats)
    objective = rules.objective_of(config)
    if objective in (None, "ff"):
        raise UsageError(f"layer costs are measured for the generic local rules (local-softmax, scff, cwcomp) "
                         f"and the backprop pipelines (gpipe, 1f1b), not for "
                         f"{objective or config.variant}: its partition is the modelled one")
    rule = rules.module(objective)
    n = config.batch_size
    generator = torch.Generator().manual_seed(config.seed)
    side = torch.randint(0, shape.num_classes, (rule.message_rows(n), 1), generator=generator).float()
    if config.conv:
        net = ConvNet.of(config, shape)
        widths = net.dims[:-1]  # each hidden layer's input, flattened
        make = lambda index: rule.make_conv_layer(index, net, config, device)  # noqa: E731
    else:
        widths = [rule.input_width(shape.num_features), *config.layers]
        make = lambda index: rule.make_layer(index, widths, shape.num_classes, config, device)  # noqa: E731
    layers = [make(index) for index in range(len(widths) - 1)]
    inputs = [torch.rand(rule.message_rows(n), widths[index], generator=generator).to(device)
              for index in range(len(layers))]
    side = side.to(device)
    return _rounds([lambda layer=layer, x=x: rule.step(layer, x, side, n) for layer, x in zip(layers, inputs)],
                   device, warmup, repeats)


def _backprop_layers(config: Config, shape: Shape, device: torch.device):
    """Backprop's net of the run (learn/nets/conv.py's, or the MLP) with its initial weights: (its linears,
    hidden layers then the head; each one's input width; apply(index, layer, x), its forward pass)."""
    import torch.nn.functional as F
    from ..learn.nets.conv import ConvNet
    from ..schedules.backprop.mlp import make_model
    net = ConvNet.of(config, shape) if config.conv else None
    dims = net.dims if net is not None else [shape.num_features, *config.layers, shape.num_classes]
    model = make_model(dims, config.seed, net).to(device)
    head = len(dims) - 2
    apply = net.apply if net is not None else (lambda index, layer, x: layer(x) if index == head else F.relu(layer(x)))
    return [*model.hidden, model.head], dims[:-1], apply


def _passes(index: int, layer, width: int, rows: int, apply, device: torch.device, count: int = 1):
    """A callable: ``count`` forward and backward passes of ``rows`` rows through linear ``index`` against a
    random gradient of its output (the input's gradient too, but for the first, which has none to pass)."""
    generator = torch.Generator().manual_seed(index)
    x = torch.rand(rows, width, generator=generator).to(device).requires_grad_(index > 0)
    with torch.no_grad():
        grad = torch.randn_like(apply(index, layer, x))

    def passes():
        for _ in range(count):
            apply(index, layer, x).backward(grad)
            x.grad = None
    return passes


def _backprop_steps(config: Config, shape: Shape, device: torch.device) -> list:
    """One callable per hidden layer: its share of a gpipe/1f1b minibatch, the head's with the last one's
    (see the module's docstring); each callable's ``layers``, the linears it steps."""
    from ..core.optim import adam
    linears, widths, apply = _backprop_layers(config, shape, device)
    rows = config.batch_size // config.microbatches  # validate.py: the microbatches divide the minibatch
    groups = [[i] for i in range(len(linears) - 1)]
    groups[-1].append(len(linears) - 1)
    steps = []
    for group in groups:
        passes = [_passes(i, linears[i], widths[i], rows, apply, device, config.microbatches) for i in group]
        optimizer = adam([p for i in group for p in linears[i].parameters()], config.lr)

        def step(passes=passes, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            for each in passes:
                each()
            optimizer.step()
        step.layers = [linears[i] for i in group]
        steps.append(step)
    return steps


def backprop_parts(config: Config, shape: Shape, rows: list[int], device: torch.device | str = "cpu",
                   warmup: int = WARMUP, repeats: int = REPEATS) -> tuple[list[list[float]], list[float], list[int]]:
    """The backprop net of the run ``config`` (any backprop-family variant), layer by layer, for the
    performance model (perfmodel/calibrate.py): (seconds of one forward and backward pass of each linear,
    hidden layers then the head, at each of ``rows`` rows: [len(rows)][linears]; seconds of each linear's
    Adam step; each linear's parameters).  Medians of ``repeats`` after ``warmup``, round-robin."""
    from ..core.optim import adam
    device = torch.device(device)
    linears, widths, apply = _backprop_layers(config, shape, device)
    calls = [_passes(i, layer, widths[i], r, apply, device) for r in rows for i, layer in enumerate(linears)]
    optimizers = [adam(layer.parameters(), config.lr) for layer in linears]
    for layer in linears:  # every parameter with a gradient, so the steps time the whole update
        for parameter in layer.parameters():
            parameter.grad = torch.zeros_like(parameter)
    seconds = _rounds([*calls, *(o.step for o in optimizers)], device, warmup, repeats)
    k = len(linears)
    return ([seconds[j * k:(j + 1) * k] for j in range(len(rows))], seconds[len(rows) * k:],
            [sum(p.numel() for p in layer.parameters()) for layer in linears])


def _rounds(steps: list, device: torch.device, warmup: int, repeats: int) -> list[float]:
    """The median seconds of each of ``steps`` (callables), after ``warmup`` rounds.  Round-robin: one call
    of every step a round, so a change in the host's speed (other jobs, the clock) falls on every layer
    alike instead of on whichever was being timed."""
    times = [[] for _ in steps]
    for repeat in range(warmup + repeats):
        for step, kept in zip(steps, times):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if repeat >= warmup:
                kept.append(time.perf_counter() - start)
    return [statistics.median(kept) for kept in times]


def costs_of(seconds: list[float]) -> list[int]:
    """Measured seconds per layer as --layer-costs takes them: microseconds, at least 1 (integers: the
    partition needs only their ratios)."""
    return [max(1, round(s * 1e6)) for s in seconds]


def costs_flag(seconds: list[float]) -> str:
    """The ``--layer-costs`` flag of measured seconds per layer (``costs_of``)."""
    return "--layer-costs " + ",".join(map(str, costs_of(seconds)))


@command("pffbench.probes.layer_costs")
def main(argv: list[str] | None = None) -> int:
    """Measure the layers of the net the run flags describe (python -m pffbench.run's flags) and print the
    milliseconds per layer, the partitions they give at 2 to 4 ranks, and the flag."""
    from ..datasets.files import DataError
    from ..datasets.load import load_dataset
    from ..launch.cli import parse_config
    config = parse_config(argv if argv is not None else sys.argv[1:], prog="python -m pffbench.probes.layer_costs",
                          description="Time each hidden layer's training step of the run these flags describe (the "
                          "run's own flags: python -m pffbench.run's, listed below), layers in turn, median of "
                          f"{REPEATS} after {WARMUP} warm-up rounds; print the milliseconds per layer, the splits "
                          "they give over 2 to 4 ranks, and the --layer-costs flag to pass to the run.")
    torch.set_num_threads(config.threads or torch.get_num_threads())
    try:
        dataset = load_dataset(config.dataset, config.data_dir)
    except DataError as error:  # one line, exit 2 (launch/command.py)
        raise UsageError(str(error)) from None
    seconds = measure(config, Shape.of(dataset), config.device)
    print(f"layer step ms (median of {REPEATS}, batch {config.batch_size}, {torch.get_num_threads()} thread(s)): "
          + "  ".join(f"{i}: {1e3 * s:.2f}" for i, s in enumerate(seconds)))
    for ranks in range(2, min(4, len(seconds)) + 1):
        blocks = balanced_partition(costs_of(seconds), ranks)
        stage_ms = [1e3 * sum(seconds[i] for i in block) for block in blocks]
        print(f"{ranks} ranks: blocks {[f'{b.start}-{b.stop - 1}' for b in blocks]}, stage ms "
              f"{' / '.join(f'{ms:.2f}' for ms in stage_ms)} (balance {min(stage_ms) / max(stage_ms):.0%})")
    print(costs_flag(seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())

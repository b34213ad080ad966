"""Calibration: the per-layer step costs a simulation needs, from a 1-rank
run of the same net, batch and threads (``from_run``) or from the
microbenchmarks alone (``measured``).

From a run: the microbenchmarks (``profile``) give how the cost splits over
layers and parts, and the run gives its level: every layer's step is scaled
by one factor so that the steps of an epoch add up to the run's measured
``compute`` an epoch (of a run ended at its target, by the steps it trained:
``epochs_trained``), the PFF recomputation likewise to its ``data``.  Rank 0's data
per minibatch, the end-of-epoch sync and the evaluation are taken from the
run as they are.  The factor (``scale``) is reported: it says how far the
microbenchmark (warm caches, no loop) is from the training loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..store import reader as results
from ..core.config import UsageError
from ..core.types import batch_rows
from ..core.variants import VARIANTS
from ..instrument import target
from ..probes.profile import RULE_KINDS, BackpropProfile, FFProfile, profile_backprop, profile_ff



@dataclass
class FFCosts:
    """Seconds, for ``batch`` rows a minibatch and ``threads`` per rank."""
    dims: list[int]
    batch: int
    threads: int
    kind: str                  # "ff" or "perf-opt"
    step: list[float]          # per minibatch, layer i's step (PFF: its share of the chapter's compute)
    normalize: list[float]     # per minibatch, a pipeline receiver normalizing layer i's input
    forward_row: list[float]   # per training row, layer i's forward (PFF recomputation)
    data: float                # per minibatch, rank 0's data (pipeline)
    inputs_row: float          # per training row and chapter, first-layer inputs and negatives (PFF)
    once_row: float            # per training row, once per rank and run (PFF: normalizing the rows)
    sync: float = 0.0          # per epoch, the local part of the end-of-epoch reduction
    eval: float = 0.0          # per evaluation, rank 0
    scale: float = 1.0         # the run's compute / the microbenchmarks'
    data_scale: float = 1.0    # the run's data / the microbenchmarks' (rank 0's minibatches, PFF recomputation)
    source: str = "microbenchmark"
    message_rows: int = 2      # rows of activity per example a layer sends on (profile.MESSAGE_ROWS)
    split: list | None = None  # the costs the partition balances (a conv net's); None: layer_costs(dims)
    weight_bytes: list | None = None  # each layer's parameters (with its head), gathered to evaluate; None: dims'
    num_train: int = 0         # a conv net's run: its training rows an epoch (0: not from such a run)


@dataclass
class BackpropCosts:
    """Seconds, for the MLP ``dims`` + a head of profile.NUM_CLASSES, or a conv net (``layer_fb`` and the
    fields after it: ``dims`` its layers' inputs flattened, the head ``classes`` wide), ``threads`` per rank."""
    dims: list[int]
    batch: int
    threads: int
    fb0: float                 # forward+backward of r rows: fb0 + fb1 r
    fb1: float
    adam: float
    data_row: float
    gradient_floats: int
    eval: float = 0.0
    scale: float = 1.0
    source: str = "microbenchmark"
    microbatches: int = 1      # gpipe, 1f1b: microbatches per minibatch
    library: float = 0.0       # gpipe, 1f1b: the library's bookkeeping per microbatch forward or backward
    tail: float = 0.0          # ddp: per step, DDP's work after the last bucket is handed to the allreduce
    # a conv net's (from its run, each linear measured: _conv_backprop_from_run); None: the MLP's, from dims
    layer_fb: list | None = None    # per linear (hidden layers, then the head): forward+backward of r rows a + b r
    layer_adam: list | None = None  # per linear: its share of the Adam step
    params: list | None = None      # per linear: parameters (DDP's buckets)
    split: list | None = None       # the costs gpipe/1f1b's partition balances (--layer-costs, else the FLOPs)
    classes: int = 0                # the head's width (0: profile.NUM_CLASSES)
    num_train: int = 0              # the run's training rows an epoch


def _kind(variant: str, objective: str | None = None) -> str:
    """The FF layer kind the profile times for the variant's local rule (``objective``, else the
    variant's own): "ff", "perf-opt" (local-softmax: a layer and its own softmax head) or "scff"."""
    rule = objective or VARIANTS[variant].objective or "ff"
    if rule not in RULE_KINDS:  # cwcomp: conv blocks only
        raise UsageError(f"--objective {rule} trains conv nets, which the model predicts from a 1-rank run of the "
                         "net (model predict --calibrate RUN, model validate), not from the MLP microbenchmarks")
    return RULE_KINDS[rule]


def measured(variant: str, dims, batch: int, threads: int = 1, microbatches: int = 4, objective: str | None = None):
    """Costs from the microbenchmarks alone (no run needed, e.g. for a net too big to train here).
    gpipe/1f1b get ``microbatches`` and no library bookkeeping, ddp no tail: those need a run.
    ``objective``: the local rule (learn/rules) of an FF-family variant, else its own."""
    if VARIANTS[variant].baseline:
        return _backprop_costs(profile_backprop(dims, batch, threads),
                               microbatches=microbatches if VARIANTS[variant].microbatched else 1)
    return _ff_costs(profile_ff(dims, batch, threads, _kind(variant, objective)))


def _ff_costs(p: FFProfile, scale: float = 1.0, data_scale: float = 1.0, **more) -> FFCosts:
    return FFCosts(p.dims, p.batch, p.threads, p.kind, [s * scale for s in p.step],
                   [s * scale for s in p.normalize], [f * data_scale for f in p.forward_row], p.data * data_scale,
                   p.inputs_row * data_scale, p.once_row * data_scale, scale=scale, data_scale=data_scale,
                   message_rows=p.message_rows, **more)


def _backprop_costs(p: BackpropProfile, scale: float = 1.0, **more) -> BackpropCosts:
    return BackpropCosts(p.dims, p.batch, p.threads, p.fb0 * scale, p.fb1 * scale, p.adam * scale,
                         p.data_row, p.gradient_floats, scale=scale, **more)


def retarget(costs, dims=None, batch: int | None = None):
    """The same calibration for another net or batch size: the
    microbenchmarks re-run for them, scaled by the calibration's factors
    (taken to carry over: an assumption the README states).  ValueError for
    a conv net's costs (its layers are measured as they are, not profiled
    by widths)."""
    if getattr(costs, "split", None) is not None:
        raise ValueError("a conv net's calibration predicts its own net and batch only (its layers were measured)")
    dims, batch = list(dims or costs.dims), batch or costs.batch
    note = f", retargeted to {dims} batch {batch}"
    if isinstance(costs, BackpropCosts):
        return _backprop_costs(profile_backprop(dims, batch, costs.threads), costs.scale, eval=costs.eval,
                               source=costs.source + note, microbatches=costs.microbatches,
                               library=costs.library, tail=costs.tail)
    profile = profile_ff(dims, batch, costs.threads, costs.kind)
    return replace(_ff_costs(profile, costs.scale, costs.data_scale), sync=costs.sync, eval=costs.eval,
                   source=costs.source + note)


def run_threads(run: results.Run) -> int:
    threads = run.attrs.get("threads_per_rank", 1)
    return int(max(threads)) if isinstance(threads, (list, tuple)) else int(threads)


def from_run(run: results.Run, profile=None):
    """Costs from a complete 1-rank run (its recorded dims, batch, threads).
    Raises ValueError if the run cannot calibrate (more ranks, not complete, a conv net in a PFF chapter
    schedule)."""
    if run.config.get("conv"):
        baseline = VARIANTS[run.attrs.get("variant", "pipeline")].baseline
        return _conv_backprop_from_run(run) if baseline else _conv_from_run(run)
    if run.config.get("augment"):  # the crops and flips are data time the model's steps do not have
        raise ValueError(f"run {run.name} augments its minibatches (--augment): the model does not count that")
    if int(run.attrs.get("world_size", 0)) != 1:
        raise ValueError(f"run {run.name} has {run.attrs.get('world_size')} ranks: calibration needs a 1-rank run")
    if run.attrs.get("status", "complete") != "complete":
        raise ValueError(f"run {run.name} did not complete")
    variant, config = run.attrs.get("variant", "pipeline"), run.config
    threads, batch = run_threads(run), int(config["batch_size"])
    a = run.arrays
    evaluation = _evaluation(run)
    if VARIANTS[variant].baseline:
        return _backprop_from_run(run, variant, batch, threads, evaluation, profile)
    dims = list(run.attrs["dims"])
    profile = profile or profile_ff(dims, batch, threads, _kind(variant, config.get("objective")))
    sizes = batch_rows(int(run.attrs["num_train"]), batch)
    full = sum(sizes) / batch  # minibatches an epoch, a partial one counted by its rows
    compute, data = a["timing/compute"][0], a["timing/data"][0]
    if not VARIANTS[variant].pff:
        epochs = epochs_trained(run)
        scale = float(compute.sum()) / epochs / (full * sum(profile.step))
        data_scale = float(data.sum()) / epochs / full / profile.data
        return _ff_costs(profile, scale, data_scale, sync=float(a["timing/sync"][0].sum()) / epochs, eval=evaluation,
                         source=f"run {run.name}")
    return _pff_costs(run, profile, sizes, evaluation)


def _conv_run(run: results.Run):
    """(Config, Shape, threads per rank) of a conv net's 1-rank run, as its layers are measured again on this
    host; ValueError unless it is complete, on 1 rank, and records its net's shapes."""
    from ..core.config import Config
    from ..core.types import Shape
    if int(run.attrs.get("world_size", 0)) != 1 or run.attrs.get("status", "complete") != "complete":
        raise ValueError(f"run {run.name}: calibration needs a complete 1-rank run")
    if "layer_shapes" not in run.attrs or "class_names" not in run.attrs:
        raise ValueError(f"run {run.name} does not record its conv net's shapes (written before they were kept)")
    known = {f for f in Config.__dataclass_fields__}
    config = Config(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in run.config.items() if k in known})
    shapes = [tuple(s) for s in run.attrs["layer_shapes"]]
    shape = Shape(int(run.attrs["num_train"]), math.prod(shapes[0]), len(run.attrs["class_names"]), shapes[0])
    return config, shape, run_threads(run)


def _at_threads(threads: int, measure):
    """``measure()`` on ``threads`` torch threads (the run's), the process's own restored after."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return measure()
    finally:
        torch.set_num_threads(previous)


def epochs_trained(run: results.Run) -> float:
    """The epochs' worth of minibatches rank 0 trained: every epoch's timing column for a run that ran its
    epochs; for one ended by --stop-at-target (tune --repeats-stop-at-target), whose later columns are
    zero and whose last is partial, the steps of its last evaluation (where it stopped) over an epoch's."""
    epochs = run.arrays["timing/compute"].shape[1]
    if not target.ended_at_target(run.attrs, run.config):
        return float(epochs)
    per_epoch = int(run.attrs.get("minibatches_per_epoch", 0))
    evaluations = target.evaluations_of(run.arrays, per_epoch)
    if per_epoch <= 0 or not len(evaluations):
        raise ValueError(f"run {run.name} stopped at its target but records no steps to scale its times by")
    return float(evaluations[-1, 0]) / per_epoch


def _evaluation(run: results.Run) -> float:
    """Rank 0's seconds an evaluation (the longest of the run's; 0 if it evaluated none)."""
    evals = run.arrays["timing/eval"][0]
    return float(evals[evals > 0].max()) if (evals > 0).any() else 0.0


def _conv_from_run(run: results.Run) -> FFCosts:
    """A 1-rank activation-pipeline run of a conv net (--conv): each layer's step measured as the run takes it
    (probes/layer_costs.py, on this host, at the run's batch and threads), scaled so that an epoch's steps add
    up to the run's compute; rank 0's data per minibatch (the crops and flips of --augment included) as the run
    measured it.  The messages are the layers' flattened outputs (``dims``); the partition balances the run's
    --layer-costs, else its rule's FLOPs, as the schedule does."""
    from ..learn import rules
    from ..learn.nets.conv import ConvNet
    from ..probes import layer_costs
    variant = run.attrs.get("variant", "pipeline")
    if VARIANTS[variant].family != "pipeline" or VARIANTS[variant].pff:
        raise ValueError(f"run {run.name} trains a conv net with {variant}: the model predicts conv nets in the "
                         "activation pipeline and the backprop baselines, not the PFF chapter schedules")
    config, shape, threads = _conv_run(run)
    batch = config.batch_size
    step = _at_threads(threads, lambda: layer_costs.measure(config, shape))
    rule, net = rules.module(rules.objective_of(config)), ConvNet.of(config, shape)
    a = run.arrays
    sizes = batch_rows(shape.num_train, batch)
    full, epochs = sum(sizes) / batch, epochs_trained(run)
    scale = float(a["timing/compute"][0].sum()) / epochs / (full * sum(step))
    layers = [rule.make_conv_layer(i, net, config, "cpu") for i in range(len(step))]
    weight_bytes = [4 * sum(t.numel() for t in layer.parameters()) for layer in layers]
    zeros = [0.0] * len(step)
    return FFCosts(list(run.attrs["dims"]), batch, threads, "conv", [s * scale for s in step], zeros, zeros,
                   float(a["timing/data"][0].sum()) / epochs / full, 0.0, 0.0,
                   sync=float(a["timing/sync"][0].sum()) / epochs,
                   eval=_evaluation(run), scale=scale,
                   source=f"run {run.name}", message_rows=rule.message_rows(1),
                   split=list(config.layer_costs or rule.conv_costs(net)), weight_bytes=weight_bytes,
                   num_train=shape.num_train)


def _conv_backprop_from_run(run: results.Run) -> BackpropCosts:
    """A 1-rank backprop-family run of a conv net: each linear's forward and backward (at a quarter of the
    minibatch, or a microbatch if smaller, and the whole, fitted a + b r as profile_backprop fits the MLP's) and Adam step measured on this
    host at the run's threads (probes/layer_costs.backprop_parts), scaled so that a step's compute is the
    run's; the library's or DDP's per-step rest and the data per row as _backprop_from_run takes them."""
    from ..learn.nets.conv import ConvNet
    from ..probes import layer_costs
    variant = run.attrs.get("variant", "backprop")
    config, shape, threads = _conv_run(run)
    batch = config.batch_size
    m = config.microbatches if VARIANTS[variant].microbatched else 1
    small = max(1, batch // max(4, m))  # the fit spans the microbatch (or a shard of a few ranks) to the minibatch
    (at_small, at_large), adam, params = _at_threads(
        threads, lambda: layer_costs.backprop_parts(config, shape, [small, batch]))
    slope = [max(0.0, (b - a) / (batch - small)) if batch > small else 0.0 for a, b in zip(at_small, at_large)]
    fb = [(max(0.0, b - k * batch), k) for b, k in zip(at_large, slope)]
    a = run.arrays
    steps = len(batch_rows(shape.num_train, batch)) * epochs_trained(run)
    compute, sync = float(a["timing/compute"][0].sum()) / steps, float(a["timing/sync"][0].sum()) / steps
    scale = compute / (sum(m * (f0 + f1 * batch / m) for f0, f1 in fb) + sum(adam))
    fb = [(f0 * scale, f1 * scale) for f0, f1 in fb]
    net = ConvNet.of(config, shape)
    dims = list(run.attrs["dims"])
    costs = BackpropCosts(dims[:-1], batch, threads, sum(f0 for f0, _ in fb), sum(f1 for _, f1 in fb),
                          sum(adam) * scale, float(a["timing/data"][0].sum()) / steps / batch, sum(params),
                          eval=_evaluation(run), scale=scale, source=f"run {run.name}", microbatches=m,
                          library=sync / (2 * m) if VARIANTS[variant].microbatched else 0.0,
                          tail=sync if VARIANTS[variant].program == "ddp" else 0.0,
                          layer_fb=fb, layer_adam=[x * scale for x in adam], params=params,
                          split=list(config.layer_costs or net.costs()[:net.num_layers]), classes=dims[-1],
                          num_train=shape.num_train)
    return costs


def _backprop_from_run(run, variant: str, batch: int, threads: int, evaluation: float, profile=None):
    """A 1-rank backprop-family run: its compute per step sets the level of
    forward+backward and Adam; what else it spent per step is the library's
    (gpipe/1f1b: per microbatch operation, M forwards and M backwards) or
    DDP's tail (sync per step); its data per step, the slicing."""
    a = run.arrays
    dims = list(run.attrs["dims"])[:-1]  # the head is not a hidden layer
    profile = profile or profile_backprop(dims, batch, threads)
    steps = len(batch_rows(int(run.attrs["num_train"]), batch)) * epochs_trained(run)
    microbatched = VARIANTS[variant].microbatched
    m = int(run.config.get("microbatches") or 1) if microbatched else 1
    compute, sync = float(a["timing/compute"][0].sum()) / steps, float(a["timing/sync"][0].sum()) / steps
    scale = compute / (m * (profile.fb0 + profile.fb1 * batch / m) + profile.adam)
    costs = _backprop_costs(profile, scale, eval=evaluation, source=f"run {run.name}", microbatches=m,
                            library=sync / (2 * m) if microbatched else 0.0,
                            tail=sync if VARIANTS[variant].program == "ddp" else 0.0)
    costs.data_row = float(a["timing/data"][0].sum()) / steps / batch
    return costs


def _pff_costs(run, profile: FFProfile, sizes, evaluation) -> FFCosts:
    """A PFF run: its compute sets the steps' level (with the head and label
    scores it includes, spread over the layers), its data the level of the
    recomputation and the once-per-run normalization, both over the whole
    run (a chapter alone is at the mercy of a busy host)."""
    a, config = run.arrays, run.config
    epochs = a["timing/compute"].shape[1]
    chapters = int(config.get("splits") or epochs)
    rows = int(run.attrs["num_train"])
    full = sum(sizes) / profile.batch
    scale = float(a["timing/compute"][0].sum()) / (epochs * full * sum(profile.step))
    recompute = chapters * rows * (profile.inputs_row + sum(profile.forward_row[:-1])) + rows * profile.once_row
    data_scale = float(a["timing/data"][0].sum()) / recompute if recompute > 0 else 1.0
    return _ff_costs(profile, scale, data_scale, eval=evaluation, source=f"run {run.name}")


def scaled(costs, k: float):
    """``costs`` with every work item k times as long (a host k times slower)."""
    if isinstance(costs, BackpropCosts):
        layers = {} if costs.layer_fb is None else {"layer_fb": [(a * k, b * k) for a, b in costs.layer_fb],
                                                    "layer_adam": [x * k for x in costs.layer_adam]}
        return replace(costs, fb0=costs.fb0 * k, fb1=costs.fb1 * k, adam=costs.adam * k, data_row=costs.data_row * k,
                       library=costs.library * k, tail=costs.tail * k, **layers)
    return replace(costs, step=[s * k for s in costs.step], normalize=[s * k for s in costs.normalize],
                   forward_row=[f * k for f in costs.forward_row], data=costs.data * k,
                   inputs_row=costs.inputs_row * k, once_row=costs.once_row * k, sync=costs.sync * k)

"""The one configuration object, its command line, and its validation.

Validation happens here, before any MPI communication, so every rank reaches
the same verdict from the same argv and exits with the same code.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass

from .data import DATASETS

# variant name -> module whose train(config, world, shape, dataset, on_epoch) runs it
VARIANTS = {"pipeline": "pffbench.pipeline", "single-layer": "pffbench.single_layer",
            "all-layers": "pffbench.all_layers", "federated": "pffbench.federated", "perf-opt": "pffbench.perf_opt",
            "backprop": "pffbench.backprop", "dp-backprop": "pffbench.backprop"}
BASELINES = ("backprop", "dp-backprop")  # backprop on the same MLP (pffbench/backprop.py)
TRACED = ("pipeline", *BASELINES)  # variants that record --trace
NEGATIVES = ("random", "fixed", "adaptive", "adaptive-sampled")
CLASSIFIERS = ("goodness", "softmax")
PARTITIONS = ("iid", "label-skew")
DEVICES = ("cpu", "cuda")
TRANSPORTS = ("auto", "p2p")
DEFAULT_OUT = "results/pffbench.h5"


class UsageError(Exception):
    """Bad user input: reported as one line, exit code 2 on every rank."""


@dataclass
class Config:
    variant: str = "pipeline"
    dataset: str = "mnist"
    data_dir: str | None = None
    download: bool = False
    layers: tuple[int, ...] = (500, 500, 500, 500)
    epochs: int = 4
    batch_size: int = 64
    lr: float = 3e-3
    threshold: float = 1.0
    sharpness: float = 20.0
    cooldown: float = 0.5
    seed: int = 0
    threads: int = 0
    device: str = "cpu"
    transport: str = "auto"
    eval_every: int = 0
    score_layers: tuple[int, ...] | None = None
    out: str = DEFAULT_OUT
    name: str | None = None
    model_out: str | None = None
    trace: bool = False
    # the paper's PFF variants (issue 3); see pffbench/chapters.py
    neg: str = "random"
    classifier: str = "goodness"
    splits: int = 0
    softmax_lr: float = 1e-3
    shards: int = 0
    partition: str = "iid"
    classes_per_shard: int = 2
    preset: str | None = None
    # reliability (issue 5); see pffbench/faults.py and pffbench/checkpoint.py
    peer_timeout: float = 600.0
    checkpoint_dir: str | None = None
    resume: bool = False
    inject_fault: tuple[int, int] | None = None  # hidden test flags: RANK:EPOCH
    inject_hang: tuple[int, int] | None = None
    inject_nan: tuple[int, int] | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        values = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        return cls(**values)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so the
    caller decides which rank speaks."""

    def error(self, message):
        raise UsageError(one_line(message))


def one_line(text: str) -> str:
    """``text`` with newlines and other control characters escaped: a user's
    argv (or a path in a message) cannot split the one-line error."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def build_parser(prog: str = "python -m pffbench.run") -> argparse.ArgumentParser:
    d = Config()
    p = _Parser(prog=prog, description="Train a Forward-Forward network with its layers pipelined over MPI ranks "
                "and append the run's timings to an HDF5 file. Launch with e.g. "
                "`mpirun -n 4 python -m pffbench.run`; one rank is the sequential baseline.")
    p.add_argument("--variant", default=d.variant, choices=tuple(VARIANTS),
                   help="training schedule (default: %(default)s: layers pipelined over ranks)")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=d.dataset, choices=DATASETS, help="data set (default: %(default)s)")
    data.add_argument("--data-dir", default=None, metavar="DIR",
                      help="data cache; default $PFFBENCH_DATA, else ./data (bundled MNIST is always found)")
    data.add_argument("--download", action="store_true", help="download missing files from the official mirrors")
    model = p.add_argument_group("model and training")
    model.add_argument("--layers", type=_int_list, default=d.layers, metavar="W1,W2,...",
                       help="hidden layer widths (default: %s)" % ",".join(map(str, d.layers)))
    model.add_argument("--epochs", type=int, default=d.epochs, help="epochs (default: %(default)s)")
    model.add_argument("--batch-size", type=int, default=d.batch_size, help="minibatch size (default: %(default)s)")
    model.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate per layer (default: %(default)s)")
    model.add_argument("--threshold", type=float, default=d.threshold,
                       help="goodness threshold, in mean squared activity per unit (default: %(default)s)")
    model.add_argument("--sharpness", type=float, default=d.sharpness,
                       help="slope k of the logistic loss on (goodness - threshold) (default: %(default)s)")
    model.add_argument("--cooldown", type=float, default=d.cooldown, metavar="FRACTION",
                       help="learning rate decays linearly to 0 from this fraction of training on; "
                            "1 = constant (default: %(default)s)")
    model.add_argument("--score-layers", type=_int_list, default=None, metavar="I,J,...",
                       help="0-based layers whose goodness is summed to classify "
                            "(default: all; the paper's presets: all but the first)")
    model.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    run = p.add_argument_group("execution")
    run.add_argument("--threads", type=int, default=d.threads,
                     help="torch threads per rank; 0 = cores on the node / ranks on the node (default)")
    run.add_argument("--device", default=d.device, choices=DEVICES,
                     help="cpu, or cuda: GPU = local rank mod GPU count (default: %(default)s)")
    run.add_argument("--transport", default=d.transport, choices=TRANSPORTS,
                     help="pipeline activations: auto = a shared-memory ring between ranks on one node and MPI "
                          "messages between nodes; p2p = MPI messages everywhere (default: %(default)s)")
    run.add_argument("--eval-every", type=int, default=d.eval_every, metavar="K",
                     help="also measure test accuracy every K epochs (0 = only at the end; default)")
    output = p.add_argument_group("output")
    output.add_argument("--out", default=d.out, metavar="FILE.h5", help="HDF5 file the run is appended to "
                        "(default: %(default)s)")
    output.add_argument("--name", default=None, help="run name inside the file (default: derived, unique)")
    output.add_argument("--model-out", default=None, metavar="FILE.pt",
                        help="save the trained layers (and classifier heads) here")
    output.add_argument("--trace", action="store_true",
                        help="also record every timed block (compute, send/receive wait, ...) per rank with its "
                             "start and end, for timeline plots (pipeline, backprop, dp-backprop)")
    pff = p.add_argument_group("the paper's PFF variants (single-layer, all-layers, federated, perf-opt)")
    pff.add_argument("--neg", default=d.neg, choices=NEGATIVES,
                     help="negative labels: random each chapter, fixed once, adaptive (most-predicted wrong label, "
                          "each chapter), adaptive-sampled (drawn from the model's softmax); the pipeline "
                          "variant makes random ones per minibatch (default: %(default)s)")
    pff.add_argument("--classifier", default=d.classifier, choices=CLASSIFIERS,
                     help="goodness (argmax of summed goodness) or softmax (a linear head on the scoring "
                          "layers' normalized activities) (default: %(default)s)")
    pff.add_argument("--splits", type=int, default=d.splits, metavar="S",
                     help="chapters; must divide --epochs; 0 = one chapter per epoch (default)")
    pff.add_argument("--softmax-lr", type=float, default=d.softmax_lr,
                     help="Adam learning rate of the softmax head (paper: 1e-4) (default: %(default)s)")
    pff.add_argument("--shards", type=int, default=d.shards, metavar="K",
                     help="federated: data shards, K >= ranks, rank r holds shards r, r+N, ...; 0 = one per rank")
    pff.add_argument("--partition", default=d.partition, choices=PARTITIONS,
                     help="federated: iid shards, or label-skew (each shard at most --classes-per-shard classes, or "
                          "classes/shards rounded up if more: every example is in a shard)")
    pff.add_argument("--classes-per-shard", type=int, default=d.classes_per_shard, metavar="M",
                     help="federated label-skew: classes per shard (default: %(default)s)")
    pff.add_argument("--preset", default=None, metavar="NAME",
                     help="settings of a row of the paper's Tables 1-5; explicit flags override (see --list-presets)")
    pff.add_argument("--list-presets", action=_ListPresets, help="list the presets and exit")
    rel = p.add_argument_group("reliability")
    rel.add_argument("--peer-timeout", type=float, default=d.peer_timeout, metavar="SECONDS",
                     help="abort the job when a rank waits this long on a peer (a hung or lost rank) "
                          "(default: %(default)s)")
    rel.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                     help="save every rank's state here at each epoch (pipeline) or chapter (PFF variants) "
                          "boundary, and on SIGTERM/SIGINT")
    rel.add_argument("--resume", action="store_true",
                     help="continue from the newest checkpoint in --checkpoint-dir that every rank completed "
                          "(starts from scratch if there is none)")
    from .faults import rank_epoch
    for flag in ("--inject-fault", "--inject-hang", "--inject-nan"):  # for tests: see pffbench/faults.py
        p.add_argument(flag, type=rank_epoch, default=None, metavar="RANK:EPOCH", help=argparse.SUPPRESS)
    return p


class _ListPresets(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from .presets import listing
        print(listing())
        parser.exit(0)


def parse_config(argv=None) -> Config:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.preset is not None:
        from .presets import PRESETS
        if args.preset not in PRESETS:
            raise UsageError(f"unknown --preset {args.preset!r}: see --list-presets")
        parser.set_defaults(**PRESETS[args.preset].settings)  # explicit flags still win
        args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    config = Config(**values)
    validate(config)
    return config


def validate(config: Config, world_size: int | None = None) -> None:
    """Raise UsageError with one line if the configuration cannot run."""
    floats = {"--lr": config.lr, "--threshold": config.threshold, "--sharpness": config.sharpness,
              "--cooldown": config.cooldown, "--softmax-lr": config.softmax_lr, "--peer-timeout": config.peer_timeout}
    for flag, value in floats.items():
        if not math.isfinite(value):
            raise UsageError(f"{flag} must be a finite number, got {value}")
    if not config.peer_timeout > 0:
        raise UsageError(f"--peer-timeout must be positive, got {config.peer_timeout}")
    limits = {"--epochs": (config.epochs, 10 ** 6), "--batch-size": (config.batch_size, 2 ** 31 - 1),
              "--threads": (config.threads, 4096), "--shards": (config.shards, 10 ** 6),
              "--classes-per-shard": (config.classes_per_shard, 10 ** 4), "--splits": (config.splits, 10 ** 6),
              "--layers widths": (max(config.layers, default=0), 10 ** 6)}
    for flag, (value, limit) in limits.items():
        if value > limit:
            raise UsageError(f"{flag} {value} is beyond what pffbench can run (at most {limit})")
    if config.seed >= 2 ** 32:
        raise UsageError(f"--seed must be below 2**32, got {config.seed}")
    if config.resume and not config.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir DIR (where the checkpoints are)")
    if config.checkpoint_dir is not None and config.variant in BASELINES:
        raise UsageError(f"--checkpoint-dir and --resume work with the FF variants, not {config.variant}")
    if config.inject_nan is not None and config.variant in BASELINES:
        raise UsageError(f"--inject-nan tests the FF variants' checks for non-finite layers; {config.variant} has none")
    for flag in ("inject_fault", "inject_hang", "inject_nan"):
        spec = getattr(config, flag)
        if spec is None:
            continue
        rank, epoch = spec
        if epoch >= config.epochs or (world_size is not None and rank >= world_size):
            raise UsageError(f"--{flag.replace('_', '-')} {rank}:{epoch}: no such rank or epoch "
                             f"({world_size or '?'} ranks, {config.epochs} epochs)")
    positive = {"--epochs": config.epochs, "--batch-size": config.batch_size}
    for flag, value in positive.items():
        if value <= 0:
            raise UsageError(f"{flag} must be positive, got {value}")
    if any(width <= 0 for width in config.layers):
        raise UsageError(f"--layers widths must be positive, got {','.join(map(str, config.layers))}")
    if not config.lr > 0:
        raise UsageError(f"--lr must be positive, got {config.lr}")
    if not config.threshold > 0:
        raise UsageError(f"--threshold must be positive, got {config.threshold}")
    if not config.sharpness > 0:
        raise UsageError(f"--sharpness must be positive, got {config.sharpness}")
    if not 0 <= config.cooldown <= 1:
        raise UsageError(f"--cooldown must be in [0, 1], got {config.cooldown}")
    if config.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {config.threads}")
    if config.eval_every < 0:
        raise UsageError(f"--eval-every must be >= 0, got {config.eval_every}")
    if config.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {config.seed}")
    if config.score_layers is not None:
        bad = [i for i in config.score_layers if not 0 <= i < len(config.layers)]
        if bad:
            raise UsageError(f"--score-layers {bad} out of range for {len(config.layers)} layers (0-based)")
    if config.trace and config.variant not in TRACED:
        raise UsageError(f"--trace works with the {', '.join(TRACED)} variants, not {config.variant}")
    if config.variant in BASELINES:
        _validate_baseline(config, world_size)
        return
    _validate_pff(config, world_size)
    if world_size is not None and config.variant == "pipeline" and world_size > len(config.layers):
        raise UsageError(f"{world_size} ranks but only {len(config.layers)} layers: "
                         f"use at most {len(config.layers)} ranks or more --layers")


def _validate_pff(config: Config, world_size: int | None) -> None:
    chapters = config.splits or config.epochs
    if config.splits < 0:
        raise UsageError(f"--splits must be >= 0, got {config.splits}")
    if config.epochs % chapters:
        raise UsageError(f"--splits {config.splits} does not divide --epochs {config.epochs}")
    if not config.softmax_lr > 0:
        raise UsageError(f"--softmax-lr must be positive, got {config.softmax_lr}")
    if config.shards < 0 or config.classes_per_shard < 1:
        raise UsageError("--shards must be >= 0 and --classes-per-shard >= 1")
    if config.variant == "pipeline":
        if config.neg != "random" or config.classifier != "goodness" or config.splits:
            raise UsageError("the pipeline variant makes random negatives per minibatch and classifies by goodness: "
                             "--neg, --classifier and --splits need a PFF --variant (single-layer, all-layers, ...)")
        return
    if config.eval_every:
        raise UsageError(f"--eval-every works with the pipeline variant only; {config.variant} evaluates at the end")
    if world_size is None:
        return
    layers = len(config.layers)
    if config.variant == "single-layer" and world_size not in (1, layers):
        raise UsageError(f"single-layer needs one rank per layer ({layers}) or 1 rank (its sequential twin), "
                         f"got {world_size} ranks")
    if config.variant in ("all-layers", "perf-opt") and world_size > chapters:
        raise UsageError(f"{world_size} ranks but only {chapters} chapters (--splits): chapters go round-robin, "
                         f"so use at most {chapters} ranks")
    if config.variant == "federated" and world_size > (config.shards or world_size):
        raise UsageError(f"{world_size} ranks but only {config.shards} --shards: every rank needs a shard")


def _validate_baseline(config: Config, world_size: int | None) -> None:
    """backprop is one process (dp-backprop is its data-parallel form); the
    PFF flags mean nothing to either."""
    d = Config()
    pff_flags = {"--neg": config.neg != d.neg, "--classifier": config.classifier != d.classifier,
                 "--splits": config.splits != d.splits, "--shards": config.shards != d.shards,
                 "--partition": config.partition != d.partition}
    used = [flag for flag, changed in pff_flags.items() if changed]
    if used:
        raise UsageError(f"{', '.join(used)}: PFF flags, meaningless for {config.variant} "
                         "(an MLP with a softmax head trained by backprop)")
    if world_size is not None and config.variant == "backprop" and world_size > 1:
        raise UsageError(f"backprop runs in one process, got {world_size} ranks: "
                         f"use --variant dp-backprop for data-parallel backprop over MPI")
    if world_size is not None and world_size > config.batch_size:
        raise UsageError(f"{world_size} ranks but --batch-size {config.batch_size}: "
                         "every rank needs a row of each minibatch")

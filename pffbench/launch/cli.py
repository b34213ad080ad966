"""The command line of `python -m pffbench.run`: the parser, presets, and the
Config it makes (validated by launch/validate.py before any MPI communication,
so every rank reaches the same verdict from the same argv)."""
from __future__ import annotations

import argparse
import dataclasses
import difflib

from ..core.config import CLASSIFIERS, DEVICES, TRANSPORTS, Config, UsageError, one_line
from ..core.partition import PARTITIONS
from ..datasets.load import DATASETS
from ..ff.layer import NORMS
from ..ff.negatives import STRATEGIES as NEGATIVES
from .validate import validate
from ..core.variants import VARIANTS
from ..learn.rules import OBJECTIVES


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
        raise UsageError(one_line(message + _launch_hint(message, self.prog)))


def _launch_hint(message: str, prog: str = "python -m pffbench.run") -> str:
    """`run -n 4` (or -np 4): the rank count is the launcher's flag, not ours."""
    import re
    match = re.search(r"unrecognized arguments:.*?(?:^|\s)-(?:np|n)(?:\s+|=)?(\d+)?", message)
    if not match:
        return ""
    n = match.group(1) or "N"
    return f"; the number of ranks is mpiexec's: mpiexec -n {n} {prog} ..."


RUN_DESCRIPTION = ("Train a Forward-Forward network with its layers pipelined over MPI ranks and append the run's "
                   "timings to an HDF5 file. Launch with e.g. `mpirun -n 4 python -m pffbench.run`; one rank is the "
                   "sequential baseline.")


def build_parser(prog: str = "python -m pffbench.run", description: str = RUN_DESCRIPTION) -> argparse.ArgumentParser:
    """The parser of every flag, in groups; defaults are Config's.  ``prog`` and ``description``: a command
    that takes run's flags to describe a run (e.g. probes/layer_costs.py) says what it is itself."""
    d = Config()
    p = _Parser(prog=prog, description=description)
    p.add_argument("--variant", default=d.variant, choices=tuple(VARIANTS),
                   help="training schedule (default: %(default)s: layers pipelined over ranks)")
    p.add_argument("--objective", default=None, choices=OBJECTIVES,
                   help="local learning rule of the FF variants: ff (goodness with wrong-label negatives), "
                        "local-softmax (a softmax auxiliary head per layer, the paper's Performance-Optimized "
                        "rule), scff (self-contrastive FF, no label in the input, linear read-out), cwcomp "
                        "(channel-wise competitive FF for --conv blocks: a channel group per class, no negatives) "
                        "(default: ff; perf-opt: local-softmax)")
    _data_flags(p, d)
    _model_flags(p, d)
    _execution_flags(p, d)
    _output_flags(p, d)
    _pff_flags(p, d)
    _reliability_flags(p, d)
    return p


def _data_flags(p, d: Config) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=d.dataset, choices=DATASETS, help="data set (default: %(default)s)")
    data.add_argument("--data-dir", default=None, metavar="DIR",
                      help="data cache; default $PFFBENCH_DATA, else ./data (bundled MNIST is always found)")
    data.add_argument("--download", action="store_true", help="download missing files from the official mirrors")
    data.add_argument("--validation", type=int, default=d.validation, metavar="N",
                      help="hold N training rows out (the same seeded choice for every run), train on the rest and "
                           "evaluate on them instead of the test set (how python -m pffbench.tune picks settings); "
                           "0 = evaluate on the test set (default)")


def _model_flags(p, d: Config) -> None:
    model = p.add_argument_group("model and training")
    # None until parse_config: without --layers, an MLP gets Config's widths and a --conv net no dense layer
    model.add_argument("--layers", type=_int_list, default=None, metavar="W1,W2,...",
                       help="hidden layer widths; with --conv, the dense layers after the last block "
                            "(default: %s; with --conv: none)" % ",".join(map(str, d.layers)))
    model.add_argument("--conv", type=_int_list, default=None, metavar="C1,C2,...",
                       help="a convolutional net: channels of each block (3x3 convolution, padding 1, GroupNorm, "
                            "ReLU; 2x2 max pooling between blocks) on the data set's images; the backprop "
                            "baselines, and every FF variant with --objective local-softmax or cwcomp (perf-opt: "
                            "local-softmax) (default: none, an MLP)")
    model.add_argument("--layer-costs", type=_int_list, default=d.layer_costs, metavar="C1,C2,...",
                       help="each hidden layer's cost (any unit: only their ratios count), for the partition of "
                            "the pipeline's layers over ranks (pipeline, gpipe, 1f1b); `python -m "
                            "pffbench.probes.layer_costs` with the run's flags measures and prints them (every "
                            "local rule but ff, and gpipe, 1f1b; ff: give them by hand) (default: modelled, by "
                            "weight counts, a conv net's by FLOPs)")
    model.add_argument("--augment", action="store_true",
                       help="random crop (4 pixels of zero padding, cropped back at a random offset) and horizontal "
                            "flip (p = 0.5) of every training image, the standard CIFAR-10 recipe; never of test or "
                            "validation rows; image data, the backprop baselines and --variant pipeline --objective "
                            "local-softmax or cwcomp (default: off)")
    model.add_argument("--epochs", type=int, default=d.epochs, help="epochs (default: %(default)s)")
    model.add_argument("--batch-size", type=int, default=d.batch_size, help="minibatch size (default: %(default)s)")
    model.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate per layer (default: %(default)s)")
    model.add_argument("--threshold", type=float, default=d.threshold,
                       help="goodness threshold, in mean squared activity per unit (default: %(default)s)")
    model.add_argument("--sharpness", type=float, default=d.sharpness,
                       help="slope k of the logistic loss on (goodness - threshold) (default: %(default)s)")
    model.add_argument("--norm", default=d.norm, choices=NORMS,
                       help="what an FF layer's input is normalized to: unit RMS, or unit length as in Hinton's paper "
                            "and pytorch_forward_forward, which makes Adam's steps sqrt(input width) times smaller "
                            "against the input (the paper presets' lr 0.01 learns so) (default: %(default)s)")
    model.add_argument("--cooldown", type=float, default=d.cooldown, metavar="FRACTION",
                       help="learning rate decays linearly to 0 from this fraction of training on; "
                            "1 = constant (default: %(default)s)")
    model.add_argument("--score-layers", type=_int_list, default=None, metavar="I,J,...",
                       help="0-based layers whose goodness is summed to classify "
                            "(default: all; the paper's presets: all but the first)")
    model.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")


def _execution_flags(p, d: Config) -> None:
    run = p.add_argument_group("execution")
    run.add_argument("--threads", type=int, default=d.threads,
                     help="torch threads per rank; 0 = cores on the node / ranks on the node (default)")
    run.add_argument("--device", default=d.device, choices=DEVICES,
                     help="cpu, or cuda: GPU = local rank mod GPU count (default: %(default)s)")
    run.add_argument("--transport", default=d.transport, choices=TRANSPORTS,
                     help="pipeline activations: auto = a shared-memory ring between ranks on one node and MPI "
                          "messages between nodes; p2p = MPI messages everywhere (default: %(default)s)")
    run.add_argument("--eval-every", type=int, default=d.eval_every, metavar="K",
                     help="also measure test accuracy every K epochs (0 = only at the end; default); "
                          "pipeline and the backprop baselines")
    run.add_argument("--eval-every-steps", type=int, default=d.eval_every_steps, metavar="K",
                     help="also measure test accuracy every K minibatch steps (pipeline and the backprop baselines)")
    run.add_argument("--target-accuracy", type=float, default=None, metavar="A",
                     help="record the training time (evaluation excluded) to the first evaluation with test "
                          "accuracy >= A, e.g. 0.97; evaluated as --eval-every(-steps) says")
    run.add_argument("--stop-at-target", action="store_true",
                     help="end the run (recorded complete) once --target-accuracy is reached "
                          "(pipeline and the backprop baselines)")
    run.add_argument("--microbatches", type=int, default=d.microbatches, metavar="M",
                     help="gpipe, 1f1b: microbatches per minibatch; M >= ranks, M divides every minibatch "
                          "(default: %(default)s)")


def _output_flags(p, d: Config) -> None:
    output = p.add_argument_group("output")
    output.add_argument("--out", default=d.out, metavar="FILE.h5", help="HDF5 file the run is appended to, its folder "
                        "created if missing (default: %(default)s)")
    output.add_argument("--name", default=None, help="run name inside the file (default: derived, unique)")
    output.add_argument("--model-out", default=None, metavar="FILE.pt",
                        help="save the trained layers (and classifier heads) here")
    output.add_argument("--trace", action="store_true",
                        help="also record every timed block (compute, send/receive wait, ...) per rank with its "
                             "start and end, for timeline plots (every variant)")
    output.add_argument("--quiet", action="store_true",
                        help="print no start line, progress or summary (errors and warnings still go to stderr)")


def _pff_flags(p, d: Config) -> None:
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


def _reliability_flags(p, d: Config) -> None:
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
    from ..reliability.faults import rank_epoch
    for flag in ("--inject-fault", "--inject-hang", "--inject-nan"):  # for tests: see pffbench/reliability/faults.py
        p.add_argument(flag, type=rank_epoch, default=None, metavar="RANK:EPOCH", help=argparse.SUPPRESS)


class _ListPresets(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from .presets import listing
        print(listing())
        parser.exit(0)


def _shorten_preset(args, settings: dict) -> None:
    """``--preset P --epochs E``: keep the preset's epochs per chapter (the
    paper's: 1), so its --splits follows E; an E they do not divide is refused
    with the flags that would do."""
    if args.epochs == settings.get("epochs") or not settings.get("splits") or args.splits != settings["splits"]:
        return  # the preset's own length, or --splits given explicitly
    per_chapter = settings["epochs"] // settings["splits"]
    if args.epochs % per_chapter:
        raise UsageError(f"--preset {args.preset} trains {per_chapter} epochs per chapter; --epochs {args.epochs} "
                         f"is not a multiple: add --splits S with S dividing {args.epochs} (e.g. --splits "
                         f"{args.epochs}: one epoch per chapter)")
    args.splits = args.epochs // per_chapter


def parse_config(argv=None, prog: str = "python -m pffbench.run", description: str = RUN_DESCRIPTION) -> Config:
    parser = build_parser(prog, description)
    args = parser.parse_args(argv)
    if args.preset is not None:
        from .presets import PRESETS
        if args.preset not in PRESETS:
            close = difflib.get_close_matches(args.preset, PRESETS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(f"unknown --preset {args.preset!r}: {hint}see --list-presets")
        settings = PRESETS[args.preset].settings
        parser.set_defaults(**settings)  # explicit flags still win
        args = parser.parse_args(argv)
        _shorten_preset(args, settings)
    if args.layers is None:
        args.layers = () if args.conv else Config().layers
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    config = Config(**values)
    validate(config)
    return config

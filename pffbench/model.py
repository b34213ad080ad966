"""`python -m pffbench.model`: a calibrated discrete-event performance model
of every schedule (pffbench/perfmodel/, derivations in docs/model.md).

  predict   predicted training time, speedup, efficiency and where the time
            goes, for p = 1, 2, 4, ... on a cluster you describe
  validate  predict every run of a results file from its own settings and a
            1-rank run of its configuration; measured vs predicted
  plot      plots/model_speedup.png and plots/model_timeline.png
  paper     the paper's headline setup and deeper nets, predicted
  links     the table of interconnects (alpha, beta, source)
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from .core.config import UsageError, one_line
from .launch.command import command
from .core.variants import VARIANTS
from .learn.rules import OBJECTIVES
from .perfmodel import calibrate, links, predict as model, validate as validation
from .analysis import sidecar


DEFAULT_LAYERS = [2000] * 4  # the paper's hidden widths


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, unless the help says it already or there is none to say."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.default in (None, False, 0, "", [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _cluster_args(p) -> None:
    p.add_argument("--network", default="10GbE", help=f"link between nodes: {', '.join(links.TABLE)}, or measured "
                   "figures ALPHA,BETA[,OVERHEAD] (s, bytes/s, s; every link option takes them)")
    p.add_argument("--intra", default="shm", help="MPI link within a node (default shm)")
    p.add_argument("--group", default="devvm-gloo",
                   help="torch.distributed's send/recv within a node (gpipe, 1f1b; default devvm-gloo)")
    p.add_argument("--group-reduce", default="devvm-gloo-allreduce",
                   help="torch.distributed's allreduce within a node (ddp; default devvm-gloo-allreduce)")
    p.add_argument("--alpha", type=float, help="override the network's latency, seconds")
    p.add_argument("--beta", type=float, help="override the network's bandwidth, bytes/s")
    p.add_argument("--ranks-per-node", type=int, default=1, help="ranks sharing a node (and its shared-memory link)")
    p.add_argument("--cores-per-node", type=int, default=0, help="cores of a node (0: ranks per node x threads)")
    p.add_argument("--threads", type=int, default=1, help="threads per rank")
    p.add_argument("--allreduce", default="auto", choices=("auto", "ring", "tree"),
                   help="allreduce algorithm of the data-parallel baselines (auto: the cheaper for the size)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pffbench.model", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("predict", formatter_class=_Defaults, help="predict training time and speedup")
    p.add_argument("--variant", default="pipeline,all-layers,single-layer,federated,dp-backprop",
                   help=f"comma-separated: {', '.join(model.VARIANTS)}")
    p.add_argument("--layers", type=_ints, default=None,
                   help="hidden widths (default: 2000,2000,2000,2000; with a conv net's --calibrate, its run's net)")
    p.add_argument("--input", type=int, default=784, help="input width (MNIST 784)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per minibatch (global, for data parallelism)")
    p.add_argument("--epochs", type=int, default=1,
                   help="epochs (the PFF variants: chapters too, unless --splits; their wavefront fills only "
                        "with chapters >= p, so 1 chapter gives no speedup)")
    p.add_argument("--splits", type=int, default=0, help="PFF chapters (default: one per epoch)")
    p.add_argument("--num-train", type=int, default=None,
                   help="training rows per epoch (default: 60000; a conv net's calibration: its run's)")
    p.add_argument("--ranks", type=_ints, default=[1, 2, 4, 8, 16, 32, 64],
                   help="rank counts p, comma-separated (a variant is predicted only where it can run)")
    p.add_argument("--calibrate", metavar="RESULTS.h5", help="calibrate from a 1-rank run in this file "
                   "(else: microbenchmarks of the net on this machine)")
    p.add_argument("--run", help="the 1-rank run to calibrate from (default: the first of the variant)")
    p.add_argument("--microbatches", type=int, default=0,
                   help="gpipe/1f1b microbatches per minibatch (default: the calibrating run's, else 4)")
    p.add_argument("--objective", default=None, choices=OBJECTIVES,
                   help="the local rule of the FF-family variants (ff, local-softmax, scff; cwcomp trains conv "
                        "nets, which the model predicts from a run: --calibrate; default: each "
                        "variant's own): its step's costs and messages (pffbench/learn/rules)")
    p.add_argument("--race", metavar="RESULTS.h5", default=None,
                   help="instead: each contender of a race file (jobs/race.sbatch) at --ranks, its predicted time "
                        "to --target from its measured samples to it (pffbench/perfmodel/race.py)")
    p.add_argument("--target", type=float, default=0.98, metavar="A",
                   help="with --race: the target accuracy (default: %(default)s)")
    p.add_argument("--format", choices=("text", "markdown"), default="text", help="table format")
    p.add_argument("--remeasure", action="store_true",
                   help="measure the microbenchmarks again, and keep the new figures in place of this machine's "
                        "cached ones ($PFFBENCH_CACHE, default ~/.cache/pffbench/microbenchmarks.json)")
    _cluster_args(p)
    v = sub.add_parser("validate", formatter_class=_Defaults, help="measured vs predicted for every run in a results file")
    v.add_argument("results_file")
    v.add_argument("--cores-per-node", type=int, default=0, help="cores of the machine the runs ran on "
                   "(not recorded; default: this machine's)")
    v.add_argument("--intra", default="shm", help="MPI link within a node (default shm)")
    v.add_argument("--network", default="10GbE", help="link between the runs' nodes")
    v.add_argument("--alpha", type=float, help="override the network's latency, seconds (e.g. from linkprobe)")
    v.add_argument("--beta", type=float, help="override the network's bandwidth, bytes/s")
    v.add_argument("--group", default="devvm-gloo", help="torch.distributed's send/recv within a node (gpipe, 1f1b)")
    v.add_argument("--group-reduce", default="devvm-gloo-allreduce",
                   help="torch.distributed's allreduce within a node (ddp)")
    v.add_argument("--format", choices=("text", "markdown"), default="text", help="table format")
    g = sub.add_parser("plot", formatter_class=_Defaults, help="model_speedup.png and model_timeline.png")
    g.add_argument("results_file", help="validation runs (measured points, calibration)")
    g.add_argument("-o", "--out-dir", default=sidecar.DEFAULT_FOLDER,
                   help="folder the figures go in (default: %(default)s, which git ignores; the README's figures "
                        "in plots/ come from `make figures`)")
    g.add_argument("--cores-per-node", type=int, default=0,
                   help="cores of the machine the runs ran on (0: this machine's)")
    g.add_argument("--intra", default="shm", help="MPI link within the node the runs ran on")
    g.add_argument("--deep-layers", type=int, default=16, help="depth of the [784, 2000 x L] net of the cluster panels")
    g.add_argument("--networks", default="10GbE,IB-HDR", help="a cluster panel per network (see model links)")
    g.add_argument("--timeline-ranks", type=int, default=4,
                   help="ranks of the predicted timeline when the file has no traced pipeline run")
    g.add_argument("--remeasure", action="store_true", help="measure the microbenchmarks again (see predict)")
    g.add_argument("--race", action="store_true",
                   help="RESULTS.h5 is a race file (jobs/race.sbatch): draw model_race.png instead, each contender's "
                        "predicted time to --target at p = 1..64, one rank per node, a panel per network")
    g.add_argument("--target", type=float, default=0.98, metavar="A",
                   help="with --race: the target accuracy (default: %(default)s)")
    s = sub.add_parser("paper", formatter_class=_Defaults, help="the paper's headline setup and deeper nets, predicted")
    s.add_argument("--networks", default="1GbE,10GbE,IB-HDR", help="networks of the tables (see model links)")
    s.add_argument("--calibrate", metavar="RESULTS.h5", help="a 1-rank pipeline run of [784, 2000 x 4] to scale from")
    s.add_argument("--quick", action="store_true", help="fewer batch sizes and depths")
    s.add_argument("--remeasure", action="store_true", help="measure the microbenchmarks again (see predict)")
    sub.add_parser("links", help="the interconnect table")
    return parser


def network_from(args) -> links.Link:
    """--network, with --alpha/--beta overriding its figures."""
    inter = links.link(args.network)
    if args.alpha is not None or args.beta is not None:
        inter = links.Link(f"{inter.name} (custom)", args.alpha if args.alpha is not None else inter.alpha,
                           args.beta if args.beta is not None else inter.beta, "given on the command line")
    return inter


def cluster_from(args) -> links.Cluster:
    inter = network_from(args)
    cores = args.cores_per_node or args.ranks_per_node * args.threads
    return links.Cluster(args.ranks_per_node, cores, args.threads, links.link(args.intra), inter,
                         group=links.link(args.group), group_reduce=links.link(args.group_reduce))


def _calibration(args, variant: str):
    dims = [args.input, *(args.layers or DEFAULT_LAYERS)]
    if not args.calibrate:
        return calibrate.measured(variant, dims, args.batch_size, args.threads, args.microbatches or 4,
                                  objective=args.objective if not VARIANTS[variant].baseline else None)
    from . import results
    from .analysis.analysis import busy_host
    runs = results.read_runs(args.calibrate, [args.run] if args.run else None)
    # data-parallel backprop on 1 rank is single-process backprop (perfmodel/race.py): each one's 1-rank runs
    # calibrate the others (its own first, then backprop's)
    data_parallel = {name for name, v in VARIANTS.items() if v.baseline and not v.microbatched}
    alike = data_parallel if variant in data_parallel else {variant}
    ones = [r for r in runs
            if int(r.attrs.get("world_size", 0)) == 1 and (args.run or r.attrs.get("variant") in alike)]
    if not ones:
        raise UsageError(f"{args.calibrate} has no 1-rank {args.run or ' or '.join(sorted(alike))} run to calibrate "
                         f"from (--run NAME picks one)")
    ones.sort(key=lambda r: (r.attrs.get("variant") != variant, r.attrs.get("variant") != "backprop", busy_host(r)))
    same_threads = [r for r in ones if calibrate.run_threads(r) == args.threads]
    chosen = (same_threads or ones)[0]
    if calibrate.run_threads(chosen) != args.threads:
        print(f"pffbench.model: warning: {chosen.name} ran {calibrate.run_threads(chosen)} thread(s) per rank, not "
              f"--threads {args.threads}: its costs are those threads'", file=sys.stderr)
    if busy_host(chosen):
        print(f"pffbench.model: warning: {chosen.name} was measured on a busy host (report's notes): the "
              f"predictions are as slow as that host was", file=sys.stderr)
    try:
        costs = calibrate.from_run(chosen)
    except ValueError as error:  # e.g. a conv net in a PFF chapter schedule
        raise UsageError(str(error)) from None
    if getattr(costs, "split", None) is not None:  # a conv net: its measured layers, predicted as it ran
        if costs.batch != args.batch_size or args.layers is not None:
            raise UsageError(f"{args.calibrate}: a conv net's calibration keeps its run's net and batch "
                             f"(--batch-size {costs.batch}); --input and --layers do not apply to it")
    elif costs.dims != dims or costs.batch != args.batch_size:
        costs = calibrate.retarget(costs, dims, args.batch_size)
    if args.microbatches and VARIANTS[variant].microbatched:
        costs = replace(costs, microbatches=args.microbatches)
    return costs


def format_rows(rows: list[dict], markdown: bool) -> str:
    head = ["variant", "p", "predicted s", "speedup", "efficiency", "mean work", "imbalance", "library",
            "fill/drain", "link waits"]
    keys = ["variant", "p", "seconds", "speedup", "efficiency", "mean work", "imbalance", "library",
            "fill/drain, bubble", "link waits"]
    cells = [[str(r[k]) if k in ("variant", "p") else f"{r[k]:.3f}" if k in ("speedup", "efficiency")
              else f"{r[k]:.2f}" for k in keys] for r in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(x) for x in col) for col in zip(head, *cells)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in [head] + cells)


def cmd_race(args) -> int:
    from . import results
    from .perfmodel import race
    cluster = cluster_from(args)
    rows, notes = race.predict_race(results.read_runs(args.race), args.target, args.ranks, cluster, args.threads)
    if not rows:
        raise UsageError(f"{args.race} holds no race runs (python -m pffbench.tune) with {args.threads} "
                         f"thread(s) per rank")
    inter = cluster.inter
    print(f"the race of {args.race} to {args.target:g}, predicted: {cluster.ranks_per_node} rank(s)/node, "
          f"{cluster.cores_per_node} core(s)/node, {cluster.threads} thread(s)/rank; network {inter.name} "
          f"(alpha {inter.alpha * 1e6:.1f} us, beta {inter.beta / 1e9:.2f} GB/s); time to target = the model's "
          f"epoch seconds x measured samples to target / samples per epoch")
    print(race.format_rows(rows, args.format == "markdown"))
    for line in notes:
        print(f"note: {line}")
    return 0


def cmd_predict(args) -> int:
    if args.race:
        return cmd_race(args)
    cluster = cluster_from(args)
    if args.num_train is not None and args.num_train < 1:
        raise UsageError(f"--num-train must be >= 1, got {args.num_train}")
    rows = []
    for variant in [v.strip() for v in args.variant.split(",") if v.strip()]:
        if variant not in model.VARIANTS:
            raise UsageError(f"unknown variant {variant!r}; modelled: {', '.join(model.VARIANTS)}")
        costs = _calibration(args, variant)
        microbatches = getattr(costs, "microbatches", None)
        conv = getattr(costs, "split", None) is not None  # a conv net's layers, as its run had them
        layers = len(costs.dims) - 1 if conv else len(args.layers or DEFAULT_LAYERS)
        num_train = args.num_train or (costs.num_train if conv else 60000)
        settings = model.Settings(num_train, args.epochs, args.splits, True, args.allreduce)
        ranks = [p for p in args.ranks if model.runs_on(variant, p, layers, microbatches)]
        rows += model.scaling(variant, costs, cluster, [1] + [p for p in ranks if p != 1], settings)
    inter = cluster.inter
    net = (f"the conv net of {costs.source} ({layers} layers)" if conv
           else f"net [{args.input}, {', '.join(map(str, args.layers or DEFAULT_LAYERS))}]")
    print(f"{net}, batch {args.batch_size}, {args.epochs} epoch(s); "
          f"{cluster.ranks_per_node} rank(s)/node, {cluster.cores_per_node} core(s)/node, "
          f"{cluster.threads} thread(s)/rank; network {inter.name} (alpha {inter.alpha * 1e6:.1f} us, "
          f"beta {inter.beta / 1e9:.2f} GB/s)")
    print(costs_source(args))
    print(format_rows(rows, args.format == "markdown"))
    chapters = args.splits or args.epochs
    for variant in dict.fromkeys(r["variant"] for r in rows):
        if model.REGISTRY[variant].pff and model.REGISTRY[variant].program != "federated" and chapters < max(
                r["p"] for r in rows if r["variant"] == variant):
            print(f"note: {variant} trains {chapters} chapter(s): its wavefront needs chapters >= p to keep p ranks "
                  f"busy (speedup at most the chapters; the paper: 100); --epochs or --splits")
    return 0


def costs_source(args) -> str:
    """The line that says what the predicted compute rests on: a measured run (--calibrate), or the
    microbenchmarks of the net on this machine, with its CPU, when they were measured and the load
    then (a busy host slows them), and whether they came from the per-machine cache (probes/profile.py:
    the same figures every run until --remeasure)."""
    from .probes import profile
    from .store import provenance
    if args.calibrate:
        return (f"compute costs: the 1-rank {args.run or 'run of each variant'} in {args.calibrate} "
                f"(retargeted by microbenchmarks on this machine where its net or batch differs)")
    cores, used = os.cpu_count() or 1, profile.USED
    loads = [u["load"][0] for u in used if u.get("load")]
    worst = max(loads) if loads else float("nan")
    when = sorted({u["measured"] for u in used})
    cached = sum(u["cached"] for u in used)
    origin = (f"measured {when[0] if len(when) == 1 else f'{when[0]} to {when[-1]}'}" if when else "measured now")
    store = (f"{cached} of {len(used)} from the cache {profile._CACHE} (--remeasure measures again)"
             if profile._CACHE else "not cached")
    return (f"compute costs: microbenchmarks of this net on this machine ({provenance.cpu_model()}, {cores} "
            f"cores), {origin}, 1-minute load then up to {worst:.1f}"
            f"{' (busy: the costs are slower than on a quiet host)' if worst > cores else ''}; {store}; "
            f"--calibrate RESULTS.h5 rests them on a measured run instead")


def cmd_validate(args) -> int:
    if not os.path.exists(args.results_file):
        raise UsageError(f"no such results file: {args.results_file}")
    base = links.Cluster(intra=links.link(args.intra), inter=network_from(args), group=links.link(args.group),
                         group_reduce=links.link(args.group_reduce))
    checks, skipped = validation.check(args.results_file, args.cores_per_node or None, base)
    print(validation.table(checks, args.format == "markdown"))
    print()
    print(validation.case_table(checks, args.format == "markdown"))
    for line in skipped:
        print(f"not predicted: {line}")
    s = validation.summary(checks)
    if s["runs"]:
        print(f"over {s['runs']} predicted runs (p > 1): median |error| {100 * s['median_abs_error']:.1f} %, "
              f"worst {100 * s['worst_abs_error']:.1f} %; schedule-only (work level from the run itself): "
              f"median {100 * s['median_abs_schedule_error']:.1f} %, worst {100 * s['worst_abs_schedule_error']:.1f} %")
        print(f"over {s['cases']} cases (a configuration at one p, median of its repetitions): median |error| "
              f"{100 * s['median_abs_case_error']:.1f} %, worst {100 * s['worst_abs_case_error']:.1f} %")
        for variant, v in validation.by_variant(checks).items():
            print(f"  {variant}: {v['runs']} run(s), median |error| {100 * v['median_abs_error']:.1f} %, "
                  f"worst {100 * v['worst_abs_error']:.1f} %")
    return 0


@command("pffbench.model")
def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        from .probes import profile
        # validate measures nothing it could cache; predict, plot and paper keep the microbenchmarks per machine
        profile.use_cache(profile.default_cache() if hasattr(args, "remeasure") else None,
                          refresh=getattr(args, "remeasure", False))
        profile.USED.clear()  # what this command's costs rest on
        if args.command == "links":
            for lk in links.TABLE.values():
                print(f"{lk.name:>13}  alpha {lk.alpha * 1e6:6.2f} us  beta {lk.beta / 1e9:7.3f} GB/s  {lk.source}")
            return 0
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "validate":
            return cmd_validate(args)
        if args.command == "plot":
            from .perfmodel import study
            return study.cmd_plot(args)
        from .perfmodel import headline
        headline.headline(args)
        headline.deeper(args)
        return 0
    except (UsageError, ValueError) as error:  # the rest of bad input (OSError, ResultsError): @command
        print(f"pffbench.model: error: {one_line(str(error))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

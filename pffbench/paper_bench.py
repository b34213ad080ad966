"""`python -m pffbench.paper_bench`: the PFF variants on MNIST with a short
schedule, each at 1 rank and in parallel, as a Markdown table for docs/paper.md.

Every run goes through `mpiexec -n N python -m pffbench.run` with one torch
thread per rank, so 1 rank is the sequential twin on one core and N ranks use
N cores.  The wavefront bound is the speedup the schedule allows when every
(chapter, layer) costs its weight count and communication is free.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from . import results
from .launch.cli import _Parser
from .launch.command import command
from .core.config import UsageError
from .core.partition import layer_costs
from .instrument.progress import plural
from .store import writer
from .perfmodel.pff import wavefront_bound
from .analysis.analysis import training_seconds

RUNS = [  # (label, variant, extra flags, parallel ranks)
    ("All-Layers, Random, Goodness", "all-layers", ["--neg", "random"], 2),
    ("All-Layers, Adaptive, Goodness", "all-layers", ["--neg", "adaptive"], 2),
    ("All-Layers, Random, Softmax", "all-layers", ["--neg", "random", "--classifier", "softmax"], 2),
    ("Single-Layer, Random, Goodness", "single-layer", ["--neg", "random"], 4),
    ("Federated (IID), Random, Goodness", "federated", ["--neg", "random"], 2),
    ("Performance-Optimized", "perf-opt", [], 2),
]


@command("pffbench.paper_bench")
def main(argv=None) -> int:
    p = _Parser(prog="python -m pffbench.paper_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="500,500,500,500")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--splits", type=int, default=4)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="results/paper_bench.h5")
    p.add_argument("--only", default=None, help="comma-separated run numbers (1-based) to run")
    p.add_argument("--report", action="store_true", help="only print the table of runs already in --out")
    p.add_argument("--claims", action="store_true", help="check each of the paper's claims at this scale "
                   "(the paper presets, shortened; --out defaults to results/paper_claims.h5; see paper_claims.py)")
    p.add_argument("--cifar", action="store_true", help="with --claims: also the CIFAR-10 rows (needs its data)")
    p.add_argument("--seeds", type=int, default=3, help="with --claims: seeds 0..N-1 of every run; verdicts on "
                   "the medians, with how many seeds agree (default: %(default)s)")
    args = p.parse_args(argv)
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or "mpiexec"
    if args.claims:
        from . import paper_claims
        if args.out == p.get_default("out"):
            args.out = "results/paper_claims.h5"
        return paper_claims.run_claims(mpiexec, args)
    common = ["--layers", args.layers, "--epochs", str(args.epochs), "--splits", str(args.splits),
              "--threads", "1", "--out", args.out] + (["--data-dir", args.data_dir] if args.data_dir else [])
    try:
        chosen = {int(i) for i in args.only.split(",")} if args.only else set(range(1, len(RUNS) + 1))
    except ValueError:
        raise UsageError(f"--only: expected comma-separated run numbers, got {args.only!r}") from None
    problem = not args.report and writer.unappendable(args.out)  # before the first run, not in each
    if problem:
        raise UsageError(f"--out: {problem}")
    for number, (label, variant, extra, ranks) in enumerate(RUNS, 1):
        for n in (1, ranks):
            if args.report or number not in chosen:
                continue
            name = f"{variant}{''.join(extra).replace('--', '-')}-n{n}"
            print(f"running {label} on {plural(n, 'rank')}", flush=True)
            done = subprocess.run([mpiexec, "-n", str(n), sys.executable, "-m", "pffbench.run", "--variant",
                                   variant, *extra, *common, "--name", name], stdout=subprocess.DEVNULL)
            if done.returncode:  # the run said why on stderr
                print(f"pffbench.paper_bench: error: {label} on {plural(n, 'rank')} failed "
                      f"(exit {done.returncode})", file=sys.stderr)
                return done.returncode
    print(table(args))
    return 0


def table(args) -> str:
    runs = {run.name: run for run in results.read_runs(args.out)} if os.path.exists(args.out) else {}
    dims = [784, *map(int, args.layers.split(","))]
    lines = ["| run | N | test acc. % | wall s | speedup (training) | wavefront bound | of bound |",
             "|---|---|---|---|---|---|---|"]
    for label, variant, extra, ranks in RUNS:
        base = runs.get(f"{variant}{''.join(extra).replace('--', '-')}-n1")
        for n in (1, ranks):
            run = runs.get(f"{variant}{''.join(extra).replace('--', '-')}-n{n}")
            if run is None:
                lines.append(f"| {label} | {n} | not yet measured | | | | |")
                continue
            a = run.attrs
            accuracy = f"{100 * a['final_test_accuracy']:.2f}"
            if variant == "perf-opt":
                accuracy = f"{100 * a['accuracy_last_head']:.2f} / {100 * a['accuracy_all_heads']:.2f}"
            speedup = bound = share = ""
            if base is not None and n > 1:
                s = training_seconds(base) / training_seconds(run)
                b = wavefront_bound(variant, layer_costs(dims, paired_first=variant != "perf-opt"), args.splits, n)
                speedup, bound, share = f"{s:.2f}x", f"{b:.2f}x", f"{100 * s / b:.0f} %"
            lines.append(f"| {label} | {n} | {accuracy} | {a['wall_time']:.1f} | {speedup} | {bound} | {share} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""`python -m pffbench.paper_bench --claims`: each claim of Aktemur et al.
(arXiv 2404.08573v2) checked at a reduced scale this machine can run.

Every run is a paper preset (pffbench/launch/presets.py) with the net and the
schedule shortened: ``--layers`` (default [784, 500 x 4]) and E epochs in E
chapters (``--epochs``, default 4), one torch thread per rank, through
``mpiexec -n N python -m pffbench.run``.  Runs already in ``--out`` under
their names are reused, so an interrupted check resumes.  Speedups are
measured at the rank counts this machine has (2) and predicted for the
paper's 4 nodes by pffbench's performance model (pffbench/perfmodel/), each
labelled so.  Single-Layer needs one rank per layer, so its claim compares
the two schedules on the net's first two layers on 2 ranks.  Every run is
repeated for seeds 0..N-1 (``--seeds``, default 3): a verdict compares the
medians of the figures the claim compares ("holds", "does not hold", or
"not measurable here" and why) and counts the seeds that agree, since one
seed's accuracy moves by a few tenths of a point.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
from dataclasses import dataclass

from . import results
from .analysis.analysis import busy_host, training_seconds
from .datasets.files import cifar10_flags

@dataclass(frozen=True)
class Spec:
    """One run a claim needs: ``key`` (its name without the seed), the paper preset, its ranks and the
    flags that shorten it (beside --layers and --epochs, which every run gets)."""
    key: str
    preset: str
    ranks: int
    flags: tuple = ()


MNIST_RUNS = [
    Spec("goodness-adaptive-n1", "mnist-goodness-adaptive-all-layers", 1),
    Spec("goodness-adaptive-n2", "mnist-goodness-adaptive-all-layers", 2),
    Spec("goodness-random-n1", "mnist-goodness-random-all-layers", 1),
    Spec("goodness-fixed-n1", "mnist-goodness-fixed-all-layers", 1),
    Spec("softmax-random-n1", "mnist-softmax-random-all-layers", 1),
    Spec("perf-opt-n1", "mnist-perf-opt", 1),
]
# Single-Layer needs one rank per layer: the 2 cores here compare the two schedules on the first two
# layers of the net, 2 ranks each; goodness scored on every layer but the first, as the paper's presets do
SHALLOW = ("--score-layers", "1")
SCHEDULE_RUNS = [
    Spec(f"goodness-{neg}-{schedule}-l2", f"mnist-goodness-{neg}-{schedule}", 2, SHALLOW)
    for neg in ("random", "adaptive") for schedule in ("single-layer", "all-layers")
]
CIFAR_RUNS = [
    Spec("cifar-perf-opt-n1", "cifar10-perf-opt", 1),
    Spec("cifar-softmax-random-n1", "cifar10-softmax-random", 1),
    Spec("cifar-softmax-fixed-n1", "cifar10-softmax-fixed", 1),
    Spec("cifar-goodness-adaptive-n1", "cifar10-goodness-adaptive", 1),
]


def run_name(key: str, seed: int) -> str:
    return f"{key}-s{seed}"


@dataclass
class Claim:
    text: str
    paper: str
    measured: str
    verdict: str


def data_flags(args, preset: str) -> list[str]:
    """Where a run's data comes from: --data-dir (else PFFBENCH_DATA, which the run reads itself); for
    CIFAR-10, its official files there, else its JPEG copy (datasets.files.cifar10_flags)."""
    base = args.data_dir or os.environ.get("PFFBENCH_DATA")
    found = cifar10_flags(base) if preset.startswith("cifar10") and base else None
    return found or (["--data-dir", args.data_dir] if args.data_dir else [])


def layers_of(spec: Spec, args) -> str:
    """The net a run trains: --layers, or its first two layers for the Single-Layer comparison."""
    return ",".join(args.layers.split(",")[:2]) if spec.flags == SHALLOW else args.layers


def run_all(mpiexec: str, args, specs: list[Spec], seeds: range = range(1)) -> list[str]:
    """The runs ``--out`` does not hold yet, seed after seed, one after another; a run that fails is said
    in one line and the next one runs (its claim then says a run is missing).  Returns the names that
    failed."""
    have = {run.name for run in results.read_runs(args.out)} if os.path.exists(args.out) else set()
    failed = []
    for seed in seeds:
        for spec in specs:
            name = run_name(spec.key, seed)
            if name in have:
                continue
            command = [mpiexec, "-n", str(spec.ranks), sys.executable, "-m", "pffbench.run", "--preset", spec.preset,
                       "--layers", layers_of(spec, args), "--epochs", str(args.epochs), "--seed", str(seed),
                       "--threads", "1", "--out", args.out, "--name", name, "--quiet", *spec.flags,
                       *data_flags(args, spec.preset)]
            print(f"running {name}: {' '.join(command[3:])}", flush=True)
            done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if done.returncode != 0:
                why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                print(f"pffbench.paper_bench: warning: {name} failed ({why}); going on", file=sys.stderr, flush=True)
                failed.append(name)
    return failed


def _accuracy(run) -> float:
    """Test accuracy (%): all heads for Performance-Optimized (the paper's higher figure), else the run's."""
    return 100 * run.attrs.get("accuracy_all_heads", run.attrs["final_test_accuracy"])


class Seeds:
    """The check's runs by key and seed: ``per_seed(keys)`` the seeds that have every run of ``keys``."""

    def __init__(self, runs: dict, seeds: range):
        self.runs, self.seeds = runs, seeds

    def get(self, key: str, seed: int):
        return self.runs.get(run_name(key, seed))

    def per_seed(self, keys: list[str]) -> list[list]:
        got = [[self.get(k, s) for k in keys] for s in self.seeds]
        return [g for g in got if all(r is not None for r in g)]


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """The median, with the range over seeds where there are several."""
    middle = fmt.format(statistics.median(values))
    if len(values) < 2:
        return middle
    return f"{middle} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def _count(holds: list[bool]) -> str:
    return f"{sum(holds)} of {len(holds)} seed{'s' if len(holds) != 1 else ''}"


def _order(data: Seeds, keys: list[str], labels: list[str]) -> tuple[str, str]:
    """(measured text, verdict) of the claim that the runs ``keys`` are in decreasing accuracy: judged on
    the medians over seeds, with how many seeds show the same order."""
    sets = data.per_seed(keys)
    if not sets:
        return "not run", "not measurable here: a run is missing"
    columns = [[_accuracy(runs[i]) for runs in sets] for i in range(len(keys))]
    medians = [statistics.median(c) for c in columns]
    holds = all(a > b for a, b in zip(medians, medians[1:]))
    each = [all(a > b for a, b in zip(v, v[1:])) for v in zip(*columns)]
    text = ", ".join(f"{label} {_spread(c)}" for label, c in zip(labels, columns))
    return text, f"{'holds' if holds else 'does not hold'} ({_count(each)} in this order)"


def _machine(runs) -> str:
    busy = "busy host" if any(busy_host(r) for r in runs) else "quiet host"
    run = runs[0]
    return f"{run.attrs.get('host_cores', '?')} cores of {run.attrs.get('cpu_model') or 'an unnamed CPU'}, {busy}"


def claims(args, predicted: dict | None) -> list[Claim]:
    """Each claim with the paper's figure, pffbench's (medians over ``args.seeds`` seeds, their range in
    brackets) and a verdict.  ``predicted``: the model's 4-node figures (predict_paper), or None."""
    runs = {run.name: run for run in results.read_runs(args.out)} if os.path.exists(args.out) else {}
    data = Seeds(runs, range(args.seeds))
    scale = (f"hidden {args.layers}, {args.epochs} epochs in {args.epochs} chapters, "
             f"{_count(list(data.seeds)).replace(' of ', '/')}")
    predicted = predicted or {}
    out = []

    pairs = data.per_seed(["goodness-adaptive-n1", "goodness-adaptive-n2"])
    if pairs:
        speedups = [training_seconds(one) / training_seconds(two) for one, two in pairs]
        measured = f"measured {_spread(speedups)}x on 2 ranks ({_machine([r for p in pairs for r in p])})"
    else:
        measured = "not run"
    if "all-layers" in predicted:
        measured += (f"; predicted {predicted['all-layers']:.2f}x on 4 nodes (pffbench.model: All-Layers, the "
                     "paper's net and schedule, 10GbE, without adaptive scoring)")
        verdict = "holds (predicted)" if predicted["all-layers"] >= 0.9 * 3.75 else "does not hold (predicted)"
    else:
        verdict = "not measurable here: 2 cores, and no model prediction"
    out.append(Claim("All-Layers/Adaptive is 3.75x faster than sequential on 4 nodes",
                     "3.75x (11,190.72 s / 2,980.76 s)", measured, verdict))

    text, verdict = _order(data, ["goodness-adaptive-n1", "goodness-random-n1", "goodness-fixed-n1"],
                           ["Adaptive", "Random", "Fixed"])
    out.append(Claim("Goodness: Adaptive NEG more accurate than Random, Random than Fixed",
                     "98.52 > 98.33 > 97.95 (sequential)", text, verdict))

    sets = data.per_seed(["softmax-random-n1", "goodness-random-n1"])
    if sets:
        gaps = [_accuracy(s) - _accuracy(g) for s, g in sets]
        measured = (f"Softmax {_spread([_accuracy(s) for s, _ in sets])} vs Goodness "
                    f"{_spread([_accuracy(g) for _, g in sets])}")
        verdict = ("holds" if statistics.median(gaps) >= -0.3 else "does not hold") + \
                  f" ({_count([g >= -0.3 for g in gaps])} within 0.3 points or above)"
    else:
        measured, verdict = "not run", "not measurable here: a run is missing"
    out.append(Claim("Softmax classification as accurate as Goodness (Random NEG)", "98.48 vs 98.33 (sequential)",
                     measured, verdict))

    for neg, paper, judge in (
            ("random", "1,974.10 vs 2,008.25 s (about equal)", lambda r: abs(r - 1) <= 0.1),
            ("adaptive", "5,254.87 vs 2,980.76 s (Single-Layer 1.76x slower)", lambda r: r > 1.1)):
        sets = data.per_seed([f"goodness-{neg}-single-layer-l2", f"goodness-{neg}-all-layers-l2"])
        if sets:
            ratios = [training_seconds(s) / training_seconds(a) for s, a in sets]
            measured = (f"Single-Layer / All-Layers time {_spread(ratios)} on 2 ranks, the first 2 layers "
                        f"({_machine([r for p in sets for r in p])})")
            verdict = ("holds" if judge(statistics.median(ratios)) else "does not hold") + \
                      f" ({_count([judge(r) for r in ratios])})"
        else:
            measured, verdict = "not run", "not measurable here: a run is missing"
        if neg == "random" and "single-layer" in predicted:
            ratio = predicted["single-layer"]
            measured += f"; predicted {ratio:.2f} on 4 nodes (pffbench.model, the paper's net, 10GbE)"
        out.append(Claim(f"Single-Layer vs All-Layers time, {neg.capitalize()} NEG", paper, measured, verdict))

    sets = data.per_seed(["perf-opt-n1", "goodness-adaptive-n1"])
    if sets:
        times = [training_seconds(p) / training_seconds(g) for p, g in sets]
        last = [100 * p.attrs["accuracy_last_head"] - _accuracy(g) for p, g in sets]
        faster, less = statistics.median(times) < 1, statistics.median(last) <= 0
        measured = (f"Perf-Opt time / Goodness-Adaptive's {_spread(times)}; accuracy (last head) minus "
                    f"Goodness-Adaptive's {_spread(last, '{:+.2f}')} points (1 rank each)")
        verdict = "holds" if faster and less else (
            "does not hold" + ("" if faster else ": not faster") + ("" if less else ": more accurate"))
        verdict += f" ({_count([t < 1 and d <= 0 for t, d in zip(times, last)])} both)"
    else:
        measured, verdict = "not run", "not measurable here: a run is missing"
    out.append(Claim("Performance-Optimized faster than Adaptive-Goodness, slightly less accurate",
                     "4,219.97 s, 98.30 / 98.38 vs 11,190.72 s (sequential), 98.52", measured, verdict))

    keys = [spec.key for spec in CIFAR_RUNS]
    sets = data.per_seed(keys)
    if sets:
        copy = any(r.config.get("dataset") == "imagefolder" for runs_ in sets for r in runs_)
        text, verdict = _order(data, keys, ["Perf-Opt", "Softmax/Random", "Softmax/Fixed", "Goodness/Adaptive"])
        measured = ("CIFAR-10 (JPEG copy): " if copy else "") + text
    else:
        measured, verdict = "not run", "not measurable here: CIFAR-10 runs missing (give --cifar and its data)"
    out.append(Claim("CIFAR-10: Perf-Opt > Softmax/Random > Softmax/Fixed > Goodness/Adaptive (collapses)",
                     "53.50 > 52.18 > 50.89 > 11.10", measured, verdict))
    for claim in out:
        claim.measured = f"{claim.measured} [{scale}]" if claim.measured != "not run" else claim.measured
    return out


def predict_paper() -> dict:
    """The model's figures for the paper's setup on 4 nodes x 1 rank, 10GbE (microbenchmark calibration
    on this machine, cached per machine): ``all-layers``, All-Layers' speedup over 1 rank; ``single-layer``,
    Single-Layer's time over All-Layers'.  Empty if the model fails (the table still prints)."""
    try:
        from .perfmodel import calibrate, links
        from .perfmodel import predict as model
        from .perfmodel.headline import PAPER, PAPER_DIMS
        costs = calibrate.measured("pipeline", PAPER_DIMS, 64, 1)
        cluster = links.Cluster(1, 1, 1, inter=links.link("10GbE"))
        seconds = {v: model.predict(v, costs, cluster, 4, PAPER).seconds for v in ("all-layers", "single-layer")}
        return {"all-layers": model.predict("all-layers", costs, cluster, 1, PAPER).seconds / seconds["all-layers"],
                "single-layer": seconds["single-layer"] / seconds["all-layers"]}
    except Exception as error:  # the table still prints; the claim then says why
        print(f"pffbench.paper_bench: warning: no model prediction ({type(error).__name__}: {error})", file=sys.stderr)
        return {}


def table(items: list[Claim]) -> str:
    lines = ["| claim | paper | pffbench (scale) | verdict |", "|---|---|---|---|"]
    lines += [f"| {c.text} | {c.paper} | {c.measured} | {c.verdict} |" for c in items]
    return "\n".join(lines)


def run_claims(mpiexec: str, args) -> int:
    failed = run_all(mpiexec, args, MNIST_RUNS + SCHEDULE_RUNS + (CIFAR_RUNS if args.cifar else []),
                     range(args.seeds))
    print(table(claims(args, predict_paper())))
    return 1 if failed else 0

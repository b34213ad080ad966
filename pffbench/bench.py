"""`make bench`: pipeline speedup on MNIST, 1 vs 2 ranks, and how close the
FF step runs to the machine's matmul rate; with --conv (`make bench-conv`), a
conv net's (local-softmax, CIFAR-10 by default), its layers split by their
measured costs.

Each measurement is a plain function returning numbers; main() prints them.
Runs go through `mpiexec python -m pffbench.run`, exactly as users run them,
and are read back from the HDF5 file they append to.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from . import ff, results, sweep
from .launch.cli import _int_list, _Parser
from .launch.command import command
from .core.config import UsageError
from .core.cpu_quota import usable_cores
from .instrument.progress import plural
from .store import provenance, writer
from .analysis.analysis import busy_imbalance, comm_wait_share, pipeline_bound, training_seconds


def scaling(args: list[str], cases: list[tuple[int, int]], repeats: int, out: str, mpiexec: str,
            warmup: bool = True) -> dict[tuple[int, int], list[results.Run]]:
    """Every (ranks, threads per rank) case, `repeats` times, interleaved,
    after one untimed warm-up of the first case; raw runs, keyed by case."""
    names = sweep.sweep(args, cases, repeats, out, [mpiexec], warmup=warmup, label="bench")
    by_name = {run.name: run for run in results.read_runs(out)}
    return {case: [by_name[n] for n in case_names] for case, case_names in names.items()}


def stage_seconds(width: int, second_widths: list[int], batch: int,
                  steps: int = 100, features: int = 784, classes: int = 10) -> tuple[float, dict[int, float]]:
    """Seconds per minibatch of each stage of a 2-rank pipeline over
    [features, width, w], each as the pipeline runs it: rank 0 takes a
    minibatch from its epoch's chunks (mean time) and makes the first layer's
    pair step into the outgoing message (median); rank 1 normalizes that
    message in place and makes the second layer's plain step (median), for
    every w in ``second_widths``.
    Inputs are random rows of MNIST's shape; the stages alternate, so load
    from other processes hits them alike.  Runs on this process's torch
    threads."""
    generator = torch.Generator().manual_seed(0)
    rows = steps * batch
    inputs = ff.FirstLayerInputs(torch.rand(rows, features, generator=generator), classes)
    order = torch.randperm(rows, generator=generator)
    labels = torch.randint(0, classes, (rows,), generator=generator)
    wrong = ff.random_wrong_labels(labels, classes, generator)
    # the warm-up steps take their minibatches from an epoch of their own, so the timed ones gather every chunk
    warm, epoch = (inputs.epoch(order, labels, wrong, [batch] * steps) for _ in range(2))
    first = ff.FFLayer(ff.make_linear(features, width, 0, 0), 1e-3, 1.0, 20.0)
    seconds = {w: ff.FFLayer(ff.make_linear(width, w, 0, 1), 1e-3, 1.0, 20.0) for w in second_widths}
    message, norms = torch.empty(2 * batch, width), torch.empty(2 * batch, 1)
    outputs = {w: (torch.empty(2 * batch, w), torch.empty(2 * batch, 1)) for w in second_widths}
    times = {w: [] for w in ["data", None, *second_widths]}  # None: the first layer's step
    for step in range(-5, steps):  # 5 untimed warm-up steps
        start = time.perf_counter()
        pairs = warm.batch(step + 5) if step < 0 else epoch.batch(step)
        middle = time.perf_counter()
        first.train_step_pairs(pairs, out=message, normalize=False, norm_out=norms)
        times["data"].append(middle - start)
        times[None].append(time.perf_counter() - middle)
        for w, layer in seconds.items():
            x = message.clone()
            start = time.perf_counter()
            x.div_(norms)
            layer.train_step(x, batch, out=outputs[w][0], normalize=False, norm_out=outputs[w][1])
            times[w].append(time.perf_counter() - start)
    # data: the mean, as a chunk is gathered once every few minibatches (every 20 on MNIST)
    data = float(np.mean(times.pop("data")[5:]))
    medians = {w: float(np.median(t[5:])) for w, t in times.items()}
    return data + medians.pop(None), medians


def balanced_width(first: float, seconds: dict[int, float], multiple: int = 16) -> int:
    """The second layer's width whose stage takes as long as the first
    stage, from two or more measured (width, seconds): a least-squares line
    (a stage's time is affine in its output width), rounded to ``multiple``."""
    widths, times = np.array(list(seconds)), np.array(list(seconds.values()))
    slope, intercept = np.polyfit(widths, times, 1)
    if slope <= 0:
        raise ValueError(f"stage time does not grow with width: {seconds}")
    return max(multiple, int(round((first - intercept) / slope / multiple)) * multiple)


def ff_step_rate(width_in: int, width_out: int, batch: int, steps: int = 200) -> dict[str, float]:
    """FLOP rate of FFLayer.train_step against a bare matmul of the same
    shape on the same threads.  Useful FLOPs of a step: the forward product
    and the weight gradient, 2 x 2*rows*in*out (inputs need no gradient)."""
    rows = 2 * batch
    x = ff.normalize(torch.rand(rows, width_in))
    layer = ff.FFLayer(ff.make_linear(width_in, width_out, 0, 0), 1e-3, 1.0, 20.0)
    weight = torch.rand(width_in, width_out)

    for _ in range(5):
        layer.train_step(x, batch)
        torch.mm(x, weight)
    step, matmul = [], []
    for _ in range(steps):  # alternated, so load from other processes hits both alike
        start = time.perf_counter()
        layer.train_step(x, batch)
        middle = time.perf_counter()
        torch.mm(x, weight)
        step.append(middle - start)
        matmul.append(time.perf_counter() - middle)
    step, matmul = float(np.median(step)), float(np.median(matmul))
    step_flops = 4 * rows * width_in * width_out
    return {"step_gflops": step_flops / step / 1e9, "matmul_gflops": 2 * rows * width_in * width_out / matmul / 1e9}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pffbench.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=784, help="the first hidden layer")
    parser.add_argument("--second-width", type=int, default=0,
                        help="the second hidden layer (default: the width whose step takes as long as rank 0's "
                             "data and first-layer step, measured on this machine: a balanced pipeline)")
    parser.add_argument("--conv", type=_int_list, default=None,
                        metavar="C1,C2,...",
                        help="bench a conv net instead (pipeline, --objective local-softmax): its blocks' channels; "
                             "its layers are split by their measured step times (probes/layer_costs.py), and the "
                             "bound is that split's: the pipeline bound times the total over twice the slower stage")
    parser.add_argument("--dataset", default="cifar10", choices=("cifar10", "imagefolder", "mnist"),
                        help="--conv's data (default cifar10; its JPEG copy: imagefolder with --data-dir)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs a run (default 2; --conv: 1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--augment", action="store_true", help="--conv: augment every training image")
    parser.add_argument("--out", default=None, help="keep the raw runs in this HDF5 file (default: a temp file)")
    parser.add_argument("--mpiexec", default=shutil.which("mpiexec", path=os.path.dirname(sys.executable))
                        or "mpiexec")
    return parser


@command("pffbench.bench")
def main(argv=None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    if opts.epochs is None:
        opts.epochs = 1 if opts.conv else 2
    if opts.conv is not None and len(opts.conv) < 2:
        parser.error("--conv needs at least 2 blocks: the bench splits the net over 2 ranks")
    for flag in ("width", "epochs", "batch_size", "repeats"):
        if getattr(opts, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if opts.second_width < 0:
        parser.error("--second-width must be >= 1 (or 0: measure the balanced one)")
    problem = opts.out and writer.unappendable(opts.out)  # before minutes of measuring, not after
    if problem:
        raise UsageError(f"--out: {problem}")
    cores = usable_cores()  # a CPU quota (container limit) caps the affinity mask's cores
    threads = max(1, cores // 2)
    torch.set_flush_denormal(True)  # the step measurements below run as one pipeline rank does
    torch.set_num_threads(threads)
    if opts.conv:
        return conv_bench(opts, cores, threads)
    try:
        candidates = [max(1, opts.width // 2), max(2, opts.width)]  # two widths to fit a line through
        second = opts.second_width or balanced_width(*stage_seconds(opts.width, candidates, opts.batch_size))
    except ValueError as error:  # layers so small that timing noise hides their cost
        print(f"pffbench.bench: error: {error}; pass --second-width", file=sys.stderr)
        return 1
    first_stage, second_stage = stage_seconds(opts.width, [second], opts.batch_size)
    args = ["--layers", f"{opts.width},{second}", "--epochs", str(opts.epochs),
            "--batch-size", str(opts.batch_size)] + (["--data-dir", opts.data_dir] if opts.data_dir else [])
    cases = [(1, cores), (1, threads), (2, threads)]
    with tempfile.TemporaryDirectory() as scratch:
        out = opts.out or os.path.join(scratch, "bench.h5")
        try:
            runs = scaling(args, cases, opts.repeats, out, opts.mpiexec)
        except (RuntimeError, subprocess.TimeoutExpired) as error:  # a run failed: its command and stderr
            print(f"pffbench.bench: error: {error}", file=sys.stderr)
            return 1
    report(opts, runs, cases, cores, threads, second, first_stage, second_stage)
    return 0


def report(opts, runs: dict, cases: list, cores: int, threads: int, second: int, first_stage: float,
           second_stage: dict) -> None:
    """The table of the measured cases, the speedups at p = 2 and the FF step's rate."""
    seconds = {case: np.median([training_seconds(r) for r in rs]) for case, rs in runs.items()}
    minibatches = runs[cases[-1]][0].attrs["minibatches_per_epoch"]
    bound = pipeline_bound(2, minibatches)
    print(f"machine: {os.uname().nodename} ({provenance.cpu_model() or 'CPU unknown'}), {cores} cores; MNIST [784,{opts.width},{second}], "
          f"batch {opts.batch_size}, {plural(opts.epochs, 'epoch')}, median of {opts.repeats}")
    print(f"stages per minibatch: rank 0 {first_stage * 1e3:.2f} ms (data, 784->{opts.width} pair step), "
          f"rank 1 {second_stage[second] * 1e3:.2f} ms ({opts.width}->{second} step)"
          f"{'' if opts.second_width else f'; {second} measured to balance them'}")
    # speedup: against 1 rank with the same threads per rank; of bound: that speedup / p*m/(m+p-1)
    print(f"{'ranks':>5} {'threads':>7} {'train s':>8} {'speedup':>8} {'of bound':>8} {'vs 1xall':>8} "
          f"{'comm wait':>9} {'imbalance':>9} {'accuracy':>8}")
    same_threads = {case[1]: seconds[case] for case in cases if case[0] == 1}
    for case in cases:
        ranks, per_rank = case
        speedup = same_threads[per_rank] / seconds[case]
        wait = np.median([comm_wait_share(r) for r in runs[case]])
        imbalance = np.median([busy_imbalance(r) for r in runs[case]])
        accuracy = np.median([r.arrays["test_accuracy"][-1] for r in runs[case]])
        print(f"{ranks:>5} {per_rank:>7} {seconds[case]:8.2f} {speedup:8.2f} "
              f"{speedup / pipeline_bound(ranks, minibatches):8.1%} {seconds[cases[0]] / seconds[case]:8.2f} "
              f"{wait:9.2%} {imbalance:9.2%} {accuracy:8.2%}")
    parallel = seconds[cases[2]]
    print(f"speedup at p=2: {seconds[cases[0]] / parallel:.2f}x over 1 rank x {cases[0][1]} threads, "
          f"{seconds[cases[1]] / parallel:.2f}x over 1 rank x {plural(cases[1][1], 'thread')}; "
          f"pipeline bound {bound:.3f} (m = {minibatches} minibatches per epoch)")
    rate = ff_step_rate(opts.width, second, opts.batch_size)
    print(f"FF step ({opts.width}->{second}) {rate['step_gflops']:.1f} GFLOP/s vs matmul "
          f"{rate['matmul_gflops']:.1f} GFLOP/s on {plural(threads, 'thread')}: {rate['step_gflops'] / rate['matmul_gflops']:.0%}")


def conv_bench(opts, cores: int, threads: int) -> int:
    """--conv: the conv net in the activation pipeline (local-softmax), 1 rank against 2, ``threads`` each, its
    layers split by their step times measured here first (probes/layer_costs.py); prints the table."""
    from .data import DataError, load_dataset
    from .launch.cli import parse_config
    from .probes import layer_costs
    from .core.partition import balanced_partition
    from .core.types import Shape
    flags = ["--variant", "pipeline", "--objective", "local-softmax", "--conv", ",".join(map(str, opts.conv)),
             "--dataset", opts.dataset, "--batch-size", str(opts.batch_size)] + \
        (["--data-dir", opts.data_dir] if opts.data_dir else []) + (["--augment"] if opts.augment else [])
    try:
        config = parse_config(flags)
        data = load_dataset(opts.dataset, opts.data_dir)
        shape = Shape.of(data)
        seconds = layer_costs.measure(config, shape)
    except DataError as error:  # one line, exit 2 (launch/command.py)
        raise UsageError(str(error)) from None
    costs = layer_costs.costs_flag(seconds)
    blocks = balanced_partition(layer_costs.costs_of(seconds), 2)
    stages = [sum(seconds[i] for i in block) for block in blocks]
    cases = [(1, threads), (2, threads)]
    with tempfile.TemporaryDirectory() as scratch:
        out = opts.out or os.path.join(scratch, "bench.h5")
        try:
            runs = scaling(flags + costs.split() + ["--epochs", str(opts.epochs)], cases, opts.repeats, out,
                           opts.mpiexec)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            print(f"pffbench.bench: error: {error}", file=sys.stderr)
            return 1
    train = {case: float(np.median([training_seconds(r) for r in rs])) for case, rs in runs.items()}
    minibatches = runs[cases[-1]][0].attrs["minibatches_per_epoch"]
    # a pipeline of unequal stages: at best the slower stage's pace, after the fill and drain of m + p - 1 steps
    split_bound = pipeline_bound(2, minibatches) * sum(stages) / (2 * max(stages))
    net = "x".join(map(str, shape.image_shape or ()))
    print(f"machine: {os.uname().nodename} ({provenance.cpu_model() or 'CPU unknown'}), {cores} cores; "
          f"{opts.dataset} {net}, --conv "
          f"{','.join(map(str, opts.conv))}, local-softmax, batch {opts.batch_size}, "
          f"{plural(opts.epochs, 'epoch')}, median of {opts.repeats}")
    print("layer step ms (measured here): " + "  ".join(f"{i}: {1e3 * s:.2f}" for i, s in enumerate(seconds))
          + f"; 2 ranks: layers {blocks[0].start}-{blocks[0].stop - 1} | {blocks[1].start}-{blocks[1].stop - 1}, "
          f"stages {1e3 * stages[0]:.2f} / {1e3 * stages[1]:.2f} ms (balance {min(stages) / max(stages):.0%})")
    print(f"{'ranks':>5} {'threads':>7} {'train s':>8} {'speedup':>8} {'of bound':>8} {'of split':>8} "
          f"{'comm wait':>9} {'imbalance':>9} {'accuracy':>8}")
    for case in cases:
        ranks, per_rank = case
        speedup = train[cases[0]] / train[case]
        bound = pipeline_bound(ranks, minibatches)
        split = split_bound if ranks == 2 else 1.0
        wait = np.median([comm_wait_share(r) for r in runs[case]])
        imbalance = np.median([busy_imbalance(r) for r in runs[case]])
        accuracy = np.median([r.arrays["test_accuracy"][-1] for r in runs[case]])
        print(f"{ranks:>5} {per_rank:>7} {train[case]:8.2f} {speedup:8.2f} {speedup / bound:8.1%} "
              f"{speedup / split:8.1%} {wait:9.2%} {imbalance:9.2%} {accuracy:8.2%}")
    print(f"of bound: the speedup over p*m/(m+p-1) = {pipeline_bound(2, minibatches):.3f} (m = {minibatches}); "
          f"of split: over that bound for the measured stages, {split_bound:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

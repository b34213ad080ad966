"""Re-measure the performance model's validation set (docs/model.md, *Validation*).

    python tools/model_validation.py [--repeats 3] [--only one-node|nodes|conv]

One node (``results/model-validation.h5``): every schedule the model covers, on
MNIST with 1 thread per rank, p = 1 and the p it is validated at (the pipeline
also 4 ranks on this machine's cores), each configuration ``--repeats`` times,
the repetitions interleaved so that a drift of the host's speed hits every p alike.

Emulated nodes (``results/model-validation-2nodes.h5``, needs root; the
cluster of tests/netns/netns_cluster.py, TCP over a veth): the pipeline and
dp-backprop on 1 rank of node 0 and on 2 nodes, the link open and then shaped
to 1 Gbit/s (``tc tbf`` on both ends, offloads off so that the bytes really
go through TCP segments the shaper sees).  The 1 Gbit/s runs go into their own
file, ``results/model-validation-1gbit.h5``, with their own 1-rank runs, because
``python -m pffbench.model validate`` takes one network per file.  Before
each emulated-node part the link is probed (``python -m
pffbench.probes.linkprobe``) and the alpha and beta printed, to pass to
``validate --alpha --beta``.  The one-node part relies on the table's
devvm-* links; on another machine probe them first (``mpiexec -n 2 python -m
pffbench.probes.linkprobe [--gloo]``) and pass ``--intra``/``--group``.

Conv nets (``results/model-validation-conv.h5``, ``--only conv``, not in the default set: 12 runs of an
epoch a repeat): the CIFAR-10 race's CNN (``--conv 20,80,160,320 --augment``, batch 64, CIFAR-10 from
``$PFFBENCH_DATA``: the official tarball, else the JPEG copy), one epoch of 45,000 rows (5,000 held out and
evaluated on), every schedule with a conv path at p = 1 and 2: the activation pipeline with local-softmax
and cwcomp, dp-backprop, ddp, gpipe and 1f1b.  The pipelines split their blocks by the step times
``python -m pffbench.probes.layer_costs`` measures first, as jobs/race.sbatch does (a block's FLOPs
misjudge its time); the model calibrates a conv net from its 1-rank run (docs/model.md, *Conv nets*).

Run it on an idle machine: it measures the host as much as the model.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MPIEXEC = str(Path(PYTHON).parent / "mpiexec")

FF_EPOCHS = ["--epochs", "1"]
PFF = ["--epochs", "2", "--splits", "2"]
BP = ["--epochs", "1", "--lr", "1e-3"]
W4, W2 = "500,500,500,500", "500,500"
# (label, ranks, run arguments)
ONE_NODE = [
    ("pipe4", (1, 2, 4), ["--variant", "pipeline", "--layers", W4, *FF_EPOCHS]),
    ("pipe2", (1, 2), ["--variant", "pipeline", "--layers", "784,544", *FF_EPOCHS]),
    ("al", (1, 2), ["--variant", "all-layers", "--layers", W4, *PFF]),
    ("sl2", (1, 2), ["--variant", "single-layer", "--layers", W2, *PFF]),
    ("sl4", (1, 4), ["--variant", "single-layer", "--layers", W4, *PFF]),
    ("fed", (1, 2), ["--variant", "federated", "--layers", W4, *PFF]),
    ("po", (1, 2), ["--variant", "perf-opt", "--layers", W4, *PFF]),
    ("dp", (1, 2), ["--variant", "dp-backprop", "--layers", W2, *BP]),
    ("ddp", (1, 2), ["--variant", "ddp", "--layers", W2, *BP]),
    ("gpipe", (1, 2), ["--variant", "gpipe", "--layers", W2, *BP]),
    ("1f1b", (1, 2), ["--variant", "1f1b", "--layers", W2, *BP]),
]
CONV_EPOCH = ["--epochs", "1", "--lr", "1e-3"]
# (label, rank counts, run arguments, the layer-costs probe's arguments or None: no --layer-costs)
CONV_CASES = [
    ("ls", (1, 2), ["--variant", "pipeline", "--objective", "local-softmax", *CONV_EPOCH],
     ["--objective", "local-softmax"]),
    ("cw", (1, 2), ["--variant", "pipeline", "--objective", "cwcomp", *CONV_EPOCH], ["--objective", "cwcomp"]),
    ("dp", (1, 2), ["--variant", "dp-backprop", *CONV_EPOCH], None),
    ("ddp", (1, 2), ["--variant", "ddp", *CONV_EPOCH], None),
    ("gpipe", (1, 2), ["--variant", "gpipe", *CONV_EPOCH], ["--variant", "gpipe"]),
    ("1f1b", (1, 2), ["--variant", "1f1b", *CONV_EPOCH], ["--variant", "gpipe"]),  # a stage's work is gpipe's
]
TWO_NODES = [
    ("pipe2", ["--variant", "pipeline", "--layers", "784,544", *FF_EPOCHS]),
    ("dp", ["--variant", "dp-backprop", "--layers", W2, *BP]),
]


def _run(argv: list[str], timeout: float = 1800, env=None) -> None:
    print("+", " ".join(argv), flush=True)
    done = subprocess.run(argv, cwd=ROOT, timeout=timeout, env=env)
    if done.returncode:
        raise SystemExit(f"model_validation: the run above failed (exit {done.returncode})")


def pffbench_run(args: list[str], out: str, name: str) -> list[str]:
    return [PYTHON, "-m", "pffbench.run", *args, "--threads", "1", "--out", out, "--name", name, "--quiet"]


def one_node(repeats: int, out: str) -> None:
    for repeat in range(repeats):
        for label, ranks, args in ONE_NODE:
            for p in ranks:
                trace = ["--trace"] if (label, p, repeat) == ("pipe4", 2, 0) else []  # plots/model_timeline
                _run([MPIEXEC, "-n", str(p), *pffbench_run(args + trace, out, f"{label}-p{p}-r{repeat}")])


def conv_data(data: str) -> list[str]:
    """The CIFAR-10 flags for the data folder ``data``: the official files when they are there, else the
    JPEG copy's image folder (datasets.files.cifar10_flags, as jobs/race.sbatch chooses); None if neither."""
    from pffbench.datasets.files import cifar10_flags
    return cifar10_flags(data)


def conv(repeats: int, out: str, data: str) -> None:
    net = [*conv_data(data), "--conv", "20,80,160,320", "--augment", "--batch-size", "64", "--validation", "5000"]
    costs = {}
    for label, _, _, probe in CONV_CASES:
        if probe is not None and tuple(probe) not in costs:
            argv = [PYTHON, "-m", "pffbench.probes.layer_costs", *probe, *net, "--threads", "1"]
            print("+", " ".join(argv), flush=True)
            done = subprocess.run(argv, cwd=ROOT, timeout=1800, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"model_validation: the layer-costs probe failed: {done.stderr.strip()[-300:]}")
            print(done.stdout.rstrip(), flush=True)  # the milliseconds per layer and the split they give
            flag = done.stdout.strip().splitlines()[-1].split() if done.stdout.strip() else []
            if len(flag) != 2 or flag[0] != "--layer-costs":
                raise SystemExit(f"model_validation: the layer-costs probe's last line is not --layer-costs C1,...: "
                                 f"{' '.join(flag)!r}")
            costs[tuple(probe)] = flag
    for repeat in range(repeats):
        for label, ranks, args, probe in CONV_CASES:
            split = costs[tuple(probe)] if probe is not None else []
            for p in ranks:
                _run([MPIEXEC, "-n", str(p), *pffbench_run([*net, *args, *split], out, f"conv-{label}-p{p}-r{repeat}")])


def _shape(cluster, rate: str | None) -> None:
    """Offloads off and a tbf of ``rate`` on every node's interface (or remove it)."""
    for namespace in cluster.namespaces:
        def ns(*argv, check=True):
            subprocess.run(["ip", "netns", "exec", namespace, *argv], check=check, capture_output=True)
        ns("ethtool", "-K", "eth0", "tso", "off", "gso", "off", "gro", "off")
        ns("tc", "qdisc", "del", "dev", "eth0", "root", check=False)
        if rate:
            ns("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "1mbit", "latency", "50ms")


def nodes(repeats: int, outs: dict[str, str]) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "netns"))
    from netns_cluster import NetnsCluster, available
    problem = available()
    if problem:
        raise SystemExit(f"model_validation: emulated nodes unavailable: {problem}")
    with tempfile.TemporaryDirectory(prefix="pffbench-netns-") as directory, \
            NetnsCluster(directory, nodes=2) as cluster:
        for link, rate in (("open", None), ("1gbit", "1gbit")):
            _shape(cluster, rate)
            probe = subprocess.run(cluster.command([PYTHON, "-m", "pffbench.probes.linkprobe"]),
                                   env=cluster.env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
            print(f"link probe, {link}:", probe.stdout.strip().splitlines()[-1] if probe.stdout else probe.stderr)
            out = str(ROOT / outs[link])
            for repeat in range(repeats):
                for label, args in TWO_NODES:
                    one = pffbench_run(args, out, f"{label}-{link}-p1-r{repeat}")
                    # 1 rank on node 0 (the host name of the 2-node runs' rank 0), then 2 nodes
                    _run(cluster.on_node(0, one), env=cluster.env())
                    _run(cluster.command(pffbench_run(args, out, f"{label}-{link}-p2-r{repeat}")), env=cluster.env())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/model_validation.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("one-node", "nodes", "conv"))
    parser.add_argument("--out", default=None, help="the one-node (or, with --only conv, the conv) results file "
                        "(default results/model-validation.h5, results/model-validation-conv.h5)")
    opts = parser.parse_args(argv)
    if not os.environ.get("PFFBENCH_DATA"):
        print("model_validation: set PFFBENCH_DATA to the folder holding MNIST (and CIFAR-10 for --only conv)",
              file=sys.stderr)
        return 2
    if opts.only == "conv" and conv_data(os.environ["PFFBENCH_DATA"]) is None:
        print(f"model_validation: no CIFAR-10 in PFFBENCH_DATA={os.environ['PFFBENCH_DATA']} (cifar-10-python.tar.gz, "
              f"cifar-10-batches-py/ or cifar10-jpeg/)", file=sys.stderr)
        return 2
    start = time.time()
    if opts.only == "conv":
        conv(opts.repeats, opts.out or "results/model-validation-conv.h5", os.environ["PFFBENCH_DATA"])
        print(f"model_validation: done in {time.time() - start:.0f} s")
        return 0
    if opts.only != "nodes":
        one_node(opts.repeats, opts.out or "results/model-validation.h5")
    if opts.only != "one-node":
        nodes(opts.repeats, {"open": "results/model-validation-2nodes.h5",
                             "1gbit": "results/model-validation-1gbit.h5"})
    print(f"model_validation: done in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

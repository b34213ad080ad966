"""Re-measure the performance model's validation set (docs/model.md, *Validation*).

    python tools/model_validation.py [--repeats 3] [--only one-node|nodes]

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
    parser.add_argument("--only", choices=("one-node", "nodes"))
    parser.add_argument("--out", default="results/model-validation.h5")
    opts = parser.parse_args(argv)
    if not os.environ.get("PFFBENCH_DATA"):
        print("model_validation: set PFFBENCH_DATA to the folder holding MNIST", file=sys.stderr)
        return 2
    start = time.time()
    if opts.only != "nodes":
        one_node(opts.repeats, opts.out)
    if opts.only != "one-node":
        nodes(opts.repeats, {"open": "results/model-validation-2nodes.h5",
                             "1gbit": "results/model-validation-1gbit.h5"})
    print(f"model_validation: done in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

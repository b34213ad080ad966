"""`python -m pffbench.links`: latency and bandwidth of one pipeline link, as
the pipeline uses it (OSU/IMB-style columns).

    mpiexec -n 2 python -m pffbench.links --layers 784,784,544 --batch-size 64

Two ranks: the pipeline's real messages for --layers and --batch-size (the
activations and row norms crossing each link of a --ranks pipeline), then
power-of-two sizes (--sweep), through the shared-memory ring (ranks on one
node) and through Isend/Irecv messages (--transport); the timing is in
probes/link_timing.py.  Every measurement is appended, raw, to
--out (/links/<name>, see pffbench.store) and shown by
``python -m pffbench.report``.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

import numpy as np
from mpi4py import MPI

from .comm import guard
from .launch.command import command
from .launch.cli import _int_list, _Parser
from .core.config import Config, UsageError
from .core.words import plural
from .probes.link_timing import pipeline_messages, rows_for, summary, time_link
from .store import writer

COLUMNS = ("size[B]", "lat_min[us]", "lat_med[us]", "lat_max[us]", "bw_med[MB/s]")


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    parser = _Parser(prog="python -m pffbench.links", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=_int_list, default=d.layers, metavar="W1,W2,...",
                        help="hidden widths, as for pffbench.run (default %(default)s)")
    parser.add_argument("--features", type=int, default=784, help="input width (default 784: MNIST)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--ranks", type=int, default=2, help="the pipeline whose links' messages are measured")
    parser.add_argument("--transport", choices=("auto", "p2p", "both"), default="both",
                        help="auto: the ring if the two ranks share a node, else messages; p2p: messages; both")
    parser.add_argument("--sweep", default="8:4194304", metavar="MIN:MAX",
                        help="power-of-two message sizes in bytes, or 'none' (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repetitions", type=int, default=100, help="timed ping-pongs and windows per size")
    parser.add_argument("--out", default="results/links.h5",
                        help="results file to append to (default: %(default)s, not run's results/pffbench.h5, "
                             "so that a report of runs holds no link rows)")
    parser.add_argument("--name", default=None)
    return parser


def sizes_of(opts) -> list[tuple[str, int, int]]:
    """(what, rows, width) of every message to measure: the pipeline's, then the sweep's."""
    dims = [opts.features, *opts.layers]
    if opts.batch_size < 1 or opts.features < 1 or not 2 <= opts.ranks <= len(opts.layers):
        raise UsageError(f"need --batch-size >= 1, --features >= 1 and 2 <= --ranks <= {len(opts.layers)} (the layers)")
    if opts.warmup < 0 or opts.repetitions < 1:
        raise UsageError("--warmup must be >= 0 and --repetitions >= 1")
    cases = [(f"pipeline link {r}->{r + 1}", rows, width)
             for r, (rows, width) in enumerate(pipeline_messages(dims, opts.batch_size, opts.ranks))]
    if opts.sweep != "none":
        try:
            low, high = (int(part) for part in opts.sweep.split(":"))
        except ValueError:
            raise UsageError(f"--sweep: expected MIN:MAX in bytes or 'none', got {opts.sweep!r}") from None
        if not 8 <= low <= high <= 1 << 30:
            raise UsageError("--sweep: need 8 <= MIN <= MAX <= 1 GiB")
        size = 1 << (low - 1).bit_length()
        while size <= high:
            cases.append(("sweep", *rows_for(size)))
            size *= 2
    return cases


def measure(comm: MPI.Comm, opts) -> dict:
    """Every case through every link kind asked for; rank 0 gets the record's arrays and attrs."""
    cases = sizes_of(opts)
    kinds = {"auto": [True], "p2p": [False], "both": [True, False]}[opts.transport]
    rows, seen = [], set()
    for shared in kinds:
        for what, n, width in cases:
            samples = time_link(comm, shared, n, width, opts.warmup, opts.repetitions)
            if comm.Get_rank() == 0:
                rows.append((what, samples))
        kind = comm.bcast(rows[-1][1].kind if comm.Get_rank() == 0 else None, root=0)
        if kind in seen:  # auto gave messages (ranks on two nodes): p2p would measure the same again
            rows = rows[:-len(cases)] if comm.Get_rank() == 0 else rows
            break
        seen.add(kind)
    return rows


def record(opts, rows, hostnames) -> tuple[dict, dict]:
    arrays = {"size": np.array([s.nbytes for _, s in rows]), "rows": np.array([s.rows for _, s in rows]),
              "width": np.array([s.width for _, s in rows]), "window": np.array([s.window for _, s in rows]),
              "latency": np.stack([s.latency for _, s in rows]),              # [cases, repetitions] s
              "window_seconds": np.stack([s.window_seconds for _, s in rows])}  # [cases, repetitions] s
    attrs = {"kind": "links", "link_kinds": [s.kind for _, s in rows], "what": [w for w, _ in rows],
             "layers": list(opts.layers), "features": opts.features, "batch_size": opts.batch_size,
             "ranks": opts.ranks, "warmup": opts.warmup, "repetitions": opts.repetitions,
             "hostnames": hostnames, "world_size": 2, **writer.provenance()}
    return arrays, attrs


def table(rows) -> str:
    lines = [f"# {'link':<9} {'message':<20} " + "  ".join(f"{c:>12}" for c in COLUMNS)]
    for what, samples in rows:
        s = summary(samples)
        lines.append(f"  {samples.kind:<9} {what:<20} {s['size']:>12d}  {s['lat_min']:>12.2f}  "
                     f"{s['lat_med']:>12.2f}  {s['lat_max']:>12.2f}  {s['bw_med']:>12.1f}")
    return "\n".join(lines)


@command("pffbench.links")
def main(argv=None) -> int:
    comm = MPI.COMM_WORLD
    try:
        opts = build_parser().parse_args(argv)
        if comm.Get_size() != 2:
            raise UsageError(f"run on 2 ranks (mpiexec -n 2 python -m pffbench.links), not {comm.Get_size()}")
        problem = writer.unappendable(opts.out) if comm.Get_rank() == 0 else None
        problem = comm.bcast(problem, root=0)
        if problem:
            raise UsageError(f"--out: {problem}")
        sizes_of(opts)
    except UsageError as error:  # one line, from rank 0
        if comm.Get_rank() == 0:
            print(f"pffbench.links: error: {error}", file=sys.stderr, flush=True)
        return 2
    hostnames = comm.allgather(MPI.Get_processor_name())
    guard.set_hosts(hostnames)
    rows = measure(comm, opts)
    if comm.Get_rank() != 0:
        return 0
    print(f"# pffbench.links: rank 0 on {hostnames[0]} -> rank 1 on {hostnames[1]}; "
          f"{plural(opts.repetitions, 'repetition')} "
          f"after {opts.warmup} warm-up; latency = ping-pong / 2, bandwidth = window of messages / time")
    print(table(rows), flush=True)
    arrays, attrs = record(opts, rows, hostnames)
    name = opts.name or f"links-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"
    name = writer.append_run(opts.out, arrays, attrs, name=name, section="links")
    print(f"appended link measurement '{name}' to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`mpiexec -n 2 python -m pffbench.perfmodel.linkprobe`: measure the link
between two ranks (put them on two nodes to measure the network) with a
buffer-based ping-pong over message sizes 8 B .. 8 MiB (half the round
trip's median of 50 per size): alpha is an 8-byte message's time, beta the
largest message's size over its time less alpha (Hockney's alpha + n / beta).
Prints the --alpha/--beta to pass to `python -m pffbench.model predict`."""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np


def main() -> int:
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    if comm.size != 2:
        if comm.rank == 0:
            print("pffbench: error: the link probe needs exactly 2 ranks (mpiexec -n 2)", file=sys.stderr)
        return 2
    sizes = [8 * 4 ** k for k in range(11)]  # 8 B .. 8 MiB
    half_trips = []
    for n in sizes:
        buffer = np.zeros(n, dtype=np.uint8)
        times = []
        for i in range(55):
            comm.Barrier()
            start = time.perf_counter()
            if comm.rank == 0:
                comm.Send(buffer, 1)
                comm.Recv(buffer, 1)
            else:
                comm.Recv(buffer, 0)
                comm.Send(buffer, 0)
            if i >= 5:
                times.append((time.perf_counter() - start) / 2)
        half_trips.append(statistics.median(times))
    if comm.rank == 0:
        alpha = half_trips[0]  # an 8-byte message: latency only
        beta = sizes[-1] / max(half_trips[-1] - alpha, 1e-12)  # the largest: bandwidth-bound
        for n, t in zip(sizes, half_trips):
            print(f"{n:>9} B  {t * 1e6:10.2f} us")
        print(f"alpha {alpha * 1e6:.2f} us, beta {beta / 1e9:.2f} GB/s  (--alpha {alpha:.3g} --beta {beta:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

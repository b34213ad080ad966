"""Will the shared-memory rings fit in /dev/shm?

An MPI shared window (MPI_Win_allocate_shared) is backed by a file in the
node's /dev/shm (MPICH's, measured; an MPI that backs it elsewhere only makes
this check look at the wrong file system), a tmpfs that finds a page only
when it is first touched: a
window larger than the free space is allocated without complaint, and the
rank that first writes past it dies with SIGBUS mid-epoch, with no message.
Containers give /dev/shm 64 MiB by default.  So the ranks of a node compare
what their rings need with what /dev/shm has free before allocating, and the
rings that do not fit become MPI message links (a slower link, not a dead run).
"""
from __future__ import annotations

import mmap
import os

SHM_PATH = "/dev/shm"
# Left free for others.  MPICH touches its own shared segments at MPI_Init
# (measured: /dev/shm's free space was unchanged by 1 KB-16 MB messages and
# allreduces afterwards, 2 and 4 ranks), so what remains uncounted is the
# window's own rounding (a page per rank) and whatever else on the node
# writes to /dev/shm while the run trains: Python multiprocessing, another
# job's MPI start (MPICH's takes 10.8 MB for 2 ranks, measured) or rings.
MARGIN = 8 << 20


def free_bytes(path: str = SHM_PATH) -> int | None:
    """Bytes an unprivileged process may still write under ``path``
    (statvfs: f_bavail x f_frsize); None if it cannot be asked (no such
    folder), in which case nothing is known and nothing is decided."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def rings_that_fit(needs: list[int], free: int | None, margin: int = MARGIN,
                   page: int = mmap.PAGESIZE) -> list[bool]:
    """Which rings go into shared memory, in the node's rank order.

    ``needs`` are each node rank's ring bytes (0: it owns none), ``free``
    the free bytes of /dev/shm (None: unknown, every ring is kept).  Each
    ring is counted in whole pages; a ring fits if it does after the earlier
    ones that fit, with ``margin`` bytes left over.  The same inputs give
    the same answer on every rank, so both ends of a link agree on its kind.
    """
    if free is None:
        return [need > 0 for need in needs]
    budget, fits = free - margin, []
    for need in needs:
        size = -(-need // page) * page
        fits.append(0 < need and size <= budget)
        if fits[-1]:
            budget -= size
    return fits


def shortfall_line(links: int, needed: int, free: int) -> str:
    """The one warning line rank 0 prints when ``links`` links of the run
    fell back to messages for want of /dev/shm space (bytes summed over the
    nodes concerned)."""
    mib = lambda size: f"{size / (1 << 20):.1f} MiB"  # noqa: E731
    return (f"pffbench: warning: the shared-memory rings need {mib(needed)} but {SHM_PATH} has {mib(free)} free "
            f"(keeping {mib(MARGIN)} in reserve): {links} link(s) use MPI messages instead, which is slower; "
            f"give {SHM_PATH} more room (docker run --shm-size=1g, or mount -o remount,size=... {SHM_PATH}) "
            f"or pass --transport p2p to choose messages for every link")

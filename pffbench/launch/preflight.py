"""What the run entry checks before torch and MPI start (``python -m pffbench.run`` calls ``before_libraries``
ahead of its own imports, so nothing here may import torch or mpi4py).

/dev/shm.  MPICH's MPI_Init creates one shared segment per node in /dev/shm (``mpich_shm_<id>_0``) and touches
all of it; a /dev/shm with less room than that kills every rank with SIGBUS inside ``from mpi4py import MPI``,
before pffbench can say anything.  A job whose launcher is killed (SIGKILL, a batch system's hard limit) leaves
its segment behind (measured); such jobs fill a container's 64 MiB /dev/shm one by one.  (pffbench's own abort
paths, MPI_Abort and os._exit of every rank, leave nothing under MPICH's Hydra: measured, it removes the segment.)
``shm_problem`` looks first and names the segments that no running process holds.

CPU mask.  With OMP_PROC_BIND set (site modules and OpenMP job templates set it), GNU OpenMP, loaded by
``import torch``, binds the importing thread to the first place of its mask: two ranks share core 0 while core 1
idles, and a one-rank run gets one thread where it had two (measured: mask {0, 1} before, {0} after, 2-core Xeon).
``before_libraries`` keeps the mask the launcher gave, ``restore_affinity`` puts it back after the imports.
"""
from __future__ import annotations

import os
import sys

from ..comm.shm_space import SHM_PATH, free_bytes

# MPICH 5.0.2 (the one mpi4py links here) sizes its node segment as 4096 + 1057344 bytes per rank of the node:
# measured 1061440 bytes for 1 rank and 2118784 bytes (2.0 MiB, every page touched) for 2 ranks, 2-core Xeon.
MPICH_SEGMENT_PAGE, MPICH_SEGMENT_PER_RANK = 4096, 1057344
AFFINITY_VARIABLES = ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY")

_mask_before: set[int] | None = None  # the mask before any library was imported (None: not taken)


def _env_int(env, *names) -> int | None:
    for name in names:
        if env.get(name, "").isdigit():
            return int(env[name])
    return None


def node_ranks(env=None) -> tuple[int | None, int]:
    """(this rank's index on its node or None if the launcher does not say, the node's rank count, at least 1),
    from the launcher's environment: MPICH's Hydra (MPI_LOCALRANKID, MPI_LOCALNRANKS), Open MPI's mpirun
    (OMPI_COMM_WORLD_LOCAL_*), Slurm's srun (SLURM_LOCALID; SLURM_NTASKS_PER_NODE); else the world size
    (PMI_SIZE: an upper bound) or 1."""
    env = os.environ if env is None else env
    local = _env_int(env, "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")
    count = _env_int(env, "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "PMI_SIZE",
                     "OMPI_COMM_WORLD_SIZE")
    return local, max(1, count or 1)


def mpich_needs(ranks: int) -> int:
    """Bytes of /dev/shm MPICH's MPI_Init touches for ``ranks`` ranks on one node (measured, see above)."""
    return MPICH_SEGMENT_PAGE + MPICH_SEGMENT_PER_RANK * ranks


def holders(proc: str = "/proc", folder: str = SHM_PATH) -> tuple[set[str], bool]:
    """(paths under ``folder`` that a running process maps or has open, whether every process could be read).
    Reads /proc/PID/maps and /proc/PID/fd; a process that ends meanwhile is skipped, one we may not read makes
    the second item False."""
    held, complete, prefix = set(), True, folder.rstrip("/") + "/"
    for pid in (name for name in os.listdir(proc) if name.isdigit()):
        try:
            with open(f"{proc}/{pid}/maps") as maps:
                for line in maps:
                    path = line.rstrip("\n").split(maxsplit=5)[5:]
                    if path and path[0].startswith(prefix):
                        held.add(path[0].removesuffix(" (deleted)"))
            fd_dir = f"{proc}/{pid}/fd"
            for fd in os.listdir(fd_dir):
                try:
                    target = os.readlink(f"{fd_dir}/{fd}")
                except OSError:
                    continue
                if target.startswith(prefix):
                    held.add(target)
        except FileNotFoundError:
            continue  # ended while we looked
        except PermissionError:
            complete = False
    return held, complete


def stale_segments(folder: str = SHM_PATH, proc: str = "/proc") -> list[tuple[str, int]]:
    """(path, bytes of memory it holds) of each file in ``folder`` that no running process holds, largest first.
    Where some process could not be read (not root), only this user's files are named: another user's may be
    held by a process we cannot see."""
    held, complete = holders(proc, folder)
    found = []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        path = os.path.join(folder, name)
        try:
            stat = os.lstat(path)
        except OSError:
            continue
        if not os.path.isfile(path) or path in held or (not complete and stat.st_uid != os.getuid()):
            continue
        found.append((path, stat.st_blocks * 512))
    return sorted(found, key=lambda item: (-item[1], item[0]))


def _own_segment_bytes(path: str, started: float) -> int:
    """Bytes of ``path`` if it is an MPICH segment made at or after ``started``, else 0."""
    try:
        stat = os.stat(path)
    except OSError:
        return 0
    mpich = os.path.basename(path).startswith("mpich_shm_")
    return stat.st_blocks * 512 if mpich and stat.st_ctime >= started else 0


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def shm_problem(env=None, folder: str = SHM_PATH, proc: str = "/proc", started: float | None = None) -> str | None:
    """One line if ``folder`` (/dev/shm) has less free room than MPICH's start-up segment for this node's ranks
    needs, else None (also when the free room cannot be read).  ``started`` (a later rank of the node: its start
    time): the node's first rank may already be in MPI_Init, so the MPICH segments a running process holds that
    were made since then count as free (they are this job's own)."""
    _, ranks = node_ranks(env)
    free = free_bytes(folder)
    if started is not None and free is not None:
        free += sum(_own_segment_bytes(path, started) for path in holders(proc, folder)[0])
    need = mpich_needs(ranks)
    if free is None or free >= need:
        return None
    stale = stale_segments(folder, proc)
    if stale:
        shown = ", ".join(f"{path} ({_mib(size)})" for path, size in stale[:5])
        more = f" and {len(stale) - 5} more" if len(stale) > 5 else ""
        found = (f"files no running process holds (stale segments of ended jobs): {shown}{more}, "
                 f"{_mib(sum(size for _, size in stale))} in all; remove them (rm {' '.join(p for p, _ in stale)}) "
                 f"or give {folder} more room")
    else:
        found = f"every file there is held by a running process; give {folder} more room"
    return (f"{folder} has {_mib(free)} free but MPI's start-up needs {_mib(need)} for {ranks} rank(s) on this "
            f"node (with less, every rank dies with SIGBUS in MPI_Init); {found} (docker run --shm-size=1g, or "
            f"mount -o remount,size=1g {folder})")


def before_libraries() -> None:
    """The run entry's first step, before torch and mpi4py are imported: keep the CPU mask, and if /dev/shm
    cannot hold MPI's start-up segment, say so in one line on stderr and exit 2."""
    global _mask_before
    if "torch" not in sys.modules and hasattr(os, "sched_getaffinity"):
        _mask_before = os.sched_getaffinity(0)
    if "mpi4py.MPI" in sys.modules:  # MPI has started: too late to look, and it did start
        return
    local = node_ranks()[0]
    problem = shm_problem(started=None if local in (None, 0) else _process_start())
    if not problem:
        return
    if local in (None, 0):  # the node's first rank speaks for the node; the others leave quietly with it
        print(f"pffbench: error: {problem}", file=sys.stderr, flush=True)
    sys.exit(2)


def _process_start() -> float | None:
    """When this process started (its /proc entry's time), None if unknown."""
    try:
        return os.stat(f"/proc/{os.getpid()}").st_ctime
    except OSError:
        return None


def restore_affinity() -> list[int] | None:
    """After the imports: if this process's CPU mask shrank since ``before_libraries``, put it back and return
    the cores it had lost (sorted); else None."""
    if _mask_before is None:
        return None
    now = os.sched_getaffinity(0)
    lost = _mask_before - now
    if not lost:
        return None
    os.sched_setaffinity(0, _mask_before)
    return sorted(lost)


def affinity_line(lost_by_rank: list, env=None) -> str | None:
    """Rank 0's one warning line when the imports narrowed some ranks' CPU masks (``lost_by_rank``: each rank's
    ``restore_affinity`` answer), naming the affinity variables that are set; None if none was narrowed."""
    env = os.environ if env is None else env
    ranks = [rank for rank, lost in enumerate(lost_by_rank) if lost]
    if not ranks:
        return None
    named = ", ".join(f"{name}={env[name]}" for name in AFFINITY_VARIABLES if name in env) or \
        "no OpenMP affinity variable"
    return (f"pffbench: warning: importing torch narrowed the CPU mask of rank(s) {', '.join(map(str, ranks))} "
            f"to the first core ({named}: the OpenMP runtime binds the importing thread); pffbench restored the "
            f"launcher's mask; unset these variables, or bind with the launcher (srun --cpu-bind, "
            f"mpirun --bind-to)")

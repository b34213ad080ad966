"""All rank plumbing in one object: who am I, who are my neighbours, how many
threads and which device do I get."""
from __future__ import annotations

import os

import torch
from mpi4py import MPI

from .cpu_quota import Quota, cpu_quota
from .words import plural


class World:
    def __init__(self, comm: MPI.Comm | None = None):
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = node.Get_rank()
        self.local_size = node.Get_size()
        self.quota = cpu_quota()  # a container's or systemd's CPU-time limit, if any
        self.cpu_quota = self.quota.cpus if self.quota else None
        here = node.allgather((sorted(os.sched_getaffinity(0)), _cgroup_id(self.quota)))
        self.node_masks = [mask for mask, _ in here]  # the cores each rank here may use
        # the ranks here held to the same quota share it
        self.quota_sharing = sum(1 for _, cgroup in here if cgroup == here[self.local_rank][1])
        node.Free()
        self.hostname = MPI.Get_processor_name()
        self.hostnames = self.comm.allgather(self.hostname)  # by rank

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    def default_threads(self) -> int:
        """The cores this rank may run on / the ranks on this node that may
        run on any of them, so p ranks on p cores never oversubscribe: unbound
        ranks share the node's cores; ranks a launcher bound to cores of their
        own (srun --cpus-per-task, mpirun --bind-to core) use theirs; ranks
        that share a set (a job's cgroup on a shared node, Open MPI binding
        to a socket) divide it.  A CPU-time quota (a container's CPU limit,
        systemd's CPUQuota) caps it: floor(quota / period) CPUs, at least 1,
        divided among the node's ranks held to that quota (at least 1 each)."""
        mine = set(os.sched_getaffinity(0))
        sharing = sum(1 for mask in self.node_masks if mine.intersection(mask))
        threads = max(1, len(mine) // max(1, sharing))
        if self.quota is not None:
            threads = min(threads, max(1, self.quota.whole_cpus // max(1, self.quota_sharing)))
        return threads

    def missing_gpu(self, kind: str, gpu_per_rank: bool = False) -> str | None:
        """One line if some rank cannot use ``--device kind`` (asked of every
        rank together, so all of them stop, not only those without a GPU).
        ``gpu_per_rank``: the run's torch.distributed group needs a GPU of its
        own for each rank of a node (NCCL refuses two ranks on one device at
        its set-up: "Duplicate GPU detected")."""
        gpus = torch.cuda.device_count() if kind == "cuda" and torch.cuda.is_available() else 0
        problems = self.comm.allgather(None if kind != "cuda" else (
            f"torch sees no CUDA device on {self.hostname}" if gpus == 0 else
            f"{self.local_size} ranks on {self.hostname} share {plural(gpus, 'GPU')}: this variant's NCCL group "
            f"needs a GPU per rank (run at most {gpus} rank(s) a node)" if gpu_per_rank and gpus < self.local_size
            else None))
        problems = sorted({problem for problem in problems if problem})
        return f"--device cuda: {'; '.join(problems)}" if problems else None

    def device(self, kind: str) -> torch.device:
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("--device cuda: torch sees no CUDA device on " + self.hostname)
            device = torch.device("cuda", self.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(device)  # so that what names no device (pinned memory, contexts) uses ours, not GPU 0
            return device
        return torch.device("cpu")


def _cgroup_id(quota: Quota | None) -> tuple[int, int] | None:
    """Which cgroup sets the quota, comparable between ranks whatever mount
    or namespace each sees it through (its folder's device and inode)."""
    if quota is None:
        return None
    try:
        stat = os.stat(quota.cgroup)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def launch_mismatch(world_size: int, environ=None) -> str | None:
    """One line if the MPI world is not the one the launcher started, else None.

    Under plain `srun` with no PMI plugin that the MPI library understands
    (MpiDefault=none, or Open MPI without --mpi=pmix), every task becomes a
    world of its own: n one-rank jobs that each train the whole run.  The
    expected size is the launcher's own count: PMI_SIZE (srun --mpi=pmi2,
    MPICH's mpiexec) or OMPI_COMM_WORLD_SIZE (Open MPI's mpirun), else
    SLURM_NTASKS inside an srun step (SLURM_STEP_ID set).  SLURM_NTASKS alone
    is not compared in the batch step itself, where mpiexec and mpirun start
    their own ranks and Slurm's count describes the allocation, not the world.
    PFFBENCH_NO_WORLD_CHECK=1 turns the check off.
    """
    env = os.environ if environ is None else environ
    if env.get("PFFBENCH_NO_WORLD_CHECK") == "1":
        return None
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if env.get(var, "").isdigit():
            expected, source = int(env[var]), f"{var}={env[var]}"
            break
    else:
        if "SLURM_STEP_ID" not in env or not env.get("SLURM_NTASKS", "").isdigit():
            return None
        expected, source = int(env["SLURM_NTASKS"]), f"SLURM_NTASKS={env['SLURM_NTASKS']}"
    if expected == world_size:
        return None
    return (f"the MPI world has {plural(world_size, 'rank')} but the launcher started {expected} tasks ({source}): "
            f"the MPI library did not join them into one job; use `srun --mpi=pmi2` (MPICH) or "
            f"`srun --mpi=pmix` (Open MPI), or mpirun/mpiexec inside the allocation")

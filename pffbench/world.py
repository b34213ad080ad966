"""All rank plumbing in one object: who am I, who are my neighbours, how many
threads and which device do I get."""
from __future__ import annotations

import os

import torch
from mpi4py import MPI


class World:
    def __init__(self, comm: MPI.Comm | None = None):
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = node.Get_rank()
        self.local_size = node.Get_size()
        node.Free()
        self.hostname = MPI.Get_processor_name()

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1

    @property
    def prev(self) -> int | None:
        return self.rank - 1 if self.rank > 0 else None

    @property
    def next(self) -> int | None:
        return self.rank + 1 if self.rank < self.size - 1 else None

    def default_threads(self) -> int:
        """Cores on the node / ranks on the node, so p ranks on p cores never
        oversubscribe.  A launcher that already bound us to fewer cores than
        the node has (srun --cpus-per-task, mpirun --bind-to) has done the
        division for us: use the cores we are bound to."""
        bound = len(os.sched_getaffinity(0))
        if bound < (os.cpu_count() or bound):
            return max(1, bound)
        return max(1, bound // self.local_size)

    def device(self, kind: str) -> torch.device:
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("--device cuda: torch sees no CUDA device on " + self.hostname)
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")

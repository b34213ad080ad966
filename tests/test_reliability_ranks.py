"""Reliability collectives on real ranks, in process (mpiexec -n 2/4 ... pytest --with-mpi -m mpi)."""
import os
import shutil
import signal
import tempfile

import numpy as np
import pytest
import torch
from mpi4py import MPI

from pffbench import checkpoint, faults
from pffbench.config import Config

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(120)]


def test_every_rank_gets_the_same_verdict_whoever_saw_the_problem(monkeypatch):
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    owner_of = list(range(size))  # layer i on rank i
    linear = torch.nn.Linear(2, 2)
    if rank == size - 1:
        with torch.no_grad():
            linear.weight.fill_(float("nan"))
    losses = np.zeros(size)
    losses[rank] = 1.0
    monkeypatch.setattr(faults.INTERRUPTS, "signum", int(signal.SIGTERM) if rank == 1 else 0)
    summed, failure, signum = faults.agree_at_boundary(comm, 2, losses, {rank: linear}, owner_of)
    assert list(summed) == [1.0] * size
    assert failure.startswith(f"non-finite weights (NaN or Inf) in layer {size - 1} on rank {size - 1} at epoch 3")
    assert signum == signal.SIGTERM  # only rank 1 was signalled


def test_checkpoint_is_complete_only_when_every_rank_wrote_its_file():
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    folder = comm.bcast(tempfile.mkdtemp(prefix="pffbench-ck-") if rank == 0 else None, root=0)
    config = Config(dataset="synthetic", layers=(4,) * size, checkpoint_dir=folder)
    store = checkpoint.Checkpoints.from_config(config, comm)
    store.save(1, {"rank": rank, "w": torch.full((3,), float(rank))})
    comm.Barrier()
    assert sorted(os.listdir(os.path.join(folder, "epoch-000001"))) == \
        [checkpoint.MARKER] + [f"rank-{r:04d}.pt" for r in range(size)]
    tag, state = store.load_latest()
    assert tag == 1 and state["rank"] == rank and torch.equal(state["w"], torch.full((3,), float(rank)))
    comm.Barrier()
    if rank == 0:  # a later checkpoint one rank never finished: resume ignores it
        os.makedirs(os.path.join(folder, "epoch-000002"))
        torch.save({"rank": 0}, os.path.join(folder, "epoch-000002", "rank-0000.pt"))
    comm.Barrier()
    assert store.load_latest()[0] == 1
    comm.Barrier()
    if rank == 0:
        shutil.rmtree(folder)

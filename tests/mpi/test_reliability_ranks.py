"""Reliability collectives on real ranks, in process (mpiexec -n 2/4 ... pytest --with-mpi -m mpi)."""
import os
import shutil
import signal
import tempfile

import numpy as np
import pytest
import torch
from mpi4py import MPI

from pffbench.core.config import Config
from pffbench.reliability import checkpoint, faults
from pffbench.reliability.agreement import LaggedAgreement, agree_at_boundary

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
    summed, failure, signum = agree_at_boundary(comm, 2, losses, {rank: linear}, owner_of)
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


def test_a_checkpoint_one_rank_could_not_write_is_never_marked_complete(monkeypatch):
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    folder = comm.bcast(tempfile.mkdtemp(prefix="pffbench-ck-") if rank == 0 else None, root=0)
    store = checkpoint.Checkpoints.from_config(Config(dataset="synthetic", layers=(4,) * size, checkpoint_dir=folder),
                                               comm)
    store.save(1, {"rank": rank})
    real_write = checkpoint.atomic_write

    def full_disk(path, write):  # the last rank's file of checkpoint 2 cannot be written
        if rank == size - 1 and "epoch-000002" in path:
            raise OSError(28, "No space left on device")
        real_write(path, write)
    monkeypatch.setattr(checkpoint, "atomic_write", full_disk)
    failure = store.save(2, {"rank": rank})  # every rank hears it, not only the one whose write failed
    assert failure is not None and failure.startswith(f"rank {size - 1}: cannot write ") and \
        "No space left on device" in failure, failure
    comm.Barrier()
    assert not os.path.exists(os.path.join(folder, "epoch-000002", checkpoint.MARKER))
    assert store.load_latest()[0] == 1  # resume takes the last complete one
    comm.Barrier()
    if rank == 0:
        shutil.rmtree(folder)


def test_lagged_agreement_gives_every_rank_the_same_tables_lag_rounds_late():
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    agreement = LaggedAgreement(comm, lag=2)
    seen = []
    for boundary in range(5):
        agreement.post(boundary, [rank, boundary, rank * boundary])
        due = agreement.due(boundary)
        assert [b for b, _ in due] == ([boundary - 2] if boundary >= 2 else [])
        seen += due
    seen += agreement.due()  # the rest, at the end
    assert [b for b, _ in seen] == list(range(5))
    for boundary, table in seen:
        assert table.tolist() == [[r, boundary, r * boundary] for r in range(size)]


def test_post_drain_settles_messages_no_one_will_read():
    """A stopped PFF run: a layer published to the next rank for a chapter that
    will not run (large enough not to go eagerly), and a receive preposted for
    one no one will publish; drain must return on every rank, the send done."""
    from pffbench.schedules.pff.communications import Post
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    post = Post(comm, {0: 1 << 20, 1: 4})
    post.publish(0, torch.full((1 << 20,), float(rank)), [(rank + 1) % size])
    post.expect(1, (rank - 1) % size)
    post.drain()
    assert post._sending == [] and not any(post._posted.values())
    post.publish(1, torch.full((4,), float(rank)), [(rank + 1) % size])  # the Post still works afterwards
    assert post.get(1, (rank - 1) % size).tolist() == [float((rank - 1) % size)] * 4
    post.flush()

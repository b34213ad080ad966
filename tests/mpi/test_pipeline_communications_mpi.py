"""The pipeline's links under mpiexec -n 2 / -n 4: the shared-memory ring
(every test run is on one node) and MPI messages carry the same messages."""
import mmap

import numpy as np
import pytest
import torch

from pffbench.comm import guard
from pffbench.instrument.timer import EpochTimer
from pffbench.schedules.pipeline.communications import Links, MessageReceiver, MessageSender, RingReceiver, RingSender

MPI = pytest.importorskip("mpi4py.MPI")
pytestmark = pytest.mark.mpi(min_size=2)

WIDTH = 7


def message(sender: int, index: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(activity, norms) of message ``index``: every value tells who sent it and which message it is."""
    activity = torch.arange(rows * WIDTH, dtype=torch.float32).reshape(rows, WIDTH) + 1000 * index + 0.5 * sender
    return activity, -activity[:, :1] - 0.25


def assert_same(got, expected):
    assert got[0].shape == expected[0].shape and got[1].shape == expected[1].shape
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)


@pytest.fixture(autouse=True)
def short_peer_timeout():
    guard.set_peer_timeout(20)  # a link that blocks where it must not fails the test instead of hanging it
    yield
    guard.set_peer_timeout(600)


@pytest.mark.parametrize("shared", [True, False])
def test_links_carry_every_message_in_order(shared):
    comm = MPI.COMM_WORLD
    rows = [5, 3] * 10 + [1]  # more messages than slots, and a short last one
    links = Links(comm, EpochTimer(1), WIDTH, WIDTH, rows, ahead=3, shared=shared)
    ring = (RingReceiver, RingSender) if shared else (MessageReceiver, MessageSender)
    assert links.receiver is None if comm.rank == 0 else isinstance(links.receiver, ring[0])
    assert links.sender is None if comm.rank == comm.size - 1 else isinstance(links.sender, ring[1])
    assert links.kind == ("shared" if shared else "messages")
    for index, n in enumerate(rows):
        if links.receiver:
            assert_same(links.receiver.receive(), message(comm.rank - 1, index, n))
        if links.sender:
            activity, norms = message(comm.rank, index, n)
            if index % 2:  # computed in place, or copied in by send()
                out, out_norms = links.sender.slot(n)
                out.copy_(activity)
                out_norms.copy_(norms)
                links.sender.send(out, out_norms)
            else:
                links.sender.send(activity, norms)
    links.close()


@pytest.mark.parametrize("shared", [True, False])
def test_a_sender_runs_ahead_without_waiting_for_its_receiver(shared):
    comm = MPI.COMM_WORLD
    ahead = 4
    rows = [2] * ahead
    links = Links(comm, EpochTimer(1), WIDTH, WIDTH, rows, ahead=ahead, shared=shared)
    if links.sender:  # every message goes out before anyone receives
        for index, n in enumerate(rows):
            links.sender.send(*message(comm.rank, index, n))
    comm.Barrier()
    if links.receiver:
        for index, n in enumerate(rows):
            assert_same(links.receiver.receive(), message(comm.rank - 1, index, n))
    links.close()


@pytest.mark.parametrize("shared", [True, False])
def test_links_close_cleanly_when_a_run_stops_early(shared):
    comm = MPI.COMM_WORLD
    rows = [3] * 12
    links = Links(comm, EpochTimer(1), WIDTH, WIDTH, rows, ahead=2, shared=shared)
    for index in range(5):  # the ranks agree to stop after 5 of 12 messages
        if links.receiver:
            links.receiver.receive()
        if links.sender:
            links.sender.send(*message(comm.rank, index, 3))
    if links.receiver:
        links.receiver.cancel()
    links.close()
    comm.Barrier()  # nothing left half-done: the next collective completes
    assert np.isclose(comm.allreduce(1.0), comm.size)


@pytest.mark.parametrize("room", ["none", "first ring"])
def test_rings_short_of_dev_shm_become_messages_and_still_carry_every_message(monkeypatch, room):
    """/dev/shm with no room (every link a message) or room for rank 0's
    ring only (with 3+ ranks, the others are messages: both ends of each
    link must agree).  Node rank 0 reports (links short, bytes needed, free)."""
    from pffbench.comm import shm_space
    from pffbench.schedules.pipeline.communications import _Ring
    comm = MPI.COMM_WORLD
    rows = [5, 3] * 10 + [1]
    ring = _Ring.nbytes(4, max(rows), WIDTH)
    assert ring <= mmap.PAGESIZE  # 3 cache lines and 4 slots of 5 x (7 + 1) floats: 832 bytes, one page
    free = 0 if room == "none" else shm_space.MARGIN + mmap.PAGESIZE
    monkeypatch.setattr(shm_space, "free_bytes", lambda path=shm_space.SHM_PATH: free)
    links = Links(comm, EpochTimer(1), WIDTH, WIDTH, rows, ahead=3, shared=True)
    shared_out = room == "first ring" and comm.rank == 0
    assert links.sender is None if comm.rank == comm.size - 1 else \
        isinstance(links.sender, RingSender if shared_out else MessageSender)
    assert links.receiver is None if comm.rank == 0 else \
        isinstance(links.receiver, RingReceiver if room == "first ring" and comm.rank == 1 else MessageReceiver)
    short = comm.size - 1 - (room == "first ring")
    assert links.shm_shortfall == ((short, ring * (comm.size - 1), free) if comm.rank == 0 and short else None)
    for index, n in enumerate(rows):
        if links.receiver:
            assert_same(links.receiver.receive(), message(comm.rank - 1, index, n))
        if links.sender:
            links.sender.send(*message(comm.rank, index, n))
    links.close()

"""MPI for the activation pipeline: each rank's activations to the next rank.

A message is a layer's activity before normalization and its row norms: rows
x width floats, then rows floats (activity / norms is what the next layer
trains on).  The receiver normalizes in place; the first rank, which also
makes every minibatch, so has one pass less to make.

Two links, one interface.  A sender offers ``slot(rows)`` (the (activity,
norms) views the caller computes the next message into), ``send(activity,
norms)`` (which copies them in if they were computed elsewhere, e.g. on a
GPU) and ``flush()``; a receiver offers ``receive()`` -> (activity, norms)
and ``cancel()``.  Either lets the sender run ``ahead`` messages ahead of
the receiver, which absorbs the jitter of either rank's compute.

- Between ranks on one node: a single-producer single-consumer ring of
  ``ahead + 1`` slots in a shared-memory window (MPI_Win_allocate_shared)
  owned by the sender, with two counters beside it: messages written (set by
  the sender) and messages released (set by the receiver).  The sender's
  last layer writes its output straight into the next free slot; the
  receiver trains on the slot in place.  No byte is copied and no MPI call
  is made per message: on a 2-core VM a 400 KB MPI message costs the
  receiver ~0.15-0.2 ms (copy plus the first MPI calls after a layer step,
  whose code and data a step has evicted from the caches), the ring ~0.01 ms.
- Between nodes, between ranks of a node whose /dev/shm has no room for the
  ring (see comm/shm_space.py), or everywhere with ``--transport p2p``: buffer-based
  Isend/Irecv of raw float32 (never pickled) from and into preallocated
  buffers.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch
from mpi4py import MPI

from ...comm import shm_space
from ...comm.guard import wait, wait_until
from ...instrument.timer import EpochTimer

ACTIVATION_TAG = 11
AHEAD = 8  # messages a sender may run ahead: 8 x 5 ms of compute rides out a stall of either rank
_LINE = 64  # bytes: the counters sit on cache lines of their own, the slots start on one


def _split(flat: torch.Tensor, rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A message's (activity [rows, width], row norms [rows, 1]) in a flat buffer."""
    return flat[:rows * width].view(rows, width), flat[rows * width:rows * (width + 1)].view(rows, 1)


class _Buffers:
    """``count`` message buffers of up to ``rows`` x (``width`` + 1) float32
    over ``memory``, their (activity, norms) views cut once: cutting views
    right after a layer step, whose work has evicted torch's code and data
    from the caches, costs ~25 us."""

    def __init__(self, memory: np.ndarray, count: int, rows: int, width: int):
        size = rows * (width + 1)
        self.rows, self.width = rows, width
        self.flat = list(torch.from_numpy(memory[:count * size]).view(count, size))
        self.full = [_split(flat, rows, width) for flat in self.flat]

    def __len__(self) -> int:
        return len(self.flat)

    def views(self, index: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(activity, norms) of message ``index``, which has ``rows`` rows."""
        if rows == self.rows:
            return self.full[index % len(self.flat)]
        return _split(self.flat[index % len(self.flat)], rows, self.width)

    def message(self, index: int, rows: int) -> np.ndarray:
        """The bytes of message ``index`` as MPI sends them."""
        return self.flat[index % len(self.flat)][:rows * (self.width + 1)].numpy()

    @staticmethod
    def allocate(count: int, rows: int, width: int) -> "_Buffers":
        # allocated by torch: aligned to 64 bytes like the tensors the layers compute on (numpy: 16)
        return _Buffers(torch.empty(count * rows * (width + 1), dtype=torch.float32).numpy(), count, rows, width)


class Links:
    """This rank's links to its pipeline neighbours (``receiver`` from rank-1,
    ``sender`` to rank+1, None at the ends).  Made and closed by every rank
    together: the shared window is allocated and freed collectively."""

    def __init__(self, comm: MPI.Comm, timer: EpochTimer, in_width: int, out_width: int, row_counts,
                 ahead: int = AHEAD, shared: bool = True):
        rank, size = comm.Get_rank(), comm.Get_size()
        row_counts = list(row_counts)
        max_rows = max(row_counts, default=0)
        self._window = None
        self.shm_shortfall = None  # on a node's first rank: (links, bytes needed, bytes free) if rings did not fit
        ring_in = ring_out = None
        if shared and size > 1:
            node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
            on_node = node.allgather(rank)  # world ranks, in node-rank order
            owns_ring = rank + 1 < size and rank + 1 in on_node
            nbytes = _Ring.nbytes(ahead + 1, max_rows, out_width) if owns_ring else 0
            # what the node's rings need against /dev/shm's free space, asked once per node: a ring that
            # does not fit would SIGBUS its writer mid-epoch, so it becomes a message link instead
            needs = node.allgather(nbytes)
            free = node.bcast(shm_space.free_bytes() if node.Get_rank() == 0 else None)
            fits = shm_space.rings_that_fit(needs, free)
            short = sum(need > 0 for need in needs) - sum(fits)
            if short and node.Get_rank() == 0:
                self.shm_shortfall = (short, sum(needs), free)
            owns_ring = owns_ring and fits[on_node.index(rank)]
            nbytes = nbytes if owns_ring else 0
            self._window = MPI.Win.Allocate_shared(nbytes, 1, comm=node)
            self._window.Lock_all(MPI.MODE_NOCHECK)  # a passive epoch, in which Win.Sync orders loads and stores
            if owns_ring:
                ring_out = _Ring(self._window, on_node.index(rank), ahead + 1, max_rows, out_width, fresh=True)
            self._window.Sync()
            node.Barrier()  # every ring's counters are zeroed before anyone reads them
            node.Free()
            if rank > 0 and rank - 1 in on_node and fits[on_node.index(rank - 1)]:
                ring_in = _Ring(self._window, on_node.index(rank - 1), ahead + 1, max_rows, in_width)
        self.receiver = None if rank == 0 else (
            RingReceiver(rank - 1, ring_in, self._window, row_counts, timer) if ring_in is not None
            else MessageReceiver(comm, rank - 1, in_width, row_counts, timer, ahead))
        self.sender = None if rank == size - 1 else (
            RingSender(rank + 1, ring_out, self._window, timer) if ring_out is not None
            else MessageSender(comm, rank + 1, out_width, max_rows, timer, ahead + 1))

    @property
    def kind(self) -> str:
        """'shared' if a neighbour link is a shared ring, else 'messages'."""
        return "shared" if self.counts()[0] else "messages"

    def counts(self) -> tuple[int, int]:
        """(shared rings, message links) among this rank's links."""
        links = [link for link in (self.receiver, self.sender) if link is not None]
        rings = sum(isinstance(link, (RingReceiver, RingSender)) for link in links)
        return rings, len(links) - rings

    def close(self) -> None:
        """Complete what is in flight and free the window; every rank calls
        this together, after the last message (or after cancel() on a stop)."""
        if self.sender:
            self.sender.flush()
        if self._window is not None:
            self._window.Unlock_all()
            self._window.Free()
            self._window = None


class _Ring:
    """A view of one sender's segment: [written | released | slots...]."""

    @staticmethod
    def nbytes(slots: int, rows: int, width: int) -> int:
        return 3 * _LINE + slots * rows * (width + 1) * 4  # two counter lines, and room to align the slots

    def __init__(self, window: MPI.Win, owner: int, slots: int, rows: int, width: int, fresh: bool = False):
        memory, _ = window.Shared_query(owner)
        raw = np.frombuffer(memory, dtype=np.uint8)
        start = -raw.ctypes.data % _LINE
        self.written = raw[start:start + 8].view(np.int64)
        self.released = raw[start + _LINE:start + _LINE + 8].view(np.int64)
        body = raw[start + 2 * _LINE:start + 2 * _LINE + slots * rows * (width + 1) * 4]
        self.slots = _Buffers(body.view(np.float32), slots, rows, width)
        if fresh:
            self.written[0] = self.released[0] = 0


class RingSender:
    """Writes message i into slot i mod S once the receiver has released
    message i - S, then counts it written."""

    def __init__(self, dest: int, ring: _Ring, window: MPI.Win, timer: EpochTimer):
        self.dest, self.ring, self.window, self.timer = dest, ring, window, timer
        self._next = 0

    def slot(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (activity, norms) message ``self._next`` goes out from; waits (booked
        as send wait) until the receiver has released the message before in it."""
        slots, released = len(self.ring.slots), self.ring.released
        needed = self._next - slots + 1
        if released[0] < needed:
            with self.timer("send_wait"):
                wait_until(lambda: released[0] >= needed, self.dest, "the release of an activation slot")
            self.window.Sync()  # the receiver's reads of the slot happen before our writes
        return self.ring.slots.views(self._next, rows)

    def send(self, activity: torch.Tensor, norms: torch.Tensor) -> None:
        out, out_norms = self.slot(activity.shape[0])
        _copy_in(self.timer, activity, norms, out, out_norms)
        self.window.Sync()  # the slot's bytes are visible before the count that announces them
        self._next += 1
        self.ring.written[0] = self._next

    def flush(self) -> None:
        pass  # nothing is in flight: a written slot is already where the receiver reads it


def _copy_in(timer: EpochTimer, activity, norms, out, out_norms) -> None:
    if activity.data_ptr() != out.data_ptr():
        with timer("send_wait"):  # the copy an MPI message would make, booked as sending
            out.copy_(activity)
            out_norms.copy_(norms)


class RingReceiver:
    """Reads message i in place from slot i mod S of the sender's ring."""

    def __init__(self, source: int, ring: _Ring, window: MPI.Win, row_counts: list[int], timer: EpochTimer):
        self.source, self.ring, self.window, self.timer = source, ring, window, timer
        self.row_counts = row_counts
        self._next = 0

    def receive(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next message's (activity, norms), views of its slot, valid (and
        the receiver's to write) until the following receive() call, which
        releases the slot to the sender."""
        index, written = self._next, self.ring.written
        with self.timer("recv_wait"):
            if index:
                self.window.Sync()  # our reads of the previous message happen before its release
                self.ring.released[0] = index
            if written[0] <= index:
                wait_until(lambda: written[0] > index, self.source, "a receive of activations")
            self.window.Sync()
        self._next += 1
        return self.ring.slots.views(index, self.row_counts[index])

    def cancel(self) -> None:
        pass  # nothing is posted


class MessageSender:
    """Non-blocking sends to one peer from ``depth`` preallocated buffers, as
    many sends in flight."""

    def __init__(self, comm: MPI.Comm, dest: int, width: int, max_rows: int, timer: EpochTimer, depth: int):
        self.comm, self.dest, self.timer = comm, dest, timer
        self._buffers = _Buffers.allocate(depth, max_rows, width)
        self._in_flight: deque = deque()
        self._next = 0

    def slot(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (activity, norms) buffer of the next message; waits (booked as
        send wait) for the send that used it last."""
        if len(self._in_flight) == len(self._buffers):
            self._wait_oldest()
        return self._buffers.views(self._next, rows)

    def send(self, activity: torch.Tensor, norms: torch.Tensor) -> None:
        rows = activity.shape[0]
        out, out_norms = self.slot(rows)
        _copy_in(self.timer, activity, norms, out, out_norms)
        message = self._buffers.message(self._next, rows)
        self._in_flight.append(self.comm.Isend([message, MPI.FLOAT], dest=self.dest, tag=ACTIVATION_TAG))
        self._next += 1

    def _wait_oldest(self) -> None:
        with self.timer("send_wait"):
            wait(self._in_flight[0], self.dest, "a send of activations")
        self._in_flight.popleft()

    def flush(self) -> None:
        while self._in_flight:
            self._wait_oldest()


class MessageReceiver:
    """Receives a known sequence of messages from one peer into preallocated
    buffers, with ``ahead`` receives posted before the consumer asks for them."""

    def __init__(self, comm: MPI.Comm, source: int, width: int, row_counts, timer: EpochTimer, ahead: int):
        self.comm, self.source, self.timer = comm, source, timer
        self._row_counts = list(row_counts)
        # one more buffer than receives posted: the consumer's current message lives in it
        self._buffers = _Buffers.allocate(ahead + 1, max(self._row_counts, default=0), width)
        self._pending: deque = deque()
        self._posted = self._next = 0
        for _ in range(ahead):
            self._post_next()

    def _post_next(self) -> None:
        if self._posted == len(self._row_counts):
            return
        message = self._buffers.message(self._posted, self._row_counts[self._posted])
        self._pending.append(self.comm.Irecv([message, MPI.FLOAT], source=self.source, tag=ACTIVATION_TAG))
        self._posted += 1

    def receive(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next message's (activity, norms), views of its buffer, valid
        (and the receiver's to write) until the *following* receive() call
        returns, which is when the buffer is handed back to MPI."""
        request = self._pending.popleft()
        with self.timer("recv_wait"):
            wait(request, self.source, "a receive of activations")
        self._post_next()
        index = self._next
        self._next += 1
        return self._buffers.views(index, self._row_counts[index])

    def cancel(self) -> None:
        """Withdraw the preposted receive(s): the run stops early."""
        while self._pending:
            request = self._pending.popleft()
            request.Cancel()
            request.Wait()  # a cancelled receive completes locally

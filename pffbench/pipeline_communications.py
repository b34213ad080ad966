"""MPI for the activation pipeline: each rank's activations to the next rank.

Two links, one interface.  A sender offers ``slot(rows)`` (a buffer the
caller may compute the next message into, or None), ``send(x)`` and
``flush()``; a receiver offers ``receive()`` and ``cancel()``.  Either lets
the sender run ``ahead`` messages ahead of the receiver, which absorbs the
jitter of either rank's compute.

- Between ranks on one node: a single-producer single-consumer ring of
  ``ahead + 1`` slots in a shared-memory window (MPI_Win_allocate_shared)
  owned by the sender, with two counters beside it: messages written (set by
  the sender) and messages released (set by the receiver).  The sender's
  last layer writes its output straight into the next free slot; the
  receiver trains on the slot in place.  No byte is copied and no MPI call
  is made per message: on a 2-core VM a 400 KB MPI message costs the
  receiver ~0.15-0.2 ms (copy plus the first MPI calls after a layer step,
  whose code and data a step has evicted from the caches), the ring ~0.01 ms.
- Between nodes, or everywhere with ``--transport p2p``: buffer-based
  Isend/Irecv of raw float32 (never pickled) into preallocated buffers.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch
from mpi4py import MPI

from .timing import EpochTimer
from .transport import wait, wait_until

ACTIVATION_TAG = 11
AHEAD = 8  # messages a sender may run ahead: 8 x 5 ms of compute rides out a stall of either rank
_LINE = 64  # bytes: the counters sit on cache lines of their own, the slots start on one


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
        ring_in = ring_out = None
        if shared and size > 1:
            node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
            on_node = node.allgather(rank)  # world ranks, in node-rank order
            owns_ring = rank + 1 < size and rank + 1 in on_node
            nbytes = _Ring.nbytes(ahead + 1, max_rows, out_width) if owns_ring else 0
            self._window = MPI.Win.Allocate_shared(nbytes, 1, comm=node)
            self._window.Lock_all(MPI.MODE_NOCHECK)  # a passive epoch, in which Win.Sync orders loads and stores
            if owns_ring:
                ring_out = _Ring(self._window, on_node.index(rank), ahead + 1, max_rows, out_width, fresh=True)
            self._window.Sync()
            node.Barrier()  # every ring's counters are zeroed before anyone reads them
            node.Free()
            if rank > 0 and rank - 1 in on_node:
                ring_in = _Ring(self._window, on_node.index(rank - 1), ahead + 1, max_rows, in_width)
        self.receiver = None if rank == 0 else (
            RingReceiver(rank - 1, ring_in, self._window, row_counts, timer) if ring_in is not None
            else MessageReceiver(comm, rank - 1, in_width, row_counts, timer, ahead))
        self.sender = None if rank == size - 1 else (
            RingSender(rank + 1, ring_out, self._window, timer) if ring_out is not None
            else MessageSender(comm, rank + 1, timer, ahead + 1))

    @property
    def kind(self) -> str:
        """'shared' if a neighbour link is a shared ring, else 'messages'."""
        links = [link for link in (self.receiver, self.sender) if link is not None]
        return "shared" if any(isinstance(link, (RingReceiver, RingSender)) for link in links) else "messages"

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
        return 3 * _LINE + slots * rows * width * 4  # two counter lines, and room to align the slots

    def __init__(self, window: MPI.Win, owner: int, slots: int, rows: int, width: int, fresh: bool = False):
        memory, _ = window.Shared_query(owner)
        raw = np.frombuffer(memory, dtype=np.uint8)
        start = -raw.ctypes.data % _LINE
        self.written = raw[start:start + 8].view(np.int64)
        self.released = raw[start + _LINE:start + _LINE + 8].view(np.int64)
        body = raw[start + 2 * _LINE:start + 2 * _LINE + slots * rows * width * 4]
        # one view per slot, made once: indexing a tensor right after a layer step costs ~50 us
        self.slots = list(torch.from_numpy(body.view(np.float32).reshape(slots, rows, width)))
        if fresh:
            self.written[0] = self.released[0] = 0

    def slot(self, index: int, rows: int) -> torch.Tensor:
        full = self.slots[index % len(self.slots)]
        return full if rows == full.shape[0] else full[:rows]


class RingSender:
    """Writes message i into slot i mod S once the receiver has released
    message i - S, then counts it written."""

    def __init__(self, dest: int, ring: _Ring, window: MPI.Win, timer: EpochTimer):
        self.dest, self.ring, self.window, self.timer = dest, ring, window, timer
        self._next = 0

    def slot(self, rows: int) -> torch.Tensor:
        """The buffer message ``self._next`` goes out from; waits (booked as
        send wait) until the receiver has released the message before in it."""
        slots, released = len(self.ring.slots), self.ring.released
        needed = self._next - slots + 1
        if released[0] < needed:
            with self.timer("send_wait"):
                wait_until(lambda: released[0] >= needed, self.dest, "the release of an activation slot")
            self.window.Sync()  # the receiver's reads of the slot happen before our writes
        return self.ring.slot(self._next, rows)

    def send(self, x: torch.Tensor) -> None:
        buffer = self.slot(x.shape[0])
        if x.data_ptr() != buffer.data_ptr():
            with self.timer("send_wait"):  # the copy an MPI message would make, booked as sending
                buffer.copy_(x)
        self.window.Sync()  # the slot's bytes are visible before the count that announces them
        self._next += 1
        self.ring.written[0] = self._next

    def flush(self) -> None:
        pass  # nothing is in flight: a written slot is already where the receiver reads it


class RingReceiver:
    """Reads message i in place from slot i mod S of the sender's ring."""

    def __init__(self, source: int, ring: _Ring, window: MPI.Win, row_counts: list[int], timer: EpochTimer):
        self.source, self.ring, self.window, self.timer = source, ring, window, timer
        self.row_counts = row_counts
        self._next = 0

    def receive(self) -> torch.Tensor:
        """The next message, as a view of its slot, valid until the following
        receive() call, which releases the slot to the sender."""
        index, written = self._next, self.ring.written
        with self.timer("recv_wait"):
            if index:
                self.window.Sync()  # our reads of the previous message happen before its release
                self.ring.released[0] = index
            if written[0] <= index:
                wait_until(lambda: written[0] > index, self.source, "a receive of activations")
            self.window.Sync()
        self._next += 1
        return self.ring.slot(index, self.row_counts[index])

    def cancel(self) -> None:
        pass  # nothing is posted


class MessageSender:
    """Non-blocking sends to one peer, at most ``depth`` in flight."""

    def __init__(self, comm: MPI.Comm, dest: int, timer: EpochTimer, depth: int):
        self.comm, self.dest, self.timer, self.depth = comm, dest, timer, depth
        self._in_flight: deque = deque()

    def slot(self, rows: int) -> None:
        return None  # any tensor will do: it is sent from where it lies

    def send(self, x: torch.Tensor) -> None:
        """Start sending ``x``; the tensor itself is the send buffer, so it is
        kept alive (not copied) until its send completes."""
        if len(self._in_flight) == self.depth:
            self._wait_oldest()
        x = x.detach().to("cpu", torch.float32).contiguous()
        request = self.comm.Isend([x.numpy(), MPI.FLOAT], dest=self.dest, tag=ACTIVATION_TAG)
        self._in_flight.append((request, x))

    def _wait_oldest(self) -> None:
        request, _ = self._in_flight[0]
        with self.timer("send_wait"):
            wait(request, self.dest, "a send of activations")
        self._in_flight.popleft()

    def flush(self) -> None:
        while self._in_flight:
            self._wait_oldest()


class MessageReceiver:
    """Receives a known sequence of [rows, width] float32 messages from one
    peer into preallocated buffers, with ``ahead`` receives posted before the
    consumer asks for them."""

    def __init__(self, comm: MPI.Comm, source: int, width: int, row_counts, timer: EpochTimer, ahead: int):
        self.comm, self.source, self.timer = comm, source, timer
        row_counts = list(row_counts)
        max_rows = max(row_counts, default=0)
        # allocated by torch, so aligned to 64 bytes like the tensors the layers compute on (numpy: 16);
        # one more buffer than receives posted: the consumer's current message lives in it
        self._buffers = [torch.empty((max_rows, width), dtype=torch.float32).numpy() for _ in range(ahead + 1)]
        self._next_buffer = 0
        self._pending: deque = deque()
        self._row_counts = iter(row_counts)
        for _ in range(ahead):
            self._post_next()

    def _post_next(self) -> None:
        rows = next(self._row_counts, None)
        if rows is None:
            return
        view = self._buffers[self._next_buffer][:rows]
        self._next_buffer = (self._next_buffer + 1) % len(self._buffers)
        request = self.comm.Irecv([view, MPI.FLOAT], source=self.source, tag=ACTIVATION_TAG)
        self._pending.append((request, view))

    def receive(self) -> torch.Tensor:
        """The next message, as a tensor viewing its buffer.  The view stays
        valid until the *following* receive() call returns, which is when the
        buffer is handed back to MPI for a later message."""
        request, view = self._pending.popleft()
        with self.timer("recv_wait"):
            wait(request, self.source, "a receive of activations")
        self._post_next()
        return torch.from_numpy(view)

    def cancel(self) -> None:
        """Withdraw the preposted receive(s): the run stops early."""
        while self._pending:
            request, _ = self._pending.popleft()
            request.Cancel()
            request.Wait()  # a cancelled receive completes locally


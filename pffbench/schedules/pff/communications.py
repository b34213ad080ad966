"""MPI for the paper's PFF variants: only weights travel, never activations.

A *slot* is one published unit: a layer's parameters (weights and biases,
plus its head for Performance-Optimized PFF), the softmax head, or a chapter's
label scores for adaptive negatives.  A slot travels as one flat float32
buffer with tag ``SLOT_TAG + slot``; MPI keeps messages with the same source
and tag in order, so chapter after chapter needs no chapter in the tag.
"""
from __future__ import annotations

from collections import defaultdict, deque

import numpy as np
import torch
from mpi4py import MPI

from ...comm.guard import wait, wait_all

SLOT_TAG = 2000


class Post:
    """Point-to-point publish/get of slots.

    ``publish`` starts non-blocking sends straight from a private copy of the
    state, so the publisher trains on while the layer travels; ``expect``
    preposts a receive so the layer can arrive during the receiver's own
    compute; ``get`` completes it.  Publishing to oneself queues the buffer
    locally, which is how one rank runs as its own sequential twin.
    """

    def __init__(self, comm: MPI.Comm, sizes: dict[int, int]):
        self.comm, self.rank, self.sizes = comm, comm.Get_rank(), sizes
        self._local: dict[int, deque] = defaultdict(deque)
        self._posted: dict[tuple[int, int], deque] = defaultdict(deque)
        self._sending: list = []
        self._sent = np.zeros(comm.Get_size(), dtype=np.int64)      # messages, per peer: what drain() settles
        self._received = np.zeros(comm.Get_size(), dtype=np.int64)

    def publish(self, slot: int, state: torch.Tensor, dests) -> None:
        buffer = state.detach().to("cpu", torch.float32).contiguous().numpy().copy()
        requests = []
        for dest in sorted(set(dests)):
            if dest == self.rank:
                self._local[slot].append(buffer)
            else:
                requests.append(self.comm.Isend([buffer, MPI.FLOAT], dest=dest, tag=SLOT_TAG + slot))
                self._sent[dest] += 1
        self._sending = [(r, b) for r, b in self._sending if not MPI.Request.Testall(r)]
        self._sending.append((requests, buffer))

    def expect(self, slot: int, source: int) -> None:
        if source == self.rank:
            return
        buffer = np.empty(self.sizes[slot], dtype=np.float32)
        request = self.comm.Irecv([buffer, MPI.FLOAT], source=source, tag=SLOT_TAG + slot)
        self._posted[(slot, source)].append((request, buffer))

    def get(self, slot: int, source: int) -> np.ndarray:
        if source == self.rank:
            return self._local[slot].popleft()
        if not self._posted[(slot, source)]:
            self.expect(slot, source)
        request, buffer = self._posted[(slot, source)].popleft()
        wait(request, source, f"a receive of slot {slot}")
        self._received[source] += 1
        return buffer

    def flush(self) -> None:
        for requests, _ in self._sending:
            wait_all(requests, "a peer", "a send of published slots")
        self._sending = []

    def drain(self) -> None:
        """The run stops early (collective): withdraw the receives no one will
        match, take in what peers published for chapters that will not run,
        so that every send completes and no message is left in flight."""
        for (_, source), queue in self._posted.items():
            for request, _ in queue:
                request.Cancel()
                status = MPI.Status()
                request.Wait(status)  # a cancelled receive completes locally; one that had matched counts
                self._received[source] += not status.Is_cancelled()
            queue.clear()
        expected = np.empty_like(self._sent)
        wait(self.comm.Ialltoall([self._sent, MPI.INT64_T], [expected, MPI.INT64_T]), "the other ranks",
             "the count of messages in flight")
        buffer = np.empty(max(self.sizes.values()), dtype=np.float32)
        for source in np.flatnonzero(expected > self._received):
            for _ in range(int(expected[source] - self._received[source])):
                wait(self.comm.Irecv([buffer, MPI.FLOAT], source=int(source), tag=MPI.ANY_TAG), int(source),
                     "a receive of a slot no one will use")
        self._received[:] = expected
        self.flush()


class Averager:
    """Federated exchange: every rank publishes its version of a slot and gets
    the average over ranks, weighted by shard size (FedAvg).  The sum runs as
    a non-blocking Iallreduce while the rank trains its next layer; float64
    makes one rank's average exactly its own state."""

    def __init__(self, comm: MPI.Comm, weight: float):
        self.comm, self.weight = comm, float(weight)
        self.total = comm.allreduce(self.weight, op=MPI.SUM)
        self._pending: dict[int, deque] = defaultdict(deque)

    def publish(self, slot: int, chapter: int, state: torch.Tensor) -> None:
        buffer = state.detach().to("cpu", torch.float64).numpy() * self.weight
        request = self.comm.Iallreduce(MPI.IN_PLACE, [buffer, MPI.DOUBLE], op=MPI.SUM)
        self._pending[slot].append((request, buffer))

    def expect(self, chapter: int) -> None:
        """Nothing to prepost: the sums are already running."""

    def get(self, slot: int, chapter: int) -> np.ndarray | None:
        if chapter == 0:
            return None
        request, buffer = self._pending[slot].popleft()
        wait(request, "the other ranks", f"the average of slot {slot} (chapter {chapter})")
        return (buffer / self.total).astype(np.float32)

    def flush(self) -> None:
        for queue in self._pending.values():
            wait_all([request for request, _ in queue], "the other ranks", "the last averages")
            queue.clear()

    def drain(self) -> None:
        """The run stops early: every rank started the same sums, so complete them."""
        self.flush()

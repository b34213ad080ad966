"""The only module that touches MPI buffers: point-to-point activation
transfer for the pipeline, and the collectives that gather results to rank 0.

Activations travel as raw float32 buffers (never pickled).  Sends and receives
are double-buffered: a rank computes on one buffer while the next minibatch
arrives in the other and the previous result leaves from a third.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch
from mpi4py import MPI

from .timing import EpochTimer

ACTIVATION_TAG = 11
LAYER_TAG_BASE = 1000


class ActivationSender:
    """Non-blocking sends to one peer, at most ``depth`` in flight."""

    def __init__(self, comm: MPI.Comm, dest: int, timer: EpochTimer, depth: int = 2):
        self.comm, self.dest, self.timer, self.depth = comm, dest, timer, depth
        self._in_flight: deque = deque()

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
            request.Wait()
        self._in_flight.popleft()

    def flush(self) -> None:
        while self._in_flight:
            self._wait_oldest()


class ActivationReceiver:
    """Receives a known sequence of [rows, width] float32 messages from one
    peer into two preallocated buffers, one message ahead of the consumer."""

    def __init__(self, comm: MPI.Comm, source: int, width: int, row_counts, timer: EpochTimer):
        self.comm, self.source, self.timer = comm, source, timer
        row_counts = list(row_counts)
        max_rows = max(row_counts) if row_counts else 0
        self._buffers = [np.empty((max_rows, width), dtype=np.float32) for _ in range(2)]
        self._next_buffer = 0
        self._pending: deque = deque()
        self._row_counts = iter(row_counts)
        self._post_next()

    def _post_next(self) -> None:
        rows = next(self._row_counts, None)
        if rows is None:
            return
        view = self._buffers[self._next_buffer][:rows]
        self._next_buffer ^= 1
        request = self.comm.Irecv([view, MPI.FLOAT], source=self.source, tag=ACTIVATION_TAG)
        self._pending.append((request, view))

    def receive(self) -> torch.Tensor:
        """The next message, as a tensor viewing its buffer.  The view stays
        valid until the *following* receive() call returns, which is when the
        buffer is handed back to MPI for the message after that."""
        request, view = self._pending.popleft()
        with self.timer("recv_wait"):
            request.Wait()
        self._post_next()
        return torch.from_numpy(view)


def gather_layers(comm: MPI.Comm, owned: dict[int, torch.nn.Linear], dims: list[int],
                  owner_of: list[int]) -> list[torch.nn.Linear] | None:
    """Copy every layer's weights to rank 0 over point-to-point buffers.
    Returns the full list of layers (CPU) on rank 0, None elsewhere."""
    rank = comm.Get_rank()
    if rank != 0:
        requests = []
        keep = []
        for index, linear in owned.items():
            for part, tensor in enumerate((linear.weight, linear.bias)):
                array = tensor.detach().to("cpu").contiguous().numpy()
                keep.append(array)
                requests.append(comm.Isend([array, MPI.FLOAT], dest=0, tag=LAYER_TAG_BASE + 2 * index + part))
        MPI.Request.Waitall(requests)
        return None
    layers = []
    for index, owner in enumerate(owner_of):
        if owner == 0:
            source = owned[index]
            linear = torch.nn.Linear(dims[index], dims[index + 1])
            linear.load_state_dict({k: v.detach().cpu() for k, v in source.state_dict().items()})
        else:
            linear = torch.nn.Linear(dims[index], dims[index + 1])
            with torch.no_grad():
                for part, tensor in enumerate((linear.weight, linear.bias)):
                    comm.Recv([tensor.numpy(), MPI.FLOAT], source=owner, tag=LAYER_TAG_BASE + 2 * index + part)
        layers.append(linear)
    return layers


def gather_rows(comm: MPI.Comm, local: np.ndarray) -> np.ndarray | None:
    """Stack every rank's equally shaped float64 array on rank 0: [size, ...]."""
    local = np.ascontiguousarray(local, dtype=np.float64)
    out = np.empty((comm.Get_size(),) + local.shape) if comm.Get_rank() == 0 else None
    comm.Gather([local, MPI.DOUBLE], [out, MPI.DOUBLE] if out is not None else None, root=0)
    return out


def sum_to_root(comm: MPI.Comm, local: np.ndarray) -> np.ndarray | None:
    local = np.ascontiguousarray(local, dtype=np.float64)
    out = np.empty_like(local) if comm.Get_rank() == 0 else None
    comm.Reduce([local, MPI.DOUBLE], [out, MPI.DOUBLE] if out is not None else None, op=MPI.SUM, root=0)
    return out


def gather_events(comm: MPI.Comm, local: np.ndarray) -> np.ndarray | None:
    """Every rank's [n_r, k] float64 rows on rank 0 (n_r may differ between
    ranks) as one [sum n_r, k + 1] array whose first column is the rank."""
    local = np.ascontiguousarray(local, dtype=np.float64)
    width = local.shape[1]
    counts = gather_rows(comm, np.array([local.shape[0]], dtype=np.float64))
    if comm.Get_rank() != 0:
        comm.Gatherv([local, MPI.DOUBLE], None, root=0)
        return None
    counts = counts[:, 0].astype(np.int64)
    rows = np.empty((int(counts.sum()), width))
    comm.Gatherv([local, MPI.DOUBLE], [rows, counts * width, np.concatenate(([0], np.cumsum(counts)[:-1])) * width,
                                        MPI.DOUBLE], root=0)
    return np.column_stack((np.repeat(np.arange(comm.Get_size()), counts), rows))


class GradientAllreduce:
    """Data-parallel gradient sum: one flat, preallocated float32 buffer that
    the parameters' .grad tensors view, summed over ranks in place with one
    buffer-based Allreduce per step (never pickled).  On a GPU the buffer is
    staged through a preallocated host copy, so any MPI works."""

    def __init__(self, comm: MPI.Comm, flat: torch.Tensor, timer: EpochTimer):
        self.comm, self.flat, self.timer = comm, flat, timer
        self._host = flat if flat.device.type == "cpu" else torch.empty(flat.shape, dtype=flat.dtype,
                                                                         pin_memory=torch.cuda.is_available())

    def allreduce(self) -> None:
        if self.comm.Get_size() == 1:
            return
        with self.timer("sync"):  # the wait for every rank's gradients, and a GPU's host staging
            if self._host is not self.flat:
                self._host.copy_(self.flat)
            self.comm.Allreduce(MPI.IN_PLACE, [self._host.numpy(), MPI.FLOAT], op=MPI.SUM)
            if self._host is not self.flat:
                self.flat.copy_(self._host)

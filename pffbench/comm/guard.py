"""MPI plumbing every schedule shares: the guarded wait (no wait on a peer
outlasts --peer-timeout), the guarded barrier, and the collectives that
gather results to rank 0, all on raw buffers (never pickled).  Each
schedule's own sends and receives live beside it in *_communications.py.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch
from mpi4py import MPI

from .timing import EpochTimer

LAYER_TAG_BASE = 1000

# --- the deadlock guard: every wait on a peer gives up after peer_timeout() s ---
_PEER_TIMEOUT = [600.0]
# Poll, yielding the core between polls, for the first _SPIN seconds: a steady-state pipeline wait is
# well under a minibatch's compute, and a sleep would add the kernel's timer slack (>= 50 us) to
# every one of them; sched_yield() hands the core to a peer when ranks oversubscribe the cores.
_SPIN = 5e-3
_MAX_SLEEP = 1e-3      # then sleep between polls, doubling up to this: no core burnt on a long wait


class PeerTimeout(RuntimeError):
    """A peer made no progress for --peer-timeout seconds."""


def set_peer_timeout(seconds: float) -> None:
    _PEER_TIMEOUT[0] = float(seconds)


def peer_timeout() -> float:
    return _PEER_TIMEOUT[0]


def wait(request: MPI.Request, peer, operation: str) -> None:
    """``request.Wait()`` with the deadlock guard (see wait_until)."""
    wait_until(request.Test, peer, operation)


def wait_until(ready, peer, operation: str, timeout: float | None = None) -> None:
    """Poll ``ready()`` (yielding the core for 5 ms, then sleeping, backing
    off to 1 ms) and raise PeerTimeout naming this rank, ``peer`` and
    ``operation`` after ``timeout`` (default peer_timeout()) seconds."""
    if ready():
        return
    start = time.perf_counter()
    timeout = _PEER_TIMEOUT[0] if timeout is None else timeout
    deadline, delay = start + timeout, 0.0
    while not ready():
        now = time.perf_counter()
        if now - start < _SPIN:
            os.sched_yield()
            continue
        if now > deadline:
            who = f"rank {peer}" if isinstance(peer, int) else peer
            raise PeerTimeout(f"rank {MPI.COMM_WORLD.Get_rank()} waited {now - start:.0f} s for {who} to complete "
                              f"{operation}; giving up (--peer-timeout {timeout:g})")
        delay = min(max(2 * delay, 20e-6), _MAX_SLEEP)
        time.sleep(delay)


def barrier(comm: MPI.Comm, after: str, timeout: float | None = None) -> None:
    """Every rank waits here for the others (guarded like any wait, and
    asleep, not spinning, once a wait is long)."""
    wait_until(comm.Ibarrier().Test, "every rank", f"the barrier after {after}", timeout)


def wait_all(requests, peer, operation: str) -> None:
    for request in requests:
        wait(request, peer, operation)


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
        wait_all(requests, 0, "sending its layers to rank 0")
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
                    wait(comm.Irecv([tensor.numpy(), MPI.FLOAT], source=owner, tag=LAYER_TAG_BASE + 2 * index + part),
                         owner, f"gathering layer {index}")
        layers.append(linear)
    return layers


def gather_rows(comm: MPI.Comm, local: np.ndarray) -> np.ndarray | None:
    """Stack every rank's equally shaped float64 array on rank 0: [size, ...]."""
    local = np.ascontiguousarray(local, dtype=np.float64)
    out = np.empty((comm.Get_size(),) + local.shape) if comm.Get_rank() == 0 else None
    wait(comm.Igather([local, MPI.DOUBLE], [out, MPI.DOUBLE] if out is not None else None, root=0),
         "the other ranks", "a gather to rank 0")
    return out


def sum_to_root(comm: MPI.Comm, local: np.ndarray) -> np.ndarray | None:
    local = np.ascontiguousarray(local, dtype=np.float64)
    out = np.empty_like(local) if comm.Get_rank() == 0 else None
    wait(comm.Ireduce([local, MPI.DOUBLE], [out, MPI.DOUBLE] if out is not None else None, op=MPI.SUM, root=0),
         "the other ranks", "a reduction to rank 0")
    return out


def sum_everywhere(comm: MPI.Comm, local: np.ndarray, operation: str = "an allreduce") -> np.ndarray:
    """Element-wise float64 sum over ranks, on every rank (guarded)."""
    out = np.ascontiguousarray(local, dtype=np.float64).copy()
    wait(comm.Iallreduce(MPI.IN_PLACE, [out, MPI.DOUBLE], op=MPI.SUM), "the other ranks", operation)
    return out


def gather_events(comm: MPI.Comm, local: np.ndarray) -> np.ndarray | None:
    """Every rank's [n_r, k] float64 rows on rank 0 (n_r may differ between
    ranks) as one [sum n_r, k + 1] array whose first column is the rank."""
    local = np.ascontiguousarray(local, dtype=np.float64)
    width = local.shape[1]
    counts = gather_rows(comm, np.array([local.shape[0]], dtype=np.float64))
    if comm.Get_rank() != 0:
        wait(comm.Igatherv([local, MPI.DOUBLE], None, root=0), 0, "a gather of trace events")
        return None
    counts = counts[:, 0].astype(np.int64)
    rows = np.empty((int(counts.sum()), width))
    displacements = np.concatenate(([0], np.cumsum(counts)[:-1])) * width
    wait(comm.Igatherv([local, MPI.DOUBLE], [rows, counts * width, displacements, MPI.DOUBLE], root=0),
         "the other ranks", "a gather of trace events")
    return np.column_stack((np.repeat(np.arange(comm.Get_size()), counts), rows))


class GradientAllreduce:
    """Data-parallel gradient sum: one flat, preallocated float32 buffer that
    the parameters' .grad tensors view, summed over ranks in place with one
    buffer-based Allreduce per step (never pickled), guarded like every wait
    on a peer.  On a GPU the buffer is staged through a preallocated host
    copy, so any MPI works."""

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
            wait(self.comm.Iallreduce(MPI.IN_PLACE, [self._host.numpy(), MPI.FLOAT], op=MPI.SUM),
                 "the other ranks", "the gradient allreduce")
            if self._host is not self.flat:
                self.flat.copy_(self._host)

"""A torch.distributed process group made from the MPI world that launched
the job, for the variants trained by torch's own parallel libraries (ddp,
gpipe, 1f1b).

No torchrun: rank and size come from mpi4py; rank 0 opens the rendezvous
store (a ``torch.distributed.TCPStore`` on a port the kernel picks, so no
port can be taken between choosing and binding it) on its own address and
broadcasts address and port over MPI; every rank joins.  So the same
``mpiexec``/``srun`` command lines and Slurm scripts run these variants as
they run the others.  Backend: ``gloo`` on the CPU, ``nccl`` with
``--device cuda``.  Every collective and point-to-point operation of the
group gives up after ``--peer-timeout`` seconds (the ``timeout`` of
``init_process_group``), so a hung peer ends the job like any other wait on
a peer (pffbench/comm/guard.py).
"""
from __future__ import annotations

import contextlib
import datetime
import socket
import sys

import torch
import torch.distributed as dist

from ...comm import guard


class GroupError(RuntimeError):
    """A torch.distributed operation failed: a peer died, hung past
    --peer-timeout, or could not be reached."""


def _own_address(hostname: str) -> str:
    """An address of this node the other ranks can reach: the hostname's
    (loopback if the name does not resolve, which only one node can use)."""
    try:
        return socket.gethostbyname(hostname)
    except OSError:
        return "127.0.0.1"


def start(comm, device: torch.device, timeout_s: float) -> dist.ProcessGroup:
    """Initialise torch.distributed's default group over ``comm``'s ranks
    (collective over ``comm``); returns it.  ``timeout_s`` bounds every
    operation of the group.  Raises GroupError if the rendezvous fails."""
    rank, size = comm.Get_rank(), comm.Get_size()
    timeout = datetime.timedelta(seconds=min(timeout_s, 10 ** 7))
    store, problem = None, ""
    if rank == 0:
        host = _own_address(socket.gethostname())
        try:
            store = dist.TCPStore(host, 0, size, is_master=True, timeout=timeout, wait_for_workers=False)
            address = (host, store.port)
        except (RuntimeError, OSError) as error:
            address, problem = None, f"cannot open the rendezvous store on {host}: {error}"
    else:
        address = None
    address, problem = comm.bcast((address, problem), root=0)
    if problem:
        raise GroupError(problem)
    hook = sys.excepthook  # init_process_group wraps it in one that buffers stderr until the hook returns,
    try:                   # and ours aborts the job before returning: the traceback would be lost
        if store is None:
            store = dist.TCPStore(address[0], address[1], size, is_master=False, timeout=timeout)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout,
                                **({"device_id": device} if device.type == "cuda" else {}))
    except (RuntimeError, OSError) as error:
        raise GroupError(f"rank {rank} could not join the torch.distributed group at "
                         f"{address[0]}:{address[1]}: {error}") from error
    finally:
        sys.excepthook = hook
    guard.barrier(comm, "joining the torch.distributed group")
    return dist.group.WORLD


def stop() -> None:
    """Destroy the default group (at the end of a run, and when one fails)."""
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


@contextlib.contextmanager
def peer_failures(rank: int, operation: str):
    """Turn torch.distributed's errors (a peer gone, a timeout) into one
    GroupError line naming this rank and ``operation``."""
    try:
        yield
    except (RuntimeError, OSError) as error:
        if isinstance(error, GroupError) or not _is_distributed_error(error):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise GroupError(f"rank {rank}: {operation} failed: {first} (a peer died, or hung past --peer-timeout "
                         f"{guard.peer_timeout():g} s)") from error


def _is_distributed_error(error: BaseException) -> bool:
    kinds = tuple(k for k in (getattr(dist, "DistError", None), getattr(dist, "DistBackendError", None),
                              getattr(dist, "DistNetworkError", None)) if k is not None)
    text = str(error)
    return isinstance(error, kinds) or "gloo" in text.lower() or "Connection closed" in text \
        or "Timed out" in text or "timeout" in text.lower() or "nccl" in text.lower()

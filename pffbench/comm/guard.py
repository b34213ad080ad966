"""The deadlock guard every wait on a peer goes through: no wait outlasts
--peer-timeout, and a long wait sleeps instead of burning a core.  The
collectives (pffbench/comm/collectives.py) and every schedule's own sends and
receives (schedules/*/communications.py) wait through it.
"""
from __future__ import annotations

import os
import time

from mpi4py import MPI

# --- the deadlock guard: every wait on a peer gives up after peer_timeout() s ---
_PEER_TIMEOUT = [600.0]
_HOSTS: list[str] = []  # every rank's host (processor name), set at start: a timeout names where the peer runs
# Poll, yielding the core between polls, for the first _SPIN seconds: a steady-state pipeline wait is
# well under a minibatch's compute, and a sleep would add the kernel's timer slack (>= 50 us) to
# every one of them; sched_yield() hands the core to a peer when ranks oversubscribe the cores.
_SPIN = 5e-3
_MAX_SLEEP = 1e-3      # then sleep between polls, doubling up to this: no core burnt on a long wait


class PeerTimeout(RuntimeError):
    """A peer made no progress for --peer-timeout seconds."""


def set_hosts(hostnames: list[str]) -> None:
    """Every rank's host, by rank (``World.hostnames``), for the messages naming a rank."""
    _HOSTS[:] = list(hostnames)


def rank_on_host(rank: int) -> str:
    """'rank R on HOST' (plain 'rank R' before set_hosts): across nodes, where to look for the rank."""
    return f"rank {rank} on {_HOSTS[rank]}" if 0 <= rank < len(_HOSTS) else f"rank {rank}"


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
            who = rank_on_host(peer) if isinstance(peer, int) else peer
            raise PeerTimeout(f"{rank_on_host(MPI.COMM_WORLD.Get_rank())} waited {now - start:.0f} s for {who} to complete "
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

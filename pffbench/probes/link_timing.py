"""Timing one pipeline link as the pipeline uses it (``python -m pffbench.links``).

The link is the pipeline's own (``communications.Links``): a
shared-memory ring between ranks on one node, buffer-based Isend/Irecv
otherwise, with the same slots, preposted receives and ``AHEAD`` messages of
flow control.  The sender writes each message into the slot the link hands it
(as a layer computes its output there) and the receiver reads every byte of
it (as the next layer does), so both link kinds move the bytes the pipeline
moves.  A message is the pipeline's: ``rows`` x (``width`` + 1) float32, the
activity and its row norms; the pipeline's rows are 2 x the minibatch
(positives and negatives).

Two patterns, after the fashion of the OSU micro-benchmarks:

- latency: ping-pong of one message each way (a second link of the same kind
  carries the pong), one-way latency = round trip / 2, each repetition timed;
- bandwidth: ``window`` messages streamed through the link, then a one-row
  acknowledgement back; bandwidth = window x bytes / elapsed, each window
  timed.

Run on the two ranks of a 2-rank communicator (rank 0 sends).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from ..core.partition import balanced_partition, layer_costs
from ..instrument.timer import EpochTimer
from ..schedules.pipeline.communications import AHEAD, Links


@dataclass
class LinkSamples:
    """Raw timings of one message size through one link kind."""
    kind: str              # "shared" (ring) or "messages"
    rows: int
    width: int
    latency: np.ndarray    # [repetitions] one-way seconds (round trip / 2)
    window: int
    window_seconds: np.ndarray  # [repetitions] seconds per window of ``window`` messages

    @property
    def nbytes(self) -> int:
        return message_bytes(self.rows, self.width)


def message_bytes(rows: int, width: int) -> int:
    """Bytes of one pipeline message: rows x width activities plus rows norms, float32."""
    return rows * (width + 1) * 4


def pipeline_messages(dims: list[int], batch_size: int, ranks: int) -> list[tuple[int, int]]:
    """(rows, width) of the message on each of the pipeline's ``ranks`` - 1 links for a net of
    widths ``dims`` (input first) split as the pipeline splits it (balanced_partition), full minibatches."""
    blocks = balanced_partition(layer_costs(dims), ranks)
    return [(2 * batch_size, dims[block.stop]) for block in blocks[:-1]]


def rows_for(nbytes: int) -> tuple[int, int]:
    """(rows, width) of a message of about ``nbytes`` (>= 8): one row per 4 KiB, at least one."""
    floats = max(2, nbytes // 4)
    rows = max(1, floats // 1024)
    return rows, max(1, floats // rows - 1)


def window_for(nbytes: int, cap: int = 64) -> int:
    """Messages per bandwidth window: OSU's 64, fewer for large messages (about 16 MiB a window, at least 2 x
    the link's flow-control depth), so a window of 4 MiB messages takes a fraction of a second, not seconds."""
    return int(min(cap, max(2 * (AHEAD + 1), (16 << 20) // max(1, nbytes))))


class _Pair:
    """Two links of one kind between ranks 0 and 1: ``ping`` (0 -> 1) and ``pong`` (1 -> 0)."""

    def __init__(self, comm: MPI.Comm, shared: bool, rows: int, width: int, pings: int, pongs: list[int]):
        self.timer = EpochTimer(1)  # the links book their waits; nothing reads it here
        self.timer.start_epoch(0)
        self.reversed = comm.Split(0, key=comm.Get_size() - 1 - comm.Get_rank())
        self.ping = Links(comm, self.timer, width, width, [rows] * pings, shared=shared)
        self.pong = Links(self.reversed, self.timer, width, width, pongs, shared=shared)
        self.kind = self.ping.kind if comm.Get_rank() == 0 else self.pong.kind  # rank 0's view of its sender

    def close(self) -> None:
        self.ping.close()
        self.pong.close()
        self.reversed.Free()


def _send(link, rows: int, value: float) -> None:
    out, norms = link.sender.slot(rows)
    out.fill_(value)  # the sender's layer writes its output into the slot
    norms.fill_(1.0)
    link.sender.send(out, norms)


def _receive(link) -> float:
    activity, norms = link.receiver.receive()
    return float(activity.sum()) + float(norms.sum())  # the receiver's layer reads every byte


def time_link(comm: MPI.Comm, shared: bool, rows: int, width: int, warmup: int, repetitions: int,
              window: int | None = None) -> LinkSamples | None:
    """Latency and bandwidth samples of one message size; rank 0 gets them,
    rank 1 None.  ``shared`` False forces Isend/Irecv (as --transport p2p);
    True uses the ring if the two ranks share a node.  Collective on ``comm``
    (2 ranks)."""
    rank = comm.Get_rank()
    window = window or window_for(message_bytes(rows, width))
    count = warmup + repetitions
    pair = _Pair(comm, shared, rows, width, pings=count * (1 + window), pongs=[rows] * count + [1] * count)
    latency, streams = np.empty(count), np.empty(count)
    try:
        for i in range(count):  # ping-pong
            start = MPI.Wtime()
            if rank == 0:
                _send(pair.ping, rows, i)
                _receive(pair.pong)
            else:
                _receive(pair.ping)
                _send(pair.pong, rows, i)
            latency[i] = (MPI.Wtime() - start) / 2
        for i in range(count):  # streaming windows
            start = MPI.Wtime()
            if rank == 0:
                for _ in range(window):
                    _send(pair.ping, rows, i)
                _receive(pair.pong)
            else:
                for _ in range(window):
                    _receive(pair.ping)
                _send(pair.pong, 1, i)
            streams[i] = MPI.Wtime() - start
        kind = pair.kind
    finally:
        pair.close()
    if rank != 0:
        return None
    return LinkSamples(kind, rows, width, latency[warmup:], window, streams[warmup:])


def summary(samples: LinkSamples) -> dict:
    """The table's numbers: size [B], latency min/median/max [us], median bandwidth [MB/s, 1e6 bytes]."""
    lat = samples.latency * 1e6
    bandwidth = samples.window * samples.nbytes / samples.window_seconds / 1e6
    return {"size": samples.nbytes, "lat_min": float(lat.min()), "lat_med": float(np.median(lat)),
            "lat_max": float(lat.max()), "bw_med": float(np.median(bandwidth))}

"""`mpiexec -n 2 python -m pffbench.probes.linkprobe [--gloo]`: measure the
link between two ranks (put them on two nodes to measure the network) with a
ping-pong over message sizes 8 B .. 8 MiB (half the round trip's median of 50
per size, after 5 untimed): alpha is an 8-byte message's time, beta the
largest message's size over its time less alpha (Hockney's alpha + n / beta).
By default MPI's buffer-based Send/Recv (what the FF schedules use); with
``--gloo``, torch.distributed's send/recv over a gloo process group made from
the MPI world (what gpipe and 1f1b use), and then gloo's 2-rank allreduce of
float32 tensors (what ddp uses), fitted as an effective link: its 2-rank ring
cost ``2 alpha + n / beta`` (links.allreduce_time) through the 8-byte and the
largest time.  gloo's allreduce reduces and copies on its own thread, so it
costs several times what its send/recv figures predict.  Last, the
overhead each message of torch.distributed.pipelining costs its sender and
receiver (LogP's o): a GPipe step of stages that compute almost nothing
(16-wide, batch 64) at M = 4 and 16 microbatches, on 2 stages and on 1 (each
rank alone); per microbatch a 2-stage step adds 2 (L + o), a 1-stage step
2 L, where L is the library's own work per operation.  Prints the
--alpha/--beta to pass to `python -m pffbench.model predict`."""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from ..launch.command import command


def _ping_pong(comm, send, recv):
    """A round trip between ranks 0 and 1: rank 0 sends then receives, rank 1 the other way round;
    ``send(peer)``/``recv(peer)`` move the probe's buffer."""
    peer = 1 - comm.rank

    def round_trip():
        if comm.rank == 0:
            send(peer)
            recv(peer)
        else:
            recv(peer)
            send(peer)
    return round_trip


def _mpi_pair(comm, n: int):
    buffer = np.zeros(n, dtype=np.uint8)
    return _ping_pong(comm, lambda peer: comm.Send(buffer, peer), lambda peer: comm.Recv(buffer, peer))


def _gloo_pair(comm, n: int):
    import torch
    import torch.distributed as dist
    buffer = torch.zeros(n, dtype=torch.uint8)
    return _ping_pong(comm, lambda peer: dist.send(buffer, peer), lambda peer: dist.recv(buffer, peer))


def _gloo_allreduce(comm, n: int):
    import torch
    import torch.distributed as dist
    buffer = torch.ones(max(1, n // 4))
    return lambda: dist.all_reduce(buffer)


def _pipelining_overhead(comm) -> tuple[float, float]:
    """(L, o): the library's work per microbatch operation on 1 stage, and each message's overhead."""
    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe
    alone = [dist.new_group([r]) for r in range(comm.size)][comm.rank]  # every rank makes every group

    def step_seconds(group, index: int, stages: int, microbatches: int) -> float:
        stage = PipelineStage(torch.nn.Linear(16, 16, bias=False), index, stages, torch.device("cpu"), group=group)
        schedule = ScheduleGPipe(stage, microbatches, loss_fn=lambda out, target: out.sum(), scale_grads=False)
        x, y, times = torch.rand(64, 16), torch.zeros(64), []
        for i in range(60):
            comm.Barrier()
            start = time.perf_counter()
            if stages == 1:
                schedule.step(x, target=y)
            elif index == 0:
                schedule.step(x)
            else:
                schedule.step(target=y)
            if i >= 10:
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    two = [step_seconds(None, comm.rank, comm.size, m) for m in (4, 16)]
    one = [step_seconds(alone, 0, 1, m) for m in (4, 16)]
    library = (one[1] - one[0]) / 12 / 2
    return library, max(0.0, (two[1] - two[0]) / 12 / 2 - library)


def _sweep(comm, make, sizes: list[int], halve: bool) -> list[float]:
    """Median seconds per operation (half a round trip if ``halve``) of 50 after 5 untimed, per size."""
    out = []
    for n in sizes:
        operation = make(comm, n)
        times = []
        for i in range(55):
            comm.Barrier()
            start = time.perf_counter()
            operation()
            if i >= 5:
                times.append((time.perf_counter() - start) / (2 if halve else 1))
        out.append(statistics.median(times))
    return out


def _report(title: str, sizes: list[int], seconds: list[float], allreduce: bool) -> None:
    if allreduce:  # 2 alpha + n / beta
        alpha = seconds[0] / 2
        beta = sizes[-1] / max(seconds[-1] - 2 * alpha, 1e-12)
    else:
        alpha = seconds[0]  # an 8-byte message: latency only
        beta = sizes[-1] / max(seconds[-1] - alpha, 1e-12)  # the largest: bandwidth-bound
    print(title)
    for n, t in zip(sizes, seconds):
        print(f"{n:>9} B  {t * 1e6:10.2f} us")
    print(f"alpha {alpha * 1e6:.2f} us, beta {beta / 1e9:.2f} GB/s  (--alpha {alpha:.3g} --beta {beta:.3g})")


@command("pffbench.probes.linkprobe")
def main(argv=None) -> int:
    from mpi4py import MPI
    argv = sys.argv[1:] if argv is None else argv
    comm = MPI.COMM_WORLD
    if comm.size != 2 or [a for a in argv if a != "--gloo"]:
        if comm.rank == 0:
            print("pffbench.probes.linkprobe: error: the link probe needs exactly 2 ranks (mpiexec -n 2) and takes only --gloo",
                  file=sys.stderr)
        return 2
    gloo = "--gloo" in argv
    if gloo:
        import torch
        from ..schedules.backprop import process_group
        process_group.start(comm, torch.device("cpu"), 60.0)
    sizes = [8 * 4 ** k for k in range(11)]  # 8 B .. 8 MiB
    pairs = _sweep(comm, _gloo_pair if gloo else _mpi_pair, sizes, halve=True)
    reduces = _sweep(comm, _gloo_allreduce, sizes, halve=False) if gloo else None
    overhead = _pipelining_overhead(comm) if gloo else None
    if gloo:
        process_group.stop()
    if comm.rank == 0:
        _report(f"{'gloo send/recv' if gloo else 'MPI Send/Recv'}; half round trip, median of 50", sizes, pairs, False)
        if reduces:
            _report("gloo allreduce (float32, 2 ranks), median of 50; fitted as a 2-rank ring, 2 alpha + n / beta",
                    sizes, reduces, True)
            library, o = overhead
            print(f"torch.distributed.pipelining over gloo: library {library * 1e6:.0f} us per microbatch operation "
                  f"(1 stage), overhead {o * 1e6:.0f} us per message on each end (LogP o)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time accounts and thread defaults: no MPI launch needed."""
import time

import numpy as np
import pytest

from pffbench.instrument.timer import CATEGORIES, COLUMNS, EpochTimer, GapTimer


def test_epoch_columns_add_up_to_wall_time():
    timer = EpochTimer(epochs=2)
    for epoch in range(2):
        timer.start_epoch(epoch)
        with timer("compute"):
            time.sleep(0.02)
        with timer("recv_wait"):
            time.sleep(0.01)
        time.sleep(0.01)  # unaccounted: idle
        timer.end_epoch()
    table = timer.table()
    assert table.shape == (2, len(COLUMNS))
    col = dict(zip(COLUMNS, table.T))
    assert (col["compute"] >= 0.02).all() and (col["recv_wait"] >= 0.01).all()
    assert (col["idle"] >= 0.009).all()
    np.testing.assert_allclose(table[:, :len(CATEGORIES) + 1].sum(axis=1), col["wall"], rtol=1e-12)
    assert timer.training_seconds(1) == pytest.approx(col["wall"][1])


class FakeWorld:
    from pffbench.core.world import World
    default_threads = World.default_threads

    def __init__(self, node_masks, quota=None, quota_sharing=1):
        self.node_masks, self.quota, self.quota_sharing = node_masks, quota, quota_sharing


def test_a_gpu_block_ends_when_its_queued_work_has_run(monkeypatch):
    # CUDA runs asynchronously: without a synchronize at the end of each block, a kernel's time lands in
    # whichever later block first waits for it (e.g. the copy of a message, booked as sending)
    import torch
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(str(device)))
    timer, clock = EpochTimer(1, device=torch.device("cuda", 1)), GapTimer(1, device=torch.device("cuda", 1))
    with timer("compute"):
        pass
    with clock("compute", 0):
        pass
    assert calls == ["cuda:1", "cuda:1"]
    with EpochTimer(1, device=torch.device("cpu"))("compute"), GapTimer(1, device=torch.device("cpu"))("data", 0):
        pass
    assert len(calls) == 2  # nothing to wait for on the CPU


def cores(first, count):
    return list(range(first, first + count))


@pytest.mark.parametrize("mine,node_masks,expected", [
    (cores(0, 8), [cores(0, 8)] * 4, 2),     # unbound on 8 cores: share them
    (cores(0, 8), [cores(0, 8)] * 3, 2),
    (cores(0, 2), [cores(0, 2)] * 4, 1),     # oversubscribed: never below one thread
    (cores(4, 4), [cores(4 * r, 4) for r in range(4)], 4),  # bound to 4 cores of its own: use them
    (cores(0, 2), [cores(0, 2)] * 2, 1),     # a job's 2 cores on a shared 8-core node: split them, not 2 each
    (cores(8, 8), [cores(0, 8)] * 2 + [cores(8, 8)] * 2, 4),  # Open MPI binding 2 ranks to each socket
])
def test_default_threads(monkeypatch, mine, node_masks, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(mine))
    assert FakeWorld(node_masks).default_threads() == expected


@pytest.mark.parametrize("mine,node_masks,cpus,sharing,expected", [
    (cores(0, 2), [cores(0, 2)], 1.0, 1, 1),        # the case: 1 rank, 2 cores, a 1-CPU quota (was 2)
    (cores(0, 2), [cores(0, 2)], 1.5, 1, 1),        # floor(1.5): a second thread would be throttled half the time
    (cores(0, 8), [cores(0, 8)] * 2, 4.0, 2, 2),    # 4 CPUs of time shared by 2 ranks (cores alone: 4 each)
    (cores(0, 8), [cores(0, 8)] * 2, 1.0, 2, 1),    # 1 CPU for 2 ranks: never below one thread
    (cores(0, 8), [cores(0, 8)], 0.5, 1, 1),        # half a CPU: at least one
    (cores(0, 8), [cores(0, 8)] * 2, 16.0, 2, 4),   # a quota above the cores changes nothing
])
def test_default_threads_under_a_cpu_quota(monkeypatch, mine, node_masks, cpus, sharing, expected):
    from pffbench.core.cpu_quota import Quota
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(mine))
    assert FakeWorld(node_masks, Quota(cpus, "/sys/fs/cgroup/job"), sharing).default_threads() == expected


def test_progress_eta_counts_only_this_processs_epochs(capsys, monkeypatch):
    from pffbench.instrument import progress
    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    reporter = progress.Progress(epochs=10, num_train=600, eval_share=0.0, evals=0)
    reporter.start()
    reporter.resume(6)
    now[0] += 2.0
    reporter(6, np.array([0.5]), float("nan"), 2.0)  # resumed after 6 epochs: the 7th took 2 s
    line = capsys.readouterr().out
    assert "epoch   7/10" in line and "300 samples/s" in line and "ETA    6.0s" in line, line
    assert "elapsed     2.0s" in line, line  # the wall time since training began, not a sum of epochs


class OneRankComm:
    def allgather(self, value):
        return [value]


@pytest.mark.parametrize("gpus,local_size,gpu_per_rank,expected", [
    (0, 1, False, "--device cuda: torch sees no CUDA device on node0"),
    (1, 2, False, None),  # the MPI schedules: ranks may share a GPU
    (1, 2, True, "--device cuda: 2 ranks on node0 share 1 GPU: this variant's NCCL group needs a GPU per rank"),
    (2, 2, True, None),
])
def test_a_torch_group_on_gpus_needs_a_gpu_per_rank_and_says_so_in_one_line(monkeypatch, gpus, local_size,
                                                                            gpu_per_rank, expected):
    # NCCL refuses two ranks on one device at its set-up ("Duplicate GPU detected"): ddp, gpipe and 1f1b
    # with more ranks than GPUs on a node are refused before anything starts
    import torch
    from pffbench.core.world import World
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    world = FakeWorld([])
    world.comm, world.hostname, world.local_size = OneRankComm(), "node0", local_size
    message = World.missing_gpu(world, "cuda", gpu_per_rank=gpu_per_rank)
    assert message == expected or (expected and message.startswith(expected))
    assert World.missing_gpu(world, "cpu", gpu_per_rank=True) is None

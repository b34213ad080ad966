"""Backprop baselines and the trace under mpiexec -n 2 / -n 4 (pytest --with-mpi)."""
import numpy as np
import pytest
import torch

from pffbench.comm.collectives import gather_events
from pffbench.core.config import Config
from pffbench.instrument.timer import CATEGORIES, EpochTimer
from pffbench.schedules.backprop import data_parallel as backprop
from pffbench.schedules.backprop.mlp import MLP

MPI = pytest.importorskip("mpi4py.MPI")
pytestmark = pytest.mark.mpi(min_size=2)

# 2000 samples / batch 64 = 32 minibatches per epoch (the last one short), 2 epochs
CONFIG = Config(variant="dp-backprop", dataset="synthetic", layers=(48, 32), epochs=2, batch_size=64, lr=1e-3,
                threads=1, eval_every=1, trace=True)


def test_data_parallel_backprop_gives_the_single_process_weights(synthetic):
    """p ranks, each a shard of every minibatch, gradients summed by one
    Allreduce per step: the same weights as one process, to float32 round-off
    (the shards' partial sums add in another order).  Tolerance 1e-5 absolute
    after 64 Adam steps, on weights of order 0.1."""
    from pffbench.core.world import World
    comm = MPI.COMM_WORLD
    data, shape = synthetic
    parallel = backprop.train(CONFIG, World(comm), shape, data)
    if comm.rank != 0:
        assert parallel is None
        return
    single = backprop.train(Config(**{**CONFIG.__dict__, "variant": "backprop"}), World(MPI.COMM_SELF), shape, data)
    assert len(parallel.linears) == 3 and parallel.dims == [100, 48, 32, 10]
    for p_layer, s_layer in zip(parallel.linears, single.linears):
        assert (p_layer.weight - s_layer.weight).abs().max().item() <= 1e-5
    np.testing.assert_allclose(parallel.loss, single.loss, rtol=1e-4)
    assert single.test_accuracy[-1] > 0.5 and abs(parallel.test_accuracy[-1] - single.test_accuracy[-1]) <= 0.01
    p = comm.size
    sync = parallel.timing[:, :, 4]  # COLUMNS: compute, data, send_wait, recv_wait, sync, ...
    assert (sync > 0).all() and (single.timing[:, :, 4] == 0).all()  # one process skips the Allreduce
    events = parallel.arrays["trace/events"]
    assert set(np.unique(events[:, 0])) == set(range(p))
    # per rank: one Allreduce per step, the reduction at each epoch's end and the barrier before each evaluation
    assert (events[:, 1] == CATEGORIES.index("sync")).sum() == p * (2 * 32 + 2 + 2)
    assert parallel.attrs["trace_categories"] == list(CATEGORIES)


def test_gradient_buffer_is_one_flat_view():
    model = MLP([6, 5], 3, seed=0)
    flat = backprop.flat_gradients(model, torch.device("cpu"))
    torch.nn.functional.cross_entropy(model(torch.rand(4, 6)), torch.tensor([0, 1, 2, 0])).backward()
    assert all(p.grad.data_ptr() >= flat.data_ptr() for p in model.parameters())
    assert flat[:-1].abs().sum() > 0 and flat[-1] == 0
    assert flat.numel() == sum(p.numel() for p in model.parameters()) + 1


def test_gather_events_stacks_ragged_rows():
    comm = MPI.COMM_WORLD
    local = np.arange(comm.rank * 3, dtype=float).reshape(-1, 3)  # rank r has r rows
    stacked = gather_events(comm, local)
    if comm.rank != 0:
        assert stacked is None
        return
    assert stacked.shape == (sum(range(comm.size)), 4)
    np.testing.assert_array_equal(stacked[:, 0], np.repeat(np.arange(comm.size), np.arange(comm.size)))


def test_timer_trace_is_opt_in():
    timer = EpochTimer(1)
    timer.start_epoch(0)
    with timer("compute"):
        pass
    assert timer.events().shape == (0, 3)
    timer = EpochTimer(1, trace=True)
    timer.start_epoch(0)
    with timer("compute"):
        pass
    with timer("send_wait"):
        pass
    events = timer.events()
    assert events.shape == (2, 3) and list(events[:, 0]) == [0, 2] and (events[:, 2] >= events[:, 1]).all()

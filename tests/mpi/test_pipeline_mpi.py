"""The pipeline under mpiexec -n 2 / -n 4 (pytest --with-mpi)."""
import dataclasses

import numpy as np
import pytest
import torch

from pffbench import results
from pffbench.core.config import Config
from pffbench.schedules.pipeline import schedule as pipeline

MPI = pytest.importorskip("mpi4py.MPI")
pytestmark = pytest.mark.mpi(min_size=2)

# 2000 samples / batch 16 = 125 minibatches per epoch, 3 epochs = 375 steps.
CONFIG = Config(dataset="synthetic", layers=(64, 64, 64, 64), epochs=3, batch_size=16, lr=3e-3, threads=1)


@pytest.mark.parametrize("transport", ["auto", "p2p"])
def test_pipeline_gives_the_sequential_weights(transport, synthetic):
    """p ranks and 1 rank agree to float32 round-off after 375 steps, with
    activations in the shared ring (auto) or in MPI messages (p2p).

    Tolerance: 1e-6 absolute on weights of order 0.1.  Every rank runs the
    same float32 kernels on the same inputs with one thread, so in practice
    the difference is exactly zero; the tolerance only admits BLAS builds
    whose kernel choice depends on the process.  Equal threads per rank are
    the condition (jobs/test_cli.py::test_2_ranks_x_1_thread_give_the_weights_of_1_rank_x_1_thread)."""
    from pffbench.core.world import World
    comm = MPI.COMM_WORLD
    data, shape = synthetic
    parallel = pipeline.train(dataclasses.replace(CONFIG, transport=transport), World(comm), shape, data)
    if comm.rank != 0:
        assert parallel is None
        return
    sequential = pipeline.train(CONFIG, World(MPI.COMM_SELF), shape, data)
    assert parallel.attrs["transport"] == ("shared" if transport == "auto" else "messages")  # all ranks on one node
    assert sequential.attrs["transport"] == "none"
    assert [(b.start, b.stop) for b in parallel.blocks][-1][1] == 4
    for p_layer, s_layer in zip(parallel.linears, sequential.linears, strict=True):
        assert (p_layer.weight - s_layer.weight).abs().max().item() <= 1e-6
        assert (p_layer.bias - s_layer.bias).abs().max().item() <= 1e-6
    np.testing.assert_allclose(parallel.loss, sequential.loss, rtol=1e-5)
    assert parallel.test_accuracy[-1] == sequential.test_accuracy[-1]
    assert parallel.test_accuracy[-1] > 0.5  # 10 classes: chance is 0.1


def test_run_appends_timings_to_hdf5(tmp_path_factory):
    from pffbench.run import run
    from pffbench.core.world import World
    comm = MPI.COMM_WORLD
    out = comm.bcast(str(tmp_path_factory.mktemp("h5") / "runs.h5") if comm.rank == 0 else None)
    config = Config(dataset="synthetic", layers=(32, 32, 32, 32), epochs=2, batch_size=50, out=out,
                    name="probe", eval_every=1)
    run(config, World(comm))
    run(config, World(comm))  # a second run must not disturb the first
    if comm.rank != 0:
        return
    first, second = results.read_runs(out)
    assert (first.name, second.name) == ("probe", "probe-2")
    p = comm.size
    for name in ("compute", "send_wait", "recv_wait", "idle", "wall"):
        assert first.arrays[f"timing/{name}"].shape == (p, 2)
    wall = first.arrays["timing/wall"]
    parts = sum(first.arrays[f"timing/{c}"] for c in ("compute", "data", "send_wait", "recv_wait", "sync", "eval",
                                                       "idle"))
    np.testing.assert_allclose(parts, wall, rtol=1e-9)
    assert (first.arrays["timing/compute"] > 0).all()
    assert (first.arrays["timing/recv_wait"][0] == 0).all()  # rank 0 receives nothing
    assert (first.arrays["timing/send_wait"][-1] == 0).all()  # the last rank sends nothing
    assert first.arrays["loss"].shape == (4, 2)
    assert np.isfinite(first.arrays["test_accuracy"]).all()
    attrs = first.attrs
    assert attrs["world_size"] == p and len(attrs["hostnames"]) == p
    assert attrs["config"]["layers"] == [32, 32, 32, 32]
    for key in ("mpi_library", "torch", "git_sha", "start_utc", "end_utc", "seed"):
        assert key in attrs, key


@pytest.mark.parametrize("objective", ["local-softmax", "scff"])
@pytest.mark.parametrize("transport", ["auto", "p2p"])
def test_every_rule_in_the_pipeline_gives_the_sequential_weights(objective, transport, synthetic):
    """--objective local-softmax (labels travel beside the activity, a head per
    layer) and scff (2d-wide first layer, its own negatives): p ranks, one
    thread each, give the 1-rank weights and heads bit for bit."""
    from pffbench.core.world import World
    comm = MPI.COMM_WORLD
    data, shape = synthetic
    config = dataclasses.replace(CONFIG, objective=objective, epochs=2, transport=transport, eval_every=1)
    parallel = pipeline.train(config, World(comm), shape, data)
    if comm.rank != 0:
        assert parallel is None
        return
    sequential = pipeline.train(config, World(MPI.COMM_SELF), shape, data)
    assert len(parallel.blocks) == comm.size and parallel.dims == sequential.dims
    assert len(parallel.heads) == (4 if objective == "local-softmax" else 0)
    for p_layer, s_layer in zip(parallel.linears + parallel.heads, sequential.linears + sequential.heads, strict=True):
        assert torch.equal(p_layer.weight, s_layer.weight) and torch.equal(p_layer.bias, s_layer.bias)
    np.testing.assert_array_equal(parallel.loss, sequential.loss)
    np.testing.assert_array_equal(parallel.test_accuracy, sequential.test_accuracy)
    assert parallel.test_accuracy[-1] > 0.5  # 10 classes: chance is 0.1


@pytest.mark.parametrize("objective", ["ff", "local-softmax"])
def test_step_evaluation_leaves_the_weights_and_stops_at_the_target(objective, tmp_path_factory, synthetic):
    """--eval-every-steps K: an evaluation after every K-th step on every rank
    (25 and 50 of 125 per epoch...), recorded with its step and training
    seconds; the weights are those of the run without it (evaluation is
    outside training).  --stop-at-target ends the run at the first step
    evaluation at or over the target: its time to target is that row's."""
    from pffbench.core.world import World
    from pffbench.run import run
    comm = MPI.COMM_WORLD
    data, shape = synthetic
    config = dataclasses.replace(CONFIG, objective=objective, epochs=2)
    stepped = dataclasses.replace(config, eval_every_steps=25, target_accuracy=0.5)
    plain, evaluated = (pipeline.train(c, World(comm), shape, data) for c in (config, stepped))
    if comm.rank == 0:
        for a, b in zip(plain.linears + plain.heads, evaluated.linears + evaluated.heads, strict=True):
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
        table = evaluated.arrays["evaluations"]
        assert table[:, 0].tolist() == [25.0 * k for k in range(1, 11)]  # 250 steps: the last one is the epoch end's
        assert table[:, 1].tolist() == [0.0] * 5 + [1.0] * 5
        assert (np.diff(table[:, 2]) > 0).all() and table[-1, 3] == evaluated.test_accuracy[-1]
        assert evaluated.test_accuracy[-1] == plain.test_accuracy[-1]

    out = comm.bcast(str(tmp_path_factory.mktemp("h5") / "runs.h5") if comm.rank == 0 else None)
    stopping = dataclasses.replace(stepped, out=out, stop_at_target=True, quiet=True)
    run(stopping, World(comm))
    if comm.rank != 0:
        return
    record = results.read_runs(out)[-1]
    table = record.arrays["evaluations"]
    first = int(np.argmax(table[:, 3] >= 0.5))
    assert table[first, 3] >= 0.5 and len(table) == first + 1 and table[first, 0] < 250  # it stopped there
    assert (table[:first, 3] < 0.5).all()
    assert record.attrs["status"] == "complete" and "--stop-at-target" in record.attrs["stop_reason"]
    assert record.attrs["target_reached_step"] == int(table[first, 0])
    assert record.attrs["time_to_target"] == table[first, 2]

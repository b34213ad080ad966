"""Conv nets (--conv, learn/nets/conv.py) under mpiexec -n 2 / -n 4 (pytest --with-mpi): every schedule that
trains one computes what its 1-process or MPI data-parallel twin computes, resumes to the uninterrupted weights,
and a run is recorded with its net."""
import dataclasses
import os
import shutil

import numpy as np
import pytest
import torch

from pffbench import results
from pffbench.core.config import Config
from pffbench.schedules.backprop import data_parallel as backprop
from pffbench.schedules.backprop import ddp, torch_pipeline
from pffbench.schedules.pipeline import schedule as pipeline
from pffbench.core.partition import balanced_partition

from compare import against_one_rank, assert_equal, largest_difference
from helpers import write_image_folder

MPI = pytest.importorskip("mpi4py.MPI")
pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(300)]

# 1 x 10 x 10 images (synthetic_images), 1280 rows in batches of 64: 20 steps an epoch.  Two blocks (4 and 8
# channels: 10x10 -> pooled 5x5 -> 5x5) and two dense layers: four hidden layers, so 4 ranks get one each;
# 4 microbatches of 16 rows.
CONV = Config(dataset="synthetic", conv=(4, 8), layers=(16, 12), epochs=2, batch_size=64, lr=3e-3, threads=1,
              eval_every=1, microbatches=4)
TOLERANCE = 1e-5  # absolute, on weights of order 0.1-1 after 40 Adam steps: float32 round-off of reordered sums
MODULES = {"backprop": backprop, "dp-backprop": backprop, "ddp": ddp, "gpipe": torch_pipeline,
           "1f1b": torch_pipeline, "pipeline": pipeline}


def _train(config, comm, data):
    from pffbench.core.world import World
    dataset, shape = data
    return MODULES[config.variant].train(config, World(comm), shape, dataset)


@pytest.mark.parametrize("variant", ["gpipe", "1f1b"])
def test_conv_torch_pipeline_gives_the_single_process_backprop_weights(variant, synthetic_images):
    """gpipe and 1f1b on the conv net: blocks split over stages by their FLOPs, activations [rows, C, H, W]
    between stages, per-example GroupNorm in every microbatch: the weights of 1-process backprop to round-off."""
    comm = MPI.COMM_WORLD
    parallel = _train(dataclasses.replace(CONV, variant=variant), comm, synthetic_images)
    if comm.rank != 0:
        assert parallel is None
        return
    single = _train(dataclasses.replace(CONV, variant="backprop"), MPI.COMM_SELF, synthetic_images)
    assert parallel.dims == single.dims == [100, 100, 200, 16, 12, 10]
    assert [type(layer).__name__ for layer in parallel.linears] == ["ConvBlock"] * 2 + ["Linear"] * 3
    assert largest_difference(parallel, single) <= TOLERANCE
    np.testing.assert_allclose(parallel.loss, single.loss, rtol=1e-4)
    assert single.test_accuracy[-1] > 0.3 and abs(parallel.test_accuracy[-1] - single.test_accuracy[-1]) <= 0.01
    held = [list(block) for block in parallel.blocks]
    assert sum(held, []) == [0, 1, 2, 3, 4] and 4 in held[-1] and len(held) == comm.size
    if comm.size == 2:  # block 0 (10,000 FLOPs a row) against block 1 and the dense layers (22,600)
        assert held == [[0], [1, 2, 3, 4]]
    assert parallel.attrs["layer_shapes"] == [[1, 10, 10], [4, 5, 5], [8, 5, 5], [16], [12], [10]]


def test_conv_ddp_gives_the_mpi_data_parallel_weights_and_those_of_one_process(synthetic_images):
    """ddp and dp-backprop on the conv net agree to round-off, and both with 1-process backprop: GroupNorm
    normalizes each example on its own, so a shard of a minibatch computes what the whole one computes
    (BatchNorm would fail this)."""
    comm = MPI.COMM_WORLD
    torch_ddp = _train(dataclasses.replace(CONV, variant="ddp"), comm, synthetic_images)
    mpi_dp = _train(dataclasses.replace(CONV, variant="dp-backprop"), comm, synthetic_images)
    if comm.rank != 0:
        assert torch_ddp is None and mpi_dp is None
        return
    single = _train(dataclasses.replace(CONV, variant="backprop"), MPI.COMM_SELF, synthetic_images)
    assert largest_difference(torch_ddp, mpi_dp) <= TOLERANCE
    assert largest_difference(mpi_dp, single) <= TOLERANCE
    np.testing.assert_allclose(torch_ddp.loss, mpi_dp.loss, rtol=1e-4)
    np.testing.assert_allclose(mpi_dp.loss, single.loss, rtol=1e-4)


@pytest.mark.parametrize("transport", ["auto", "p2p"])
def test_conv_pipeline_gives_the_sequential_weights(transport, synthetic_images):
    """--variant pipeline --objective local-softmax on the conv net: each block trained through its auxiliary
    head, its output travelling as the rows of [n, C, H, W] in the shared ring (auto) or MPI messages (p2p):
    p ranks with one thread each give the 1-rank blocks, dense layers and heads bit for bit."""
    comm = MPI.COMM_WORLD
    config = dataclasses.replace(CONV, objective="local-softmax", transport=transport, epochs=3)
    pair = against_one_rank(_train, config, synthetic_images)
    if pair is None:
        return
    parallel, sequential = pair
    assert parallel.dims == sequential.dims == [100, 100, 200, 16, 12]
    assert len(parallel.heads) == 4 and len(parallel.blocks) == comm.size
    if comm.size == 2:  # the first block against the rest (their FLOPs with their heads)
        assert [list(block) for block in parallel.blocks] == [[0], [1, 2, 3]]
    assert_equal(parallel, sequential)
    assert parallel.attrs["transport"] == ("shared" if transport == "auto" else "messages")
    assert parallel.test_accuracy[-1] > 0.3  # 10 classes: chance is 0.1


@pytest.mark.parametrize("variant", ["pipeline", "gpipe"])
def test_conv_resume_gives_the_uninterrupted_weights(variant, synthetic_images, tmp_path_factory):
    """A run of 3 epochs checkpoints after epochs 1 and 2; resumed from epoch 1 (the later checkpoint
    removed) it ends with the uninterrupted run's weights, heads, Adam steps and accounts, bit for bit."""
    comm = MPI.COMM_WORLD
    folder = comm.bcast(str(tmp_path_factory.mktemp("ck")) if comm.rank == 0 else None)
    config = dataclasses.replace(CONV, variant=variant, epochs=3, checkpoint_dir=folder,
                                 objective="local-softmax" if variant == "pipeline" else None)
    whole = _train(config, comm, synthetic_images)
    comm.Barrier()
    if comm.rank == 0:
        assert sorted(os.listdir(folder)) == ["epoch-000001", "epoch-000002"]
        shutil.rmtree(os.path.join(folder, "epoch-000002"))
    comm.Barrier()
    resumed = _train(dataclasses.replace(config, resume=True), comm, synthetic_images)
    if comm.rank != 0:
        return
    assert resumed.attrs["resumed_from_epoch"] == 1
    assert_equal(whole, resumed)


@pytest.mark.parametrize("variant", ["dp-backprop", "pipeline"])
def test_conv_run_is_recorded_with_its_net(variant, tmp_path_factory):
    """A whole run (pffbench.run.run) on an image folder: the results file records --conv in the config, the
    flattened widths as dims and every layer's shape; --model-out holds the blocks' tensors and the shapes."""
    from pffbench.analysis.analysis import settings_of
    from pffbench.core.world import World
    from pffbench.run import run
    comm = MPI.COMM_WORLD
    base = tmp_path_factory.mktemp("conv-run") if comm.rank == 0 else None
    if comm.rank == 0:
        write_image_folder(base / "images")
    base = comm.bcast(str(base) if base is not None else None)
    config = Config(variant=variant, dataset="imagefolder", data_dir=os.path.join(base, "images"), conv=(4, 8),
                    layers=(16, 12), epochs=3, batch_size=16, lr=3e-3, threads=1, quiet=True,
                    objective="local-softmax" if variant == "pipeline" else None,
                    out=os.path.join(base, "runs.h5"), model_out=os.path.join(base, "model.pt"), name="conv")
    run(config, World(comm))
    if comm.rank != 0:
        return
    record, = results.read_runs(config.out)
    attrs = record.attrs
    assert attrs["status"] == "complete" and attrs["config"]["conv"] == [4, 8]
    assert attrs["config"]["layers"] == [16, 12] and settings_of(record)["conv"] == "4,8"
    shapes = [[3, 8, 8], [4, 4, 4], [8, 4, 4], [16], [12], [4]]
    assert attrs["layer_shapes"] == shapes
    assert list(attrs["dims"]) == ([192, 64, 128, 16, 12, 4] if variant == "dp-backprop" else [192, 64, 128, 16, 12])
    assert attrs["final_test_accuracy"] > 0.5  # 4 classes: chance is 0.25
    model = torch.load(config.model_out)
    assert model["layer_shapes"] == shapes and model["config"]["conv"] == (4, 8)
    assert list(model["layers"][0]) == ["conv.weight", "norm.weight", "norm.bias"]
    assert model["layers"][0]["conv.weight"].shape == (4, 3, 3, 3)
    assert len(model["heads"]) == (4 if variant == "pipeline" else 0)


def test_layer_costs_set_the_conv_pipelines_partition_and_change_no_weight(synthetic_images):
    """--layer-costs (probes/layer_costs.py's measured costs) split the layers, not the FLOPs: here the last
    dense layer alone against the rest at 2 ranks (the FLOPs give the first block alone), and p ranks still
    give the 1-rank weights bit for bit."""
    config = dataclasses.replace(CONV, objective="local-softmax", layer_costs=(1, 1, 1, 5))
    pair = against_one_rank(_train, config, synthetic_images)
    if pair is None:
        return
    parallel, sequential = pair
    held = [list(block) for block in parallel.blocks]
    assert held == [list(block) for block in balanced_partition(config.layer_costs, MPI.COMM_WORLD.size)]
    if MPI.COMM_WORLD.size == 2:
        assert held == [[0, 1, 2], [3]]
    assert largest_difference(parallel, sequential) == 0.0

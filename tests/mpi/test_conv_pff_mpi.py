"""Conv nets (--conv) under the paper's PFF schedules (Single-Layer, All-Layers, Federated, perf-opt), with the
rules that have a conv path (local-softmax's DGL blocks, cwcomp's channel-wise competitive blocks), under mpiexec
-n 2 / -n 4 (pytest --with-mpi): p ranks give the weights of the one-rank sequential twin bit for bit, a run resumed
at a chapter boundary ends with the uninterrupted weights, and the results record the net."""
import dataclasses
import importlib
import os
import shutil

import pytest

from pffbench.core.config import Config
from pffbench.core.variants import VARIANTS
from compare import against_one_rank, assert_equal  # every tensor, loss and accuracy bit for bit

MPI = pytest.importorskip("mpi4py.MPI")
pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(300)]

# 1 x 10 x 10 images (conftest's synthetic_images), 1280 rows in batches of 64: 20 steps per layer and epoch
BASE = Config(dataset="synthetic", epochs=2, splits=2, batch_size=64, lr=3e-3, threads=1)


def _net(objective: str, layers: int) -> dict:
    """A conv net of ``layers`` hidden layers (Single-Layer needs one per rank): local-softmax's blocks of 4 and
    8 channels, then dense layers (one at least); cwcomp's blocks only, of a multiple of the 10 classes' channels."""
    if objective == "cwcomp":
        return {"conv": (10, 20, 20, 20)[:layers], "layers": ()}
    blocks = max(1, layers - 2)  # a dense layer at least: these rows' pixels have no places for blocks to read
    return {"conv": (4, 8)[:blocks], "layers": (16, 12)[:layers - blocks]}


def _config(variant: str, objective: str, layers: int, **changes) -> Config:
    return dataclasses.replace(BASE, variant=variant, objective=None if variant == "perf-opt" else objective,
                               **_net(objective, layers), **changes)


def _train(config, comm, data):
    from pffbench.core.world import World
    dataset, shape = data
    return importlib.import_module(VARIANTS[config.variant].module).train(config, World(comm), shape, dataset)


@pytest.mark.parametrize("variant,objective", [("perf-opt", "local-softmax"), ("all-layers", "cwcomp"),
                                               ("single-layer", "local-softmax"), ("single-layer", "cwcomp")])
def test_conv_pff_gives_the_one_rank_weights(variant, objective, synthetic_images):
    """Every chapter's blocks (and heads) trained where the schedule puts them, their outputs recomputed for the
    next layer once per chapter: the weights, losses and accuracy of the same run on one rank, bit for bit."""
    comm = MPI.COMM_WORLD
    layers = comm.size if variant == "single-layer" else 4
    config = _config(variant, objective, layers)
    pair = against_one_rank(_train, config, synthetic_images)
    if pair is None:
        return
    parallel, sequential = pair
    assert_equal(parallel, sequential)
    blocks = len(config.conv)
    assert [type(m).__name__ for m in parallel.linears] == ["ConvBlock"] * blocks + ["Linear"] * (layers - blocks)
    assert len(parallel.heads) == (layers if objective == "local-softmax" else 0)
    assert parallel.attrs["layer_shapes"][0] == [1, 10, 10] and "collapsed_layers" not in parallel.attrs
    assert parallel.loss[0, -1] < parallel.loss[0, 0]  # the first block learns (its loss falls)
    if objective == "local-softmax":  # cwcomp's goodness reads pixels' places, which these rows do not have
        assert parallel.test_accuracy[-1] > 0.3, parallel.test_accuracy  # 10 classes: chance is 0.1


def test_conv_federated_learns_on_private_shards(synthetic_images):
    """Federated PFF on the conv net: every rank trains every block on its own shard, blocks averaged (FedAvg);
    one shard on one rank is All-Layers on one rank."""
    comm = MPI.COMM_WORLD
    config = _config("federated", "local-softmax", 4, epochs=4, splits=4)
    federated = _train(config, comm, synthetic_images)
    if comm.rank != 0:
        return
    assert federated.test_accuracy[-1] > 0.3 and federated.attrs["shards"] == comm.size
    alone = _train(dataclasses.replace(config, shards=1), MPI.COMM_SELF, synthetic_images)
    all_layers = _train(dataclasses.replace(config, variant="all-layers"), MPI.COMM_SELF, synthetic_images)
    assert_equal(alone, all_layers)


def test_conv_pff_resumes_to_the_uninterrupted_weights(synthetic_images, tmp_path_factory):
    """perf-opt on the conv net, 3 rounds of a chapter per rank, checkpointed at each round's end but the last;
    resumed from the first (the later one removed), it ends with the uninterrupted run's blocks, heads, losses
    and accuracy, bit for bit."""
    comm = MPI.COMM_WORLD
    folder = comm.bcast(str(tmp_path_factory.mktemp("ck")) if comm.rank == 0 else None)
    chapters = 3 * comm.size
    config = _config("perf-opt", "local-softmax", 4, epochs=chapters, splits=chapters, checkpoint_dir=folder)
    whole = _train(config, comm, synthetic_images)
    comm.Barrier()
    if comm.rank == 0:
        saved = sorted(os.listdir(folder))
        assert len(saved) == 2, saved
        shutil.rmtree(os.path.join(folder, saved[1]))
    comm.Barrier()
    resumed = _train(dataclasses.replace(config, resume=True), comm, synthetic_images)
    if comm.rank != 0:
        return
    assert resumed.attrs["resumed_from_epoch"] == comm.size
    assert_equal(whole, resumed)

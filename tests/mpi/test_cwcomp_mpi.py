"""--objective cwcomp (learn/rules/cwcomp.py) in the activation pipeline under mpiexec -n 2 / -n 4 (pytest
--with-mpi): p ranks give the 1-rank conv blocks bit for bit, with and without --augment, over the shared ring
and MPI messages, and a resumed run ends with the uninterrupted weights."""
import dataclasses
import os
import shutil

import pytest

from compare import against_one_rank, assert_equal
from test_conv_mpi import CONV, _train

MPI = pytest.importorskip("mpi4py.MPI")
pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(300)]

# 1 x 10 x 10 images (synthetic_images), 20 steps an epoch; four blocks of multiples of the 10 classes
# (10x10 -> 5x5 -> 2x2 -> 1x1 -> 1x1), no dense layer (cwcomp has none), so 4 ranks get one each
CWCOMP = dataclasses.replace(CONV, variant="pipeline", objective="cwcomp", conv=(10, 20, 20, 20), layers=(),
                             epochs=3)


@pytest.mark.parametrize("transport,augment", [("auto", False), ("p2p", False), ("auto", True)])
def test_cwcomp_pipeline_gives_the_sequential_weights(transport, augment, synthetic_images):
    """Each block trained on its own CwC loss, its output travelling as the rows of [n, C, H, W] with the
    labels beside it, in the shared ring (auto) or MPI messages (p2p): p ranks with one thread each give the
    1-rank blocks bit for bit, and so do they when rank 0 augments the minibatches."""
    comm = MPI.COMM_WORLD
    config = dataclasses.replace(CWCOMP, transport=transport, augment=augment)
    pair = against_one_rank(_train, config, synthetic_images)
    if pair is None:
        return
    parallel, sequential = pair
    assert parallel.dims == sequential.dims == [100, 250, 80, 20, 20]
    assert parallel.heads == [] and len(parallel.blocks) == comm.size
    assert [type(layer).__name__ for layer in parallel.linears] == ["ConvBlock"] * 4
    assert_equal(parallel, sequential)
    assert parallel.attrs["transport"] == ("shared" if transport == "auto" else "messages")
    assert parallel.attrs["layer_shapes"] == [[1, 10, 10], [10, 5, 5], [20, 2, 2], [20, 1, 1], [20, 1, 1], [10]]
    assert parallel.loss[0, -1] < parallel.loss[0, 0]  # the first block learns (its loss falls)


def test_cwcomp_resume_gives_the_uninterrupted_weights(synthetic_images, tmp_path_factory):
    """3 epochs with checkpoints after epochs 1 and 2; resumed from epoch 1 (the later checkpoint removed), the
    run ends with the uninterrupted blocks, Adam states and accounts, bit for bit."""
    comm = MPI.COMM_WORLD
    folder = comm.bcast(str(tmp_path_factory.mktemp("ck")) if comm.rank == 0 else None)
    config = dataclasses.replace(CWCOMP, checkpoint_dir=folder)
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

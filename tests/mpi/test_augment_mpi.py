"""--augment (learn/augment.py) under mpiexec -n 2 (pytest --with-mpi): every rank draws the whole minibatch's
crops and flips and takes its own rows', so data-parallel backprop on p ranks computes what one process
computes; the pipeline's rank 0 augments as the 1-rank run does, so p ranks give its weights bit for bit; and
the draws are in the epoch checkpoint's generator state, so a resumed run ends with the uninterrupted weights."""
import dataclasses
import os
import shutil

import numpy as np
import pytest
import torch

from compare import against_one_rank, assert_equal, largest_difference, tensors
from test_conv_mpi import CONV, TOLERANCE, _train

MPI = pytest.importorskip("mpi4py.MPI")
pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(300)]

# 1 x 10 x 10 images padded to 18 x 18 and cropped back: what is tested is that every split computes alike
AUGMENTED = dataclasses.replace(CONV, augment=True)


def test_augmented_dp_backprop_gives_the_single_process_weights(synthetic_images):
    """dp-backprop with --augment --conv: each rank augments its shard of the minibatch with the draws one
    process makes for those rows: 1-process backprop's weights to round-off; without --augment they differ."""
    comm = MPI.COMM_WORLD
    parallel = _train(dataclasses.replace(AUGMENTED, variant="dp-backprop"), comm, synthetic_images)
    if comm.rank != 0:
        assert parallel is None
        return
    single = _train(dataclasses.replace(AUGMENTED, variant="backprop"), MPI.COMM_SELF, synthetic_images)
    alone = _train(dataclasses.replace(AUGMENTED, variant="dp-backprop"), MPI.COMM_SELF, synthetic_images)
    plain = _train(dataclasses.replace(CONV, variant="backprop"), MPI.COMM_SELF, synthetic_images)
    assert largest_difference(parallel, single) <= TOLERANCE
    assert largest_difference(parallel, alone) <= TOLERANCE
    np.testing.assert_allclose(parallel.loss, single.loss, rtol=1e-4)
    # the augmentation changed what was learned (no accuracy asked: shifting the synthetic set's 100 features,
    # which have no spatial order, as images destroys what they say)
    assert largest_difference(single, plain) > 100 * TOLERANCE


@pytest.mark.parametrize("conv", [True, False])
def test_augmented_pipeline_gives_the_sequential_weights(conv, synthetic_images):
    """--variant pipeline --objective local-softmax with --augment, a conv net or an MLP on the images: rank 0
    makes the augmented minibatches as the 1-rank run does: blocks, layers and heads bit for bit."""
    comm = MPI.COMM_WORLD
    config = dataclasses.replace(AUGMENTED, objective="local-softmax", epochs=3,
                                 **({} if conv else {"conv": None, "layers": (16, 12, 12, 12)[:max(2, comm.size)]}))
    pair = against_one_rank(_train, config, synthetic_images)
    if pair is None:
        return
    parallel, sequential = pair
    assert_equal(parallel, sequential)
    plain = _train(dataclasses.replace(config, augment=False), MPI.COMM_SELF, synthetic_images)
    assert not torch.equal(tensors(plain)[0][1], tensors(sequential)[0][1])  # it did augment


@pytest.mark.parametrize("variant", ["pipeline", "dp-backprop"])
def test_augmented_resume_gives_the_uninterrupted_weights(variant, synthetic_images, tmp_path_factory):
    """3 epochs with checkpoints after epochs 1 and 2; resumed from epoch 1, the run draws epoch 2's and 3's
    crops and flips from the restored generator: the uninterrupted weights, heads and accounts, bit for bit."""
    comm = MPI.COMM_WORLD
    folder = comm.bcast(str(tmp_path_factory.mktemp("ck")) if comm.rank == 0 else None)
    config = dataclasses.replace(AUGMENTED, variant=variant, epochs=3, checkpoint_dir=folder,
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

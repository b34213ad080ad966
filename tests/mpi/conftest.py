"""The set-up the in-process MPI tests share (pytest --with-mpi under mpiexec)."""
import pytest
import torch

from pffbench.core.types import Shape
from pffbench.data import load_dataset


@pytest.fixture(scope="session")
def synthetic():
    """(dataset, shape) of the synthetic data set as a run has them: rank 0 loads it (the others get None), every
    rank learns its Shape by a broadcast.  One torch thread per rank, on every rank: equal threads per rank are
    the condition for the 1-rank weights (jobs/test_cli.py::test_equal_threads_per_rank_are_the_condition_for_the_1_rank_weights)."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    torch.set_num_threads(1)
    assert comm.allgather(torch.get_num_threads()) == [1] * comm.size
    dataset = load_dataset("synthetic") if comm.rank == 0 else None
    shape = comm.bcast(Shape.of(dataset) if dataset else None)
    return dataset, shape


@pytest.fixture(scope="session")
def synthetic_images(synthetic):
    """(dataset, shape) of the synthetic data set read as 1 x 10 x 10 images, its first 1280 training rows: the
    tiny images the conv net's MPI tests train on (20 steps an epoch in batches of 64).  Its 100 features have
    no spatial order, but a conv net with a dense layer learns them all the same."""
    import dataclasses
    dataset, shape = synthetic
    rows, image = 1280, (1, 10, 10)
    if dataset is not None:
        dataset = dataclasses.replace(dataset, x_train=dataset.x_train[:rows], y_train=dataset.y_train[:rows],
                                      image_shape=image)
    return dataset, Shape(rows, shape.num_features, shape.num_classes, image)

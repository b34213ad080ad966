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
    shape = comm.bcast(Shape(dataset.x_train.shape[0], dataset.num_features, dataset.num_classes)
                       if dataset else None)
    return dataset, shape

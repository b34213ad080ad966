"""What the MPI tests compare: a run on p ranks against the same run on one (bit for bit, or within round-off)."""
import numpy as np
import torch


def tensors(result) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of every layer (and auxiliary head) of a TrainResult, named by layer and key."""
    return [(f"{part} {i} {key}", tensor) for part in ("linears", "heads")
            for i, module in enumerate(getattr(result, part)) for key, tensor in module.state_dict().items()]


def largest_difference(a, b) -> float:
    """The largest absolute difference between two results' tensors (the same names, in the same order)."""
    ours, theirs = tensors(a), tensors(b)
    assert [name for name, _ in ours] == [name for name, _ in theirs] and ours
    return max((x - y).abs().max().item() for (_, x), (_, y) in zip(ours, theirs))


def assert_equal(a, b) -> None:
    """Every tensor, loss and accuracy of two results bit for bit."""
    ours, theirs = tensors(a), tensors(b)
    assert [name for name, _ in ours] == [name for name, _ in theirs] and ours
    for (name, x), (_, y) in zip(ours, theirs):
        assert torch.equal(x, y), name
    np.testing.assert_array_equal(a.loss, b.loss)
    np.testing.assert_array_equal(a.test_accuracy, b.test_accuracy)


def against_one_rank(train, config, data):
    """``train(config, comm, data)`` on every rank, then on rank 0 alone: (parallel, sequential) on rank 0;
    None on the others, whose train returned None (only rank 0 holds a result)."""
    from mpi4py import MPI
    parallel = train(config, MPI.COMM_WORLD, data)
    if MPI.COMM_WORLD.rank != 0:
        assert parallel is None
        return None
    return parallel, train(config, MPI.COMM_SELF, data)

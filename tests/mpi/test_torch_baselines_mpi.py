"""gpipe, 1f1b and ddp (torch.distributed on a process group made from the MPI
world) under mpiexec -n 2 / -n 4 (pytest --with-mpi): they compute what the
1-process and MPI data-parallel baselines compute."""
import numpy as np
import pytest

from pffbench.core.config import Config
from pffbench.instrument.timer import COLUMNS
from pffbench.schedules.backprop import data_parallel as backprop
from pffbench.schedules.backprop import ddp, torch_pipeline

MPI = pytest.importorskip("mpi4py.MPI")
pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(300)]

# synthetic: 2000 rows / batch 64 = 31 full minibatches and one of 16 rows; 2 epochs = 64 Adam steps.
# Four hidden layers, so 4 ranks get a stage each; 4 microbatches of 16 rows (4 in the short minibatch).
CONFIG = Config(variant="gpipe", dataset="synthetic", layers=(48, 40, 32, 24), epochs=2, batch_size=64, lr=1e-3,
                threads=1, eval_every=1, microbatches=4)
TOLERANCE = 1e-5  # absolute, on weights of order 0.1 after 64 Adam steps: float32 round-off of reordered sums


def _same_weights(a, b) -> float:
    assert len(a.linears) == len(b.linears) == 5
    return max((la.weight - lb.weight).abs().max().item() for la, lb in zip(a.linears, b.linears))


@pytest.mark.parametrize("variant", ["gpipe", "1f1b"])
def test_torch_pipeline_gives_the_single_process_backprop_weights(variant, synthetic):
    """The microbatches' gradients (each microbatch's summed loss / n, the
    library's own 1/M scaling off) add up to the minibatch-mean gradient: the
    weights of 1-process backprop to round-off, the same losses and
    accuracy.  With the library's default (mean loss per microbatch, divided
    by M) the short minibatch alone would be off, and with a mean loss
    without the division every weight would be M times off."""
    from pffbench.core.world import World
    comm = MPI.COMM_WORLD
    data, shape = synthetic
    config = Config(**{**CONFIG.__dict__, "variant": variant})
    parallel = torch_pipeline.train(config, World(comm), shape, data)
    if comm.rank != 0:
        assert parallel is None
        return
    single = backprop.train(Config(**{**CONFIG.__dict__, "variant": "backprop", "microbatches": 4}),
                            World(MPI.COMM_SELF), shape, data)
    assert parallel.dims == single.dims == [100, 48, 40, 32, 24, 10]
    assert _same_weights(parallel, single) <= TOLERANCE
    np.testing.assert_allclose(parallel.loss, single.loss, rtol=1e-4)
    assert single.test_accuracy[-1] > 0.2 and abs(parallel.test_accuracy[-1] - single.test_accuracy[-1]) <= 0.01
    # the FF pipeline's partition of the hidden layers, the head (index 4) on the last rank
    held = [list(block) for block in parallel.blocks]
    assert sum(held, []) == [0, 1, 2, 3, 4] and 4 in held[-1] and len(held) == comm.size
    timing = parallel.timing  # [ranks, epochs, columns]
    compute, sync = timing[:, :, COLUMNS.index("compute")], timing[:, :, COLUMNS.index("sync")]
    assert (compute > 0).all() and (sync > 0).all()  # every stage computes and waits (the bubble)
    assert parallel.attrs["microbatches"] == 4 and parallel.attrs["process_group"] == "gloo"


def test_ddp_gives_the_mpi_data_parallel_weights(synthetic):
    """DDP with a summing communication hook over the same shards as
    dp-backprop: the same weights to round-off (the allreduce of gloo and of
    MPI add the ranks' gradients in their own orders)."""
    from pffbench.core.world import World
    comm = MPI.COMM_WORLD
    data, shape = synthetic
    config = Config(**{**CONFIG.__dict__, "variant": "ddp"})
    torch_ddp = ddp.train(config, World(comm), shape, data)
    mpi_dp = backprop.train(Config(**{**CONFIG.__dict__, "variant": "dp-backprop"}), World(comm), shape, data)
    if comm.rank != 0:
        assert torch_ddp is None and mpi_dp is None
        return
    assert _same_weights(torch_ddp, mpi_dp) <= TOLERANCE
    np.testing.assert_allclose(torch_ddp.loss, mpi_dp.loss, rtol=1e-4)
    sync = torch_ddp.timing[:, :, COLUMNS.index("sync")]
    assert (sync > 0).all()  # the allreduce the backward pass did not hide
    assert torch_ddp.attrs["process_group"] == "gloo"


@pytest.mark.parametrize("variant", ["gpipe", "ddp", "dp-backprop"])
def test_every_rank_stops_at_the_same_step_once_the_target_is_reached(variant, synthetic):
    """--eval-every-steps 8 --target-accuracy 0.3 --stop-at-target: every
    rank ends after the same step (or the collectives would hang), and the
    record names when the target was reached."""
    from pffbench.core.world import World
    comm = MPI.COMM_WORLD
    data, shape = synthetic
    config = Config(**{**CONFIG.__dict__, "variant": variant, "eval_every": 0, "eval_every_steps": 8,
                       "target_accuracy": 0.3, "stop_at_target": True, "epochs": 3})
    module = {"gpipe": torch_pipeline, "ddp": ddp, "dp-backprop": backprop}[variant]
    result = module.train(config, World(comm), shape, data)
    if comm.rank != 0:
        return
    evaluations = result.arrays["evaluations"]  # step, epoch, seconds, accuracy
    assert (evaluations[:, 0] % 8 == 0).all() and np.all(np.diff(evaluations[:, 2]) > 0)
    assert evaluations[-1, 3] >= 0.3 and (evaluations[:-1, 3] < 0.3).all()
    assert result.attrs["target_reached_step"] == int(evaluations[-1, 0]) < 3 * 32
    assert result.attrs["time_to_target"] == evaluations[-1, 2]
    assert "--stop-at-target" in result.attrs["stop_reason"]
    assert np.isnan(result.test_accuracy[-1])  # the last epoch never ran

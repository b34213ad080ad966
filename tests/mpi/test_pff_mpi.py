"""The paper's PFF family under mpiexec -n 2 / -n 4 (pytest --with-mpi), on the synthetic data set."""
import dataclasses
import importlib

import numpy as np
import pytest

from pffbench import results
from pffbench.core.config import Config
from pffbench.core.variants import VARIANTS

MPI = pytest.importorskip("mpi4py.MPI")
pytestmark = pytest.mark.mpi(min_size=2)

NEGATIVES = ("random", "fixed", "adaptive", "adaptive-sampled")
# 2000 samples, batch 32: 63 minibatches per epoch.  Federated ranks see 1/N
# of the data each, so they need more epochs for as many steps.
BASE = Config(dataset="synthetic", layers=(64,) * 4, epochs=8, splits=4, batch_size=32, lr=1e-2, threads=1,
              softmax_lr=1e-2)
FEDERATED = dataclasses.replace(BASE, epochs=16, splits=8, lr=3e-3)


def config_for(variant: str, size: int, **changes) -> Config:
    base = FEDERATED if variant == "federated" else BASE
    layers = (64,) * size if variant == "single-layer" else base.layers  # single-layer: one rank per layer
    return dataclasses.replace(base, variant=variant, layers=layers, **changes)


def train(config, data, comm=None):
    from pffbench.core.world import World
    dataset, shape = data
    schedule = importlib.import_module(VARIANTS[config.variant].module)
    return schedule.train(config, World(comm or MPI.COMM_WORLD), shape, dataset)


def assert_same_weights(a, b):
    """Same float32 operations on the same inputs, one thread each: equal to round-off
    (in practice exactly); 1e-6 admits BLAS builds that pick kernels per process."""
    for x, y in zip(a.linears, b.linears, strict=True):
        assert (x.weight - y.weight).abs().max().item() <= 1e-6
        assert (x.bias - y.bias).abs().max().item() <= 1e-6


@pytest.mark.parametrize("variant", ["single-layer", "all-layers", "federated"])
@pytest.mark.parametrize("neg", NEGATIVES)
def test_every_variant_and_negative_strategy_learns(variant, neg, synthetic):
    result = train(config_for(variant, MPI.COMM_WORLD.size, neg=neg), synthetic)
    if MPI.COMM_WORLD.rank == 0:
        print(f"{variant} {neg} N={MPI.COMM_WORLD.size}: {result.test_accuracy[-1]:.3f}")
        assert result.test_accuracy[-1] > 0.6  # chance is 0.1
        assert result.attrs["negatives"] == neg


@pytest.mark.parametrize("variant", ["single-layer", "all-layers", "federated"])
def test_softmax_classifier_learns(variant, synthetic):
    result = train(config_for(variant, MPI.COMM_WORLD.size, classifier="softmax", neg="adaptive"), synthetic)
    if MPI.COMM_WORLD.rank == 0:
        assert result.test_accuracy[-1] > 0.6 and result.attrs["classifier"] == "softmax"


def test_perf_opt_learns_and_reports_both_heads(synthetic):
    result = train(config_for("perf-opt", MPI.COMM_WORLD.size), synthetic)
    if MPI.COMM_WORLD.rank == 0:
        attrs = result.attrs
        assert attrs["accuracy_last_head"] > 0.6 and attrs["accuracy_all_heads"] > 0.6
        assert result.test_accuracy[-1] == attrs["accuracy_all_heads"] and attrs["negatives"] == "none"


@pytest.mark.parametrize("variant,neg,classifier", [
    ("single-layer", "random", "goodness"), ("single-layer", "fixed", "softmax"),
    ("all-layers", "random", "goodness"), ("all-layers", "fixed", "softmax"), ("perf-opt", "random", "goodness"),
])
def test_n_ranks_give_the_weights_of_the_one_rank_schedule(variant, neg, classifier, synthetic):
    """Adaptive negatives are left out: on N ranks they come from the model
    N chapters back (so that no rank waits for them), on 1 rank from the
    previous chapter's, so they depend on N by design (see the next test)."""
    comm = MPI.COMM_WORLD
    config = config_for(variant, comm.size, neg=neg, classifier=classifier, epochs=comm.size * 2,
                        splits=comm.size)
    parallel = train(config, synthetic)
    if comm.rank == 0:
        sequential = train(config, synthetic, MPI.COMM_SELF)
        assert_same_weights(parallel, sequential)
        np.testing.assert_allclose(parallel.loss, sequential.loss, rtol=1e-5)
        assert parallel.test_accuracy[-1] == sequential.test_accuracy[-1]


@pytest.mark.parametrize("neg,classifier", [("random", "goodness"), ("adaptive", "goodness"),
                                            ("adaptive", "softmax"), ("adaptive-sampled", "goodness")])
def test_single_layer_and_all_layers_train_the_same_network(neg, classifier, synthetic):
    """The same (chapter, layer) trainings, scheduled differently; with adaptive
    negatives both take chapter c's from the model after chapter c - N."""
    comm = MPI.COMM_WORLD
    config = config_for("single-layer", comm.size, neg=neg, classifier=classifier, epochs=3 * comm.size,
                        splits=3 * comm.size)
    single = train(config, synthetic)
    every = train(dataclasses.replace(config, variant="all-layers"), synthetic)
    if comm.rank == 0:
        assert_same_weights(single, every)
        if neg != "random":  # and the lag matters: the 1-rank schedule (lag 1) differs
            sequential = train(config, synthetic, MPI.COMM_SELF)
            assert max((a.weight - b.weight).abs().max().item()
                       for a, b in zip(single.linears, sequential.linears, strict=True)) > 1e-3


def test_federated_with_one_shard_equals_all_layers(synthetic):
    comm = MPI.COMM_WORLD
    config = config_for("all-layers", comm.size)
    all_layers = train(config, synthetic)
    if comm.rank == 0:
        federated = train(dataclasses.replace(config, variant="federated", shards=1), synthetic, MPI.COMM_SELF)
        assert_same_weights(all_layers, federated)


def test_federated_label_skew_shards_are_private_and_skewed(synthetic):
    comm = MPI.COMM_WORLD
    config = config_for("federated", comm.size, partition="label-skew", classes_per_shard=2, shards=2 * comm.size)
    result = train(config, synthetic)
    if comm.rank == 0:
        counts = result.arrays["shard_label_counts"]
        assert counts.shape == (comm.size, 10) and counts.sum() == 2000
        assert ((counts > 0).sum(axis=1) <= 8).all()  # 4 pieces of ~2 classes each, never all 10
        assert result.attrs["partition"] == "label-skew"


@pytest.mark.parametrize("variant", ["single-layer", "all-layers", "federated", "perf-opt"])
def test_run_records_per_chapter_timings(variant, tmp_path_factory):
    from pffbench.run import run
    from pffbench.instrument.timer import COLUMNS
    from pffbench.core.world import World
    comm = MPI.COMM_WORLD
    out = comm.bcast(str(tmp_path_factory.mktemp("h5") / "pff.h5") if comm.rank == 0 else None)
    config = config_for(variant, comm.size, epochs=2 * comm.size, splits=comm.size, out=out, name=variant)
    run(config, World(comm))
    if comm.rank != 0:
        return
    recorded, = results.read_runs(out)
    p, epochs, chapters = comm.size, config.epochs, config.splits
    for name in ("compute", "publish", "wait"):
        assert recorded.arrays[f"timing_chapter/{name}"].shape == (p, chapters)
    assert (recorded.arrays["timing_chapter/compute"].sum(axis=1) > 0).all()
    parts = sum(recorded.arrays[f"timing/{c}"] for c in COLUMNS if c != "wall")
    np.testing.assert_allclose(parts, recorded.arrays["timing/wall"], rtol=1e-9)
    assert recorded.arrays["timing/wall"].shape == (p, epochs)
    assert recorded.arrays["loss"].shape == (len(config.layers), epochs)
    assert recorded.attrs["variant"] == variant and recorded.attrs["splits"] == chapters
    assert np.isfinite(recorded.attrs["final_test_accuracy"])


@pytest.mark.parametrize("variant", ["single-layer", "all-layers", "federated", "perf-opt"])
def test_a_traced_run_records_every_timed_block_and_draws_a_timeline(variant, tmp_path_factory):
    from pffbench import plot
    from pffbench.core.world import World
    from pffbench.instrument.timer import CATEGORIES
    from pffbench.run import run
    comm = MPI.COMM_WORLD
    folder = comm.bcast(str(tmp_path_factory.mktemp("traced")) if comm.rank == 0 else None)
    config = config_for(variant, comm.size, epochs=2 * comm.size, splits=comm.size, out=f"{folder}/pff.h5",
                        name=variant, trace=True)
    run(config, World(comm))
    if comm.rank != 0:
        return
    recorded, = results.read_runs(config.out)
    events = recorded.arrays["trace/events"]
    assert recorded.attrs["trace_categories"] == list(CATEGORIES)
    assert events.shape[1] == 4 and set(np.unique(events[:, 0])) == set(range(comm.size))
    assert (events[:, 2] >= 0).all() and (events[:, 3] >= events[:, 2]).all()
    for rank in range(comm.size):  # every timed block is in the trace: its durations sum to the table's columns
        for index, category in enumerate(CATEGORIES):
            mine = events[(events[:, 0] == rank) & (events[:, 1] == index)]
            assert (mine[:, 3] - mine[:, 2]).sum() == pytest.approx(
                recorded.arrays[f"timing/{category}"][rank].sum(), rel=1e-6, abs=1e-9)
    fig = plot.timeline_figure(recorded)
    assert [ax.get_title() for ax in fig.axes] == ["whole run"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [f"rank {r}" for r in range(comm.size)]
    written = plot.make_all([recorded], f"{folder}/plots")
    assert f"{folder}/plots/timeline.png" in written

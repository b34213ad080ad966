"""The performance model (pffbench/perfmodel, python -m pffbench.model):
the simulator on hand-derived cases, and the model against real small runs."""
import math

import pytest

from pffbench import model as cli
from pffbench.paper_bench import wavefront_bound
from pffbench.core.partition import layer_costs
from pffbench.perfmodel import links
from pffbench.perfmodel.calibrate import BackpropCosts, FFCosts
from pffbench.perfmodel.events import Simulator, Wait, Work
from pffbench.perfmodel.predict import Settings, predict, simulate


FREE = links.FREE


def ff_costs(steps, dims=None, batch=64, forward=None, data=0.0):
    dims = dims or [100] * (len(steps) + 1)
    n = len(steps)
    return FFCosts(dims, batch, 1, "ff", list(steps), [0.0] * n, list(forward or [0.0] * n), data, 0.0, 0.0)


def free_cluster(ranks_per_node=64, cores=64):
    return links.Cluster(ranks_per_node, cores, 1, FREE, FREE, FREE)


def test_two_equal_stages_over_free_links_take_m_plus_1_stage_times():
    """A 2-stage pipeline of equal stages t: the last stage starts one t late
    and then runs M stages back to back: (M + 1) t; one rank: 2 M t."""
    t, m = 0.01, 50
    costs = ff_costs([t, t])
    settings = Settings(num_train=m * 64, epochs=1)
    assert simulate("pipeline", costs, free_cluster(), 2, settings).makespan == pytest.approx((m + 1) * t)
    assert simulate("pipeline", costs, free_cluster(), 1, settings).makespan == pytest.approx(2 * m * t)


def test_a_link_latency_delays_the_pipeline_once_and_a_slow_stage_sets_its_pace():
    t, m, alpha = 0.01, 40, 0.002
    cluster = links.Cluster(1, 1, 1, FREE, links.Link("lat", alpha, math.inf), FREE)  # one rank per node
    settings = Settings(num_train=m * 64, epochs=1)
    # the end-of-epoch reduction adds ceil(log2 2) = 1 latency after the last stage
    assert simulate("pipeline", ff_costs([t, t]), cluster, 2, settings).makespan == pytest.approx(
        (m + 1) * t + alpha + alpha)
    # a stage 3x slower than the first: the first runs ahead by at most the ring's depth, the slow one
    # computes back to back: t + M * 3t
    assert simulate("pipeline", ff_costs([t, 3 * t]), free_cluster(), 2, settings).makespan == pytest.approx(
        t + m * 3 * t)


def test_ring_allreduce_cost_is_thakurs_and_the_simulated_steps_pay_it():
    """Ring allreduce of n bytes on p ranks: 2 (p-1) (alpha + n / (p beta)) (Thakur et al. 2005)."""
    alpha, beta, n, p = 5e-6, 1e9, 4e6, 8
    lk = links.Link("x", alpha, beta)
    assert links.allreduce_time(n, p, lk, "ring") == pytest.approx(2 * (p - 1) * (alpha + n / (p * beta)))
    assert links.allreduce_time(n, p, lk, "tree") == pytest.approx(3 * (alpha + n / beta))
    # dp-backprop with no compute: every minibatch is one allreduce of the gradient buffer
    costs = BackpropCosts([100, 100], 64, 1, 0.0, 0.0, 0.0, 0.0, gradient_floats=int(n / 4))
    cluster = links.Cluster(1, 1, 1, FREE, lk, FREE)
    settings = Settings(num_train=10 * 64, epochs=1, algorithm="ring")
    assert simulate("dp-backprop", costs, cluster, p, settings).makespan == pytest.approx(
        10 * 2 * (p - 1) * (alpha + n / (p * beta)))


def test_ranks_sharing_cores_slow_each_other():
    """Processor sharing: 4 one-thread ranks with W of work each on 2 cores
    finish at 2 W; a rank that waits leaves its core to the others."""
    sim = Simulator([0, 0, 0, 0], 2, [1, 1, 1, 1])
    assert sim.run([iter([Work(1.0)]) for _ in range(4)]).finish.tolist() == pytest.approx([2.0] * 4)
    sim = Simulator([0, 0, 0], 2, [1, 1, 1])
    gate = sim.signal()

    def waiter():
        yield Wait(gate)
        yield Work(1.0)

    def opener():
        yield Work(1.0)
        sim.fire(gate)
    # ranks 0 and 1 share... nothing: rank 2 waits until t = 1, so 0 and 1 each have a core; then 2 alone
    timeline = sim.run([iter([Work(1.0)]), opener(), waiter()])
    assert timeline.finish.tolist() == pytest.approx([1.0, 1.0, 2.0])
    # the pipeline of 4 equal stages on 2 cores takes twice as long as on 4 (all stages busy all the time)
    costs, settings = ff_costs([0.01] * 4), Settings(num_train=100 * 64, epochs=1)
    four = simulate("pipeline", costs, links.Cluster(4, 4, 1, FREE, FREE, FREE), 4, settings).makespan
    two = simulate("pipeline", costs, links.Cluster(4, 2, 1, FREE, FREE, FREE), 4, settings).makespan
    assert two / four == pytest.approx(2.0, rel=0.05)


def test_a_rank_waiting_forever_is_reported_not_hung():
    sim = Simulator([0], 1, [1])
    with pytest.raises(RuntimeError, match="deadlocked"):
        sim.run([iter([Wait(sim.signal())])])


@pytest.mark.parametrize("variant,ranks", [("all-layers", 2), ("all-layers", 4), ("single-layer", 4)])
def test_pff_schedules_on_free_links_reach_the_wavefront_bound(variant, ranks):
    """With every (chapter, layer) at its weight count and nothing else, the
    simulated speedup is paper_bench's critical-path bound (written
    independently, for docs/paper.md)."""
    dims = [784, 500, 500, 500, 500]
    weights = layer_costs(dims)
    chapters = 6
    costs = ff_costs([w * 1e-9 for w in weights], dims)  # per minibatch; one minibatch per epoch
    settings = Settings(num_train=64, epochs=chapters, splits=chapters)
    t1 = simulate(variant, costs, free_cluster(), 1, settings).makespan
    tp = simulate(variant, costs, free_cluster(), ranks, settings).makespan
    assert t1 / tp == pytest.approx(wavefront_bound(variant, weights, chapters, ranks), rel=1e-9)


def test_federated_averaging_waits_for_the_slowest_and_pays_the_allreduce():
    lk = links.Link("x", 1e-3, math.inf)
    costs = ff_costs([0.01, 0.01])
    settings = Settings(num_train=64 * 4, epochs=2, splits=2)
    cluster = links.Cluster(1, 1, 1, FREE, lk, FREE)
    free = simulate("federated", costs, free_cluster(), 2, settings).makespan
    paid = simulate("federated", costs, cluster, 2, settings).makespan
    assert free == pytest.approx(simulate("federated", costs, free_cluster(), 1, settings).makespan / 2)
    # the layer-0 average of chapter 0 is needed before layer 0 of chapter 1 and was overlapped with layer 1's
    # training (10 ms > 1 ms); only the last chapter's final averages are waited for: one tree allreduce
    assert paid - free == pytest.approx(links.allreduce_time(0, 2, lk, "auto") + 1e-3 * 2, abs=2.5e-3)


def test_the_breakdown_adds_up_to_the_predicted_time():
    costs = ff_costs([0.004, 0.01, 0.01], data=0.001)
    pred = predict("pipeline", costs, links.Cluster(1, 1, 1), 3, Settings(num_train=200 * 64, epochs=2))
    assert sum(pred.breakdown.values()) == pytest.approx(pred.seconds, rel=1e-6)
    assert pred.breakdown["imbalance"] > 0 and pred.breakdown["link waits"] > 0


@pytest.mark.parametrize("argv,needle", [
    (["predict", "--network", "carrier-pigeon"], "unknown link"),
    (["predict", "--variant", "gpipe-but-misspelt"], "unknown variant"),
    (["predict", "--ranks", "0,2"], "positive integers"),
    (["validate", "/nonexistent/runs.h5"], "no such results file"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pffbench: error:") and needle in err[0]

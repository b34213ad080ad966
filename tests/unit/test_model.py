"""The performance model (pffbench/perfmodel, python -m pffbench.model):
the simulator on hand-derived cases, and the model against real small runs."""
import math

import pytest

from pffbench import model as cli
from pffbench.perfmodel.pff import wavefront_bound
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
    return links.Cluster(ranks_per_node, cores, 1, FREE, FREE, FREE, FREE, FREE)


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


@pytest.mark.parametrize("ranks", [2, 4])
def test_the_bound_counts_the_recomputation_between_layers_so_no_prediction_exceeds_it(ranks):
    """Issue 23: model paper printed All-Layers 3.89x beside a weight-count bound of 3.13x.  With the
    recomputation (forward work between a rank's layers, off each layer's chain of chapters) in the
    bound, the free-link simulation reaches it exactly and a real link stays below it."""
    steps, forward_rows = [0.002, 0.004, 0.004, 0.004], [1e-6, 3e-6, 3e-6, 3e-6]
    costs = ff_costs(steps, [784, 2000, 2000, 2000, 2000], forward=forward_rows)
    chapters, rows = 8, 64 * 10
    settings = Settings(num_train=rows, epochs=chapters, splits=chapters)
    t1 = simulate("all-layers", costs, free_cluster(), 1, settings).makespan
    tp = simulate("all-layers", costs, free_cluster(), ranks, settings).makespan
    train = [s * rows / 64 for s in steps]
    between = [f * rows for f in forward_rows]
    bound = wavefront_bound("all-layers", train, chapters, ranks, between)
    assert t1 / tp == pytest.approx(bound, rel=1e-9)
    assert bound > wavefront_bound("all-layers", train, chapters, ranks)  # the recomputation overlaps
    slow = links.Cluster(1, 1, 1, inter=links.Link("slow", 1e-3, 1e8, "test"))
    assert t1 / simulate("all-layers", costs, slow, ranks, settings).makespan < bound


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
    assert len(err) == 1 and err[0].startswith("pffbench.model: error:") and needle in err[0]


def backprop_costs(fb0=0.0, fb1=0.0, adam=0.0, microbatches=4, library=0.0, tail=0.0, dims=(784, 784, 544)):
    return BackpropCosts(list(dims), 64, 1, fb0, fb1, adam, 0.0, 0, microbatches=microbatches, library=library,
                         tail=tail)


def test_ddp_buckets_follow_ddps_size_rule():
    """[784, 784, 544] + a 10-class head, in reverse: head 5,450 and layer 1 427,040 floats (1.73 MB) pass
    DDP's 1 MiB first-bucket limit together; layer 0 (615,440 floats) is the second bucket (25 MiB limit)."""
    from pffbench.perfmodel.backprop import ddp_buckets, parameters
    assert ddp_buckets(parameters([784, 784, 544, 10])) == [[2, 1], [0]]
    assert ddp_buckets(parameters([784, 100, 100, 10])) == [[2, 1, 0]]  # 0.36 MB in all: one bucket


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_gpipe_and_1f1b_over_two_unequal_stages_match_the_hand_derived_step(schedule):
    """fb1 = 0: every linear costs fb0 / 3, a third of it forward.  With a = fb0 / 9, stage 0 (layer 0)
    takes a forward and 2a backward, stage 1 (layer 1 + head) 2a and 4a.  Stage 1 sets the pace:
    its forwards end at a + 2aM, its backwards 4aM later, stage 0's last backward 2a after that:
    (6M + 3) a, for GPipe (all forwards, then all backwards) and 1F1B alike (derived op by op for
    M = 4 in docs/model.md).  One rank runs the 3 linears' 9a per microbatch back to back: 9Ma."""
    a, m = 0.001, 4
    costs = backprop_costs(fb0=9 * a, microbatches=m)
    settings = Settings(num_train=64, epochs=1)  # one step
    assert simulate(schedule, costs, free_cluster(), 2, settings).makespan == pytest.approx((6 * m + 3) * a)
    assert simulate(schedule, costs, free_cluster(), 1, settings).makespan == pytest.approx(9 * m * a)


def test_a_message_overhead_lands_on_the_critical_path_once_per_operation():
    """No compute, library L per operation, a link whose messages cost each end o of its own time (LogP)
    and no latency.  On 2 stages the step's critical path is M + 1 forward and M + 1 backward operations
    holding 2M message ends (derived op by op in docs/model.md): 2 (M + 1) L + 2 M o.  Per microbatch
    that is 2 (L + o), the slope linkprobe --gloo fits o from (a 1-stage step's slope being 2 L)."""
    m, lib, o = 4, 0.0002, 0.0003
    costs = backprop_costs(microbatches=m, library=lib)
    group = links.Link("o", 0.0, math.inf, overhead=o)
    cluster = links.Cluster(64, 64, 1, FREE, FREE, FREE, group, FREE)
    for schedule in ("gpipe", "1f1b"):
        step = simulate(schedule, costs, cluster, 2, Settings(num_train=64, epochs=1)).makespan
        assert step == pytest.approx(2 * (m + 1) * lib + 2 * m * o)


def test_pipeline_backprop_library_and_links_add_per_microbatch():
    """Each forward and backward also costs the library's bookkeeping; a link latency alpha lands on the
    critical path twice: stage 1 (the slower) waits for its first activation, stage 0 for its last
    gradient; every other message arrives before its receiver is ready."""
    a, m, lib, alpha = 0.001, 4, 0.0002, 0.0001
    costs = backprop_costs(fb0=9 * a, microbatches=m, library=lib)
    settings = Settings(num_train=64, epochs=1)
    one = simulate("gpipe", costs, free_cluster(), 1, settings).makespan
    assert one == pytest.approx(9 * m * a + 2 * m * lib)
    with_links = links.Cluster(64, 64, 1, FREE, FREE, FREE, links.Link("lat", alpha, math.inf), FREE)
    for schedule in ("gpipe", "1f1b"):
        free = simulate(schedule, costs, free_cluster(), 2, settings).makespan
        assert simulate(schedule, costs, with_links, 2, settings).makespan == pytest.approx(free + 2 * alpha)


def test_pipeline_backprop_needs_as_many_microbatches_as_stages():
    with pytest.raises(ValueError, match="microbatches >= stages"):
        simulate("gpipe", backprop_costs(fb0=0.01, microbatches=2), free_cluster(), 3, Settings(num_train=64))


def test_ddp_overlaps_the_first_bucket_with_the_rest_of_the_backward():
    """[784, 784, 544]: buckets {head, layer 1} then {layer 0}.  Over a process group whose allreduce
    link has latency alpha and free bandwidth a 2-rank ring allreduce costs 2 alpha.  A step: forward, backward of head and layer 1,
    then bucket 0's allreduce overlaps layer 0's backward, bucket 1's waits for bucket 0 (gloo's queue):
    T = forward + backward of head and layer 1 + max(2 alpha, backward of layer 0) + 2 alpha + tail + Adam."""
    from pffbench.perfmodel.backprop import layer_work
    costs = backprop_costs(fb0=0.003, fb1=0.0001, adam=0.001, tail=0.0005)
    settings = Settings(num_train=64, epochs=1)
    forward, backward, adam = layer_work(costs, 32)
    for alpha in (0.0001, 0.01):  # hidden by layer 0's backward, and not
        cluster = links.Cluster(64, 64, 1, FREE, FREE, FREE, FREE, links.Link("lat", alpha, math.inf))
        expected = sum(forward) + backward[2] + backward[1] + max(2 * alpha, backward[0]) + 2 * alpha \
            + costs.tail + sum(adam)
        assert simulate("ddp", costs, cluster, 2, settings).makespan == pytest.approx(expected)
    assert simulate("ddp", costs, free_cluster(), 1, settings).makespan == pytest.approx(
        costs.fb0 + costs.fb1 * 64 + costs.adam + costs.tail)


@pytest.mark.parametrize("variant", ["dp-backprop", "ddp", "gpipe", "1f1b"])
def test_a_backprop_epoch_from_two_and_three_steps_equals_the_whole_epoch(variant):
    """predict extrapolates an epoch of a backprop variant from 2 and 3 simulated steps (steady_epoch);
    over 100 steps and a short last one, on links with a cost, it matches simulating every step."""
    from pffbench.perfmodel.predict import steady_epoch, training_seconds
    costs = backprop_costs(fb0=0.001, fb1=0.0001, adam=0.002, library=0.0002, tail=0.0001)
    cluster = links.Cluster(2, 2, 1, links.Link("l", 2e-5, 1e9), links.Link("l", 2e-5, 1e9), FREE,
                            links.Link("g", 4e-5, 5e8))
    settings = Settings(num_train=100 * 64 + 32, epochs=1)
    whole = training_seconds(simulate(variant, costs, cluster, 2, settings, epochs=1))
    assert training_seconds(steady_epoch(variant, costs, cluster, 2, settings)) == pytest.approx(whole, rel=1e-9)


@pytest.mark.parametrize("variant", ["ddp", "gpipe", "1f1b"])
def test_a_backprop_breakdown_adds_up_and_names_the_librarys_share(variant):
    costs = backprop_costs(fb0=0.001, fb1=0.0001, adam=0.002, library=0.0002, tail=0.0003)
    pred = predict(variant, costs, links.Cluster(2, 2, 1), 2, Settings(num_train=50 * 64, epochs=2))
    assert sum(pred.breakdown.values()) == pytest.approx(pred.seconds, rel=1e-6)
    per_step = 2 * 4 * 0.0002 if variant != "ddp" else 0.0003  # 2M operations a step, or DDP's tail
    assert pred.breakdown["library"] == pytest.approx(100 * per_step)


def test_predict_runs_the_pipeline_baselines_only_where_microbatches_cover_the_stages(capsys):
    """gpipe needs M >= p and p <= hidden layers: with 4 microbatches and 8 layers, p = 8 is left out."""
    assert cli.main(["predict", "--variant", "gpipe,ddp", "--layers", "64,64,64,64,64,64,64,64",
                     "--ranks", "1,2,4,8", "--num-train", "6400", "--microbatches", "4"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[3:]]  # net, costs line, header
    assert [(r[0], r[1]) for r in rows] == [("gpipe", "1"), ("gpipe", "2"), ("gpipe", "4"),
                                            ("ddp", "1"), ("ddp", "2"), ("ddp", "4"), ("ddp", "8")]


def test_a_link_is_a_table_name_or_measured_figures():
    assert links.link("IB-HDR") is links.TABLE["IB-HDR"]
    lk = links.link("1.1e-4,3.9e9,3.5e-4")
    assert (lk.alpha, lk.beta, lk.overhead) == (1.1e-4, 3.9e9, 3.5e-4)
    assert links.link("2e-6,2e9").overhead == 0.0
    for bad in ("carrier-pigeon", "1e-6", "1e-6,0", "-1,2e9", "1,2,3,4", "nan,1e9"):
        with pytest.raises(ValueError, match="unknown link"):
            links.link(bad)


def test_the_pipelining_message_overhead_applies_between_nodes_too():
    """The per-message overhead is the library's and gloo's CPU work, not the wire's: with one rank per node
    (the network's link, no overhead of its own) a 2-stage step still costs 2 (M + 1) L + 2 M o."""
    m, lib, o = 4, 0.0002, 0.0003
    costs = backprop_costs(microbatches=m, library=lib)
    cluster = links.Cluster(1, 1, 1, FREE, FREE, FREE, links.Link("o", 0.0, math.inf, overhead=o), FREE)
    step = simulate("gpipe", costs, cluster, 2, Settings(num_train=64, epochs=1)).makespan
    assert step == pytest.approx(2 * (m + 1) * lib + 2 * m * o)


def test_planning_refuses_a_pipeline_with_fewer_rows_than_stages():
    from pffbench.perfmodel.study import best_microbatches_seconds
    with pytest.raises(ValueError, match="at least 8 rows"):
        best_microbatches_seconds("gpipe", backprop_costs(fb0=0.001), free_cluster(), 8, Settings(num_train=64), 4)


def test_the_model_help_says_each_default_once():
    from pffbench import model as cli
    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["predict"].format_help().split())
    assert "(default: 64)" in text and "(default: None)" not in text  # the formatter's, where help has none
    assert "default shm) (default" not in text and text.count("(default: 0.98)") == 1


def test_a_run_stopped_at_its_target_calibrates_by_the_steps_it_trained():
    # tune --repeats-stop-at-target: the CIFAR-10 race's 1-rank twins stop at 70 %, their later epochs' timing
    # columns zero and the last one partial; dividing by every configured epoch made their steps look cheaper
    import numpy as np

    from pffbench.perfmodel import calibrate
    from pffbench.probes.profile import BackpropProfile
    from pffbench.store.reader import Run

    profile = BackpropProfile([784, 100], 64, 1, 1e-4, 1e-5, 1e-4, 0.0, 1000)

    def run(compute, stopped_at=None):  # 640 training rows, batch 64: 10 steps an epoch, 0.1 s each
        attrs = {"variant": "backprop", "dims": [784, 100, 10], "num_train": 640, "world_size": 1,
                 "threads_per_rank": [1], "minibatches_per_epoch": 10, "status": "complete",
                 "config": {"batch_size": 64}}
        arrays = {f"timing/{k}": np.zeros((1, len(compute))) for k in ("sync", "data", "eval")}
        arrays["timing/compute"] = np.array([compute])
        steps = range(5, 10 * len(compute) + 1, 5) if stopped_at is None else range(5, stopped_at + 1, 5)
        arrays["evaluations"] = np.array([[s, (s - 1) // 10, 0.01 * s, 0.5] for s in steps])
        if stopped_at is not None:
            attrs["stop_reason"] = "reached the target test accuracy 0.5: --stop-at-target"
            attrs["config"]["stop_at_target"] = True
        return Run("tune-backprop-default-p1-t1-lr0.001-test-seed0", attrs, arrays)

    full = calibrate.from_run(run([1.0, 1.0]), profile)
    stopped = calibrate.from_run(run([1.0, 0.5, 0.0, 0.0], stopped_at=15), profile)
    assert stopped.scale == pytest.approx(full.scale)
    assert calibrate.epochs_trained(run([1.0, 0.5, 0.0, 0.0], stopped_at=15)) == 1.5

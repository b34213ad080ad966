"""The race table (analysis/race.py) from stored runs, and one figure style for every series count
(analysis/style.py, issue 23 point 3)."""
import itertools
import json
import math

import matplotlib
import numpy as np

from pffbench import plot, report
from pffbench.analysis import race
from pffbench.analysis.style import KIND_COLORS, Styles
from pffbench.store.reader import Run
from pffbench.store.writer import append_run

matplotlib.use("Agg")


def _run(name, variant, lr, seed, curve, validation=0, ranks=1, objective=None, busy=False):
    """A tune run: evaluations every 100 steps of batch 64, one second per 100 steps."""
    rows = np.array([[100.0 * (i + 1), 0.0, float(i + 1), a] for i, a in enumerate(curve)])
    config = {"variant": variant, "objective": objective, "lr": lr, "seed": seed, "validation": validation,
              "batch_size": 64, "dataset": "mnist", "layers": [784, 544], "epochs": 1}
    attrs = {"config": config, "world_size": ranks, "threads_per_rank": [1] * ranks, "minibatches_per_epoch": 938,
             "final_test_accuracy": curve[-1], "status": "complete", "variant": variant,
             "target_accuracy": 0.98, "host_cores": 2, "load_avg_start": [9.0 if busy else 0.1]}
    return Run(name, attrs, {"evaluations": rows, "timing/eval": np.full((ranks, 1), 0.5)})


def _contender(variant, objective, ranks, curves_by_lr, test_curves):
    """Trials on validation per lr, then 3 repeats of each lr in ``test_curves``."""
    tag = f"tune-{variant}-{objective or 'default'}-p{ranks}"
    runs = [_run(f"{tag}-lr{lr:g}-validation", variant, lr, 0, c, 10000, ranks, objective)
            for lr, c in curves_by_lr.items()]
    runs += [_run(f"{tag}-lr{lr:g}-test-seed{s}", variant, lr, s, c[s], 0, ranks, objective)
             for lr, c in test_curves.items() for s in range(3)]
    return runs


BACKPROP = _contender("backprop", None, 1, {1e-3: [0.95, 0.975, 0.985], 1e-2: [0.96, 0.97, 0.972]},
                      {1e-3: [[0.95, 0.97, 0.981], [0.96, 0.971, 0.982], [0.94, 0.965, 0.975]]})
LOCAL = _contender("pipeline", "local-softmax", 2, {3e-3: [0.971, 0.981, 0.985], 1e-3: [0.96, 0.975, 0.98]},
                   {3e-3: [[0.97, 0.98, 0.983], [0.965, 0.981, 0.984], [0.972, 0.982, 0.986]]})


def test_the_race_picks_on_validation_and_takes_medians_on_the_test_set():
    contenders = race.contenders(BACKPROP + LOCAL + [_run("sweep-p1-r0", "pipeline", 1e-3, 0, [0.9])])
    assert [c.label for c in contenders] == ["backprop, 1 x 1", "pipeline x local-softmax, 2 x 1"]
    rows = {(r["contender"], r["target"]): r for r in race.race_rows(contenders, [0.97, 0.98])}
    bp97, bp98 = rows["backprop, 1 x 1", 0.97], rows["backprop, 1 x 1", 0.98]
    # 2 s for both learning rates: the tie goes to the higher final accuracy
    assert bp97["lr"] == 1e-3 and bp97["picked_by"] == "shortest time to target"
    assert bp97["seconds_each"] == [2.0, 2.0, 3.0] and bp97["seconds"] == 2.0 and bp97["reached"] == 3
    assert bp98["reached"] == 2 and math.isnan(bp98["seconds"])  # one repeat stayed below: no median
    local97 = rows["pipeline x local-softmax, 2 x 1", 0.97]
    assert local97["lr"] == 3e-3 and local97["seconds"] == 1.0 and local97["samples"] == 6400
    assert local97["speedup"] == 2.0 and bp97["speedup"] == 1.0
    local98 = rows["pipeline x local-softmax, 2 x 1", 0.98]
    assert local98["seconds"] == 2.0 and local98["reached"] == 3 and local98["accuracy"] == 0.984
    assert math.isnan(local98["speedup"])  # no rival has a median time: nothing to be faster than
    table = race.race_table(race.race_rows(contenders, [0.97, 0.98]))
    assert table.count("\n") == 1 + 4 and "| 97 | pipeline x local-softmax, 2 x 1 | 0.003 | 1.00 | 3/3 |" in table


def test_the_speedup_is_over_the_fastest_rival_and_a_no_reach_pick_says_so():
    fast = _contender("dp-backprop", None, 2, {1e-3: [0.975, 0.98]}, {1e-3: [[0.975, 0.98]] * 3})
    slow = _contender("gpipe", None, 2, {1e-3: [0.9, 0.96]}, {1e-3: [[0.9, 0.97]] * 3})
    rows = race.race_rows(race.contenders(fast + slow + LOCAL), [0.97])
    speed = {r["contender"]: r["speedup"] for r in rows}
    assert speed == {"dp-backprop, 2 x 1": 1.0, "gpipe, 2 x 1": 0.5, "pipeline x local-softmax, 2 x 1": 1.0}
    gpipe, = (r for r in rows if r["variant"] == "gpipe")
    assert gpipe["picked_by"].startswith("no trial reached")


def test_report_race_reads_the_race_from_a_results_file(tmp_path, capsys):
    path = str(tmp_path / "race.h5")
    for run in BACKPROP + LOCAL:
        append_run(path, run.arrays, {k: v for k, v in run.attrs.items() if k != "status"}, name=run.name)
    assert report.main([path, "--race", "--target", "0.97", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["contender"], r["lr"]) for r in rows] == [("backprop, 1 x 1", 1e-3),
                                                          ("pipeline x local-softmax, 2 x 1", 3e-3)]
    assert rows[0]["seconds"] == 2.0 and rows[1]["seconds"] == 1.0 and rows[1]["speedup"] == 2.0
    assert report.main([path, "--race"]) == 0  # without --target: the runs' own target, 0.98
    assert "| 98 | pipeline x local-softmax, 2 x 1 | 0.003 | 2.00 | 3/3 |" in capsys.readouterr().out
    drawn, _ = plot.figures(BACKPROP + LOCAL, targets=[0.97])
    assert list(drawn) == ["race"]  # the trials crowd no other figure


def test_the_race_figure_draws_a_contender_that_never_reached_the_top_target_at_its_lower_pick():
    # cwcomp in the CIFAR-10 race: its most accurate trial (the top target's pick) was never repeated;
    # the pick for the lower target was, and its curve belongs in the figure
    short = _contender("pipeline", "cwcomp", 2, {1e-3: [0.971, 0.972, 0.973], 1e-2: [0.9, 0.95, 0.975]},
                       {1e-3: [[0.97, 0.972, 0.974]] * 3})
    fig = plot.race_figure(BACKPROP + LOCAL + short, targets=[0.97, 0.98])
    labels = [text for ax in fig.axes for text in ax.get_legend_handles_labels()[1]]
    assert "pipeline x cwcomp, 2 x 1, lr 0.001" in labels
    assert "mnist, [784, 544]" in fig._suptitle.get_text()


def test_a_figure_title_names_a_conv_net_by_its_blocks_and_an_image_folder_by_its_folder():
    run = _run("tune-pipeline-cwcomp-p2-lr0.001-validation", "pipeline", 1e-3, 0, [0.5], 5000, 2, "cwcomp")
    run.config.update(dataset="imagefolder", data_dir="/data/cifar10-jpeg/", conv=[20, 80], layers=[])
    run.attrs.update(hostname="vm", cpu_model=b"Intel(R) Xeon(R) Processor",
                     dims=[3072, 5120, 5120])  # flattened block outputs: not what a reader knows the net by
    assert plot._workload(run, rival=False) == "imagefolder cifar10-jpeg, --conv 20,80"
    assert plot._machine([run, _run("other", "backprop", 1e-3, 0, [0.5])]) == "?, vm (Intel(R) Xeon(R) Processor)"


def test_every_series_of_a_figure_looks_different_whatever_their_count():
    kinds = [("pipeline", "ff"), ("pipeline", "local-softmax"), ("pipeline", "scff"), ("backprop", None),
             ("dp-backprop", None), ("ddp", None), ("gpipe", None), ("1f1b", None), ("all-layers", None),
             ("federated", None), ("single-layer", None), ("perf-opt", None), ("new-variant", None)]
    for count in (2, 10, 13, 19, 30, 60):
        styles = Styles()
        series = list(itertools.islice(itertools.cycle(itertools.product(kinds, (1, 2, 4))), count))
        looks = [styles.of(variant, p, objective) for (variant, objective), p in series]
        keys = {(s["color"], s["marker"], str(s["linestyle"]), s["linewidth"]) for s in looks}
        assert len(keys) == count
        # one kind, one colour; different kinds, different colours
        by_kind = {}
        for ((variant, objective), _), look in zip(series, looks):
            by_kind.setdefault((variant, objective), set()).add(look["color"])
        assert all(len(colors) == 1 for colors in by_kind.values())
        colors = [next(iter(c)) for c in by_kind.values()]
        assert len(set(colors)) == len(colors)
    assert Styles().of("pipeline", 2, "local-softmax")["color"] == KIND_COLORS["pipeline x local-softmax"]
    assert Styles().of("gpipe", 1)["linestyle"] == "--"  # backprop dashed
    assert Styles().of("pipeline", 1, busy=True)["markerfacecolor"] == "white"  # a busy host: hollow


def test_the_model_predicts_each_contenders_time_to_target_from_its_measured_samples():
    from pffbench.perfmodel import links
    from pffbench.perfmodel.race import predict_race
    local = _contender("pipeline", "local-softmax", 2, {3e-3: [0.971, 0.981]}, {3e-3: [[0.97, 0.98]] * 3})
    rival = _contender("dp-backprop", None, 2, {1e-3: [0.975, 0.98]}, {1e-3: [[0.96, 0.98]] * 3})
    for run in local + rival:  # a small net: [20, 16, 16], and the baseline's head
        run.attrs.update(dims=[20, 16, 16] + ([10] if run.config["variant"] == "dp-backprop" else []),
                         num_train=6000 if run.config["validation"] else 16000)
        run.config.update(validation=run.config["validation"] and 10000, microbatches=4)
    cluster = links.Cluster(1, 1, 1, inter=links.link("10GbE"))
    rows, notes = predict_race(local + rival, 0.98, [1, 2, 4, 64], cluster)
    got = {(r["variant"], r["p"]): r for r in rows}
    assert sorted(got) == [("dp-backprop", 1), ("dp-backprop", 2), ("dp-backprop", 4), ("dp-backprop", 64),
                           ("pipeline", 1), ("pipeline", 2)]  # a stage per rank: 2 layers, 2 ranks at most
    assert any("pipeline x local-softmax: not on p = 4, 64" in n and "2 layers" in n for n in notes)
    for row in rows:  # samples measured (step 200 x 64 rows), epochs of 16000 rows, the model's epoch seconds
        assert row["samples"] == 12800 and row["seconds"] == row["epoch_seconds"] * 12800 / 16000
        assert row["costs"] == "microbenchmarks"  # no 1-rank run in the race to calibrate from
    assert got["pipeline", 2]["measured"] == 2.0 and np.isnan(got["pipeline", 1]["measured"])


def test_the_model_times_each_rules_own_step_and_message():
    from pffbench.perfmodel import calibrate
    costs = {o: calibrate.measured("pipeline", [24, 16, 16], 8, 1, objective=o) for o in ("ff", "local-softmax", "scff")}
    assert {o: (c.kind, c.message_rows) for o, c in costs.items()} == {
        "ff": ("ff", 2), "local-softmax": ("perf-opt", 1), "scff": ("scff", 2)}  # rows an example sends on
    assert calibrate.measured("perf-opt", [24, 16], 8, 1).kind == "perf-opt"  # the variant's own rule
    assert all(len(c.step) == 2 and min(c.step) > 0 for c in costs.values())


def test_model_predictions_are_the_same_from_run_to_run_and_say_so(capsys):
    """Issue 23 point 1: predict gave gpipe p=1 2312, 963, 974 s in three runs.  The microbenchmarks are
    kept per machine, so the second run predicts exactly what the first did, and says where they came from."""
    from pffbench import model
    argv = ["predict", "--variant", "pipeline,dp-backprop", "--layers", "32,32", "--ranks", "1,2", "--num-train",
            "640"]
    outs = []
    for _ in range(2):
        assert model.main(argv) == 0
        outs.append(capsys.readouterr().out)
    first, second = (o.splitlines() for o in outs)
    assert first[2:] == second[2:]  # the same figures
    assert "0 of 2 from the cache" in first[1] and "2 of 2 from the cache" in second[1]
    assert model.main(argv + ["--remeasure"]) == 0  # measured again, and kept in place of the cached figures
    assert "0 of 2 from the cache" in capsys.readouterr().out.splitlines()[1]


def test_every_model_flag_says_what_it_does_and_its_default():
    from pffbench import model
    parser = model.build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict)).choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"model {name} {action.option_strings[0]} has no help"
        if name != "links":
            assert "(default: " in " ".join(sub.format_help().split()), name


def test_one_chapter_all_layers_says_why_it_cannot_speed_up(capsys):
    from pffbench import model
    assert model.main(["predict", "--variant", "all-layers", "--layers", "32,32", "--ranks", "1,2",
                       "--num-train", "640"]) == 0
    assert "note: all-layers trains 1 chapter(s): its wavefront needs chapters >= p" in capsys.readouterr().out


def test_a_contender_run_again_counts_each_seed_once_and_a_failed_repeat_reaches_nothing():
    again = _contender("pipeline", "local-softmax", 2, {3e-3: [0.971, 0.981]},
                       {3e-3: [[0.9, 0.9]] * 3})  # the first attempt, cut off and run again below
    failed = _run("tune-pipeline-local-softmax-p2-lr0.003-test-seed2", "pipeline", 3e-3, 2, [0.97, 0.98], 0, 2,
                  "local-softmax")
    failed.attrs["status"] = "failed"
    contender, = race.contenders(again + LOCAL + [failed])
    assert [run.config["seed"] for run in contender.repeats[3e-3]] == [0, 1, 2]  # the newest of each seed
    row, = race.race_rows([contender], [0.97])
    assert row["reached"] == 2 and row["repeats"] == 3 and math.isnan(row["seconds"])  # seed 2 failed
    row, = race.race_rows([contender], [0.97], planned=4)  # tune ran 4; one left no record at all
    assert row["repeats"] == 4 and row["reached"] == 2
    other_net = _contender("pipeline", "local-softmax", 2, {3e-3: [0.99]}, {3e-3: [[0.99]] * 3})
    for run in other_net:
        run.config["layers"] = [784, 100]
    assert len(race.contenders(LOCAL + other_net)) == 2  # two workloads are two races


def test_an_interrupted_repeat_is_not_yet_measured_rather_than_a_repeat_that_reached_nothing():
    # the CIFAR-10 race: a session's end cut cwcomp's first test repeat (recorded "interrupted"); the table
    # said it reached the target 0 times out of 1 until tune ran the seed again
    cut = _run("tune-pipeline-local-softmax-p2-lr0.003-test-seed3", "pipeline", 3e-3, 3, [0.9], 0, 2,
               "local-softmax")
    cut.attrs["status"] = "interrupted"
    contender, = race.contenders(LOCAL + [cut])
    assert [run.config["seed"] for run in contender.repeats[3e-3]] == [0, 1, 2]
    row, = race.race_rows([contender], [0.97])
    assert row["reached"] == 3 and row["repeats"] == 3
    alone, = race.contenders([r for r in LOCAL if "validation" in r.name] + [cut])
    assert not alone.repeats  # its only repeat was cut: nothing measured yet


def test_a_contender_whose_repeats_stopped_at_the_target_has_no_final_accuracy_and_says_so():
    # tune --repeats-stop-at-target (the p = 1 twins of the CIFAR-10 race): the accuracy at a repeat's stop
    # is not its final accuracy, so the table gives none rather than the target's neighbourhood
    runs = [r for r in LOCAL if "validation" in r.name]
    for seed in range(3):
        stopped = _run(f"tune-pipeline-local-softmax-p1-lr0.003-test-seed{seed}", "pipeline", 3e-3, seed,
                       [0.972, 0.981], 0, 1, "local-softmax")
        stopped.attrs["stop_reason"] = "reached the target test accuracy 0.98: --stop-at-target"
        stopped.config.update(stop_at_target=True, target_accuracy=0.98)
        runs.append(stopped)
    twin, contender = race.contenders(runs)  # the p = 2 trials, the p = 1 repeats sharing them
    row, = race.race_rows([contender], [0.98])
    assert contender.trials_of == twin.label and row["seconds"] == 2.0 and row["reached"] == 3
    assert row["stopped"] == 3 and row["stopped_at"] == 0.98 and math.isnan(row["accuracy"])
    cells = [cell.strip() for cell in race.race_table([row]).splitlines()[-1].split("|")]
    assert cells[2] == "pipeline x local-softmax, 1 x 1 (repeats stopped at 98 %)" and cells[8] == "-"
    full, = race.race_rows(race.contenders(LOCAL), [0.98])
    assert full["stopped"] == 0 and full["accuracy"] == 0.984
    # a repeat that failed also records a stop reason (its own): it did not stop at a target
    failed = _run("tune-pipeline-local-softmax-p2-lr0.003-test-seed2", "pipeline", 3e-3, 2, [0.97], 0, 2,
                  "local-softmax")
    failed.attrs.update(status="failed", stop_reason="peer timeout")
    row, = race.race_rows([race.contenders(LOCAL + [failed])[0]], [0.98])
    assert row["stopped"] == 0 and row["reached"] == 2
    assert " (repeats stopped" not in race.race_table([row])

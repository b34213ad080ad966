"""Time to a target accuracy (pffbench/target.py) in one process: the clock,
the table rebuilt from per-epoch records, the report's columns and the plot."""
import math
import time

import numpy as np
import pytest

from pffbench import report, results
from pffbench.core.types import TrainResult
from pffbench.instrument import target
from pffbench.instrument.timer import EpochTimer
from pffbench.run import final_accuracy
from pffbench.store.writer import append_run
from pffbench.analysis import analysis

pytestmark = pytest.mark.timeout(60)


def test_the_training_clock_runs_from_the_first_epoch_and_skips_evaluation():
    timer = EpochTimer(3)
    timer.start_epoch(0)
    time.sleep(0.02)
    with timer("eval"):
        time.sleep(0.05)
    timer.end_epoch()
    timer.start_epoch(1)
    time.sleep(0.02)
    so_far = timer.training_so_far()
    assert 0.04 <= so_far < 0.06 + 0.04  # two 20 ms sleeps; the 50 ms evaluation is not training
    assert timer.spent("eval") == 0.0


def test_the_first_evaluation_at_the_target_is_the_time_to_target_and_survives_a_checkpoint():
    clock = target.TargetClock(0.9, stop=True)
    clock.record(10, 0, 1.5, 0.85)
    assert not clock.reached and clock.stopped_at is None
    clock.record(20, 0, 3.0, 0.91)
    clock.record(30, 1, 4.5, 0.95)  # later, higher: the first one counts
    attrs = clock.attrs()
    assert attrs == {"target_accuracy": 0.9, "time_to_target": 3.0, "target_reached_epoch": 1,
                     "target_reached_step": 20}
    assert "after 20 steps (epoch 1), 3.00 s of training: --stop-at-target" in clock.stopped_at
    again = target.TargetClock(0.9)
    again.restore(clock.state())
    assert again.attrs() == attrs and again.table().shape == (3, 4)


def test_not_reached_is_nan_and_no_target_records_nothing():
    clock = target.TargetClock(0.99)
    clock.record(10, 0, 1.0, 0.5)
    attrs = clock.attrs()
    assert math.isnan(attrs["time_to_target"]) and attrs["target_reached_epoch"] == -1
    assert target.TargetClock(None).attrs() == {}


def _epoch_run(accuracy, wall, evals):
    """A run recorded per epoch (no evaluations table): 2 ranks, len(accuracy) epochs."""
    return {"test_accuracy": np.array(accuracy, dtype=float), "timing/wall": np.array(wall, dtype=float),
            "timing/eval": np.array(evals, dtype=float)}


def test_epoch_granular_runs_count_the_slowest_rank_up_to_the_evaluated_epoch():
    arrays = _epoch_run([np.nan, 0.92, 0.97], wall=[[2.0, 2.0, 2.0], [1.0, 4.0, 1.0]],
                        evals=[[0.0, 0.5, 0.5], [0.0, 0.5, 0.0]])
    table = target.evaluations_of(arrays, 10)
    # rank 0: 2, 3.5, 5; rank 1: 1, 4.5, 5.5 (cumulative, evaluation excluded): slowest per epoch
    np.testing.assert_allclose(table, [[20, 1, 4.5, 0.92], [30, 2, 5.5, 0.97]])
    assert target.time_to_accuracy(arrays, 10, 0.95) == 5.5
    assert target.time_to_accuracy(arrays, 10, 0.9) == 4.5
    assert math.isnan(target.time_to_accuracy(arrays, 10, 0.98))
    recorded = {**arrays, "evaluations": np.array([[5, 0, 0.7, 0.96]])}
    assert target.time_to_accuracy(recorded, 10, 0.95) == 0.7  # the step-wise record wins


def test_a_run_stopped_at_its_target_reports_its_last_measured_accuracy():
    result = TrainResult(timing=np.zeros((1, 3, 8)), loss=np.zeros((1, 3)),
                         test_accuracy=np.array([0.5, 0.96, np.nan]), linears=[], dims=[], blocks=[])
    assert final_accuracy(result) == 0.96


def _append(path, name, accuracy, wall, variant="backprop", world_size=1):
    arrays = {**{f"timing/{c}": np.zeros((1, len(wall))) for c in ("compute", "data", "send_wait", "recv_wait",
                                                                    "sync", "eval", "idle")},
              "timing/wall": np.array([wall], dtype=float), "test_accuracy": np.array(accuracy, dtype=float),
              "loss": np.zeros((1, len(wall)))}
    attrs = {"variant": variant, "dataset": "mnist", "world_size": world_size, "threads_per_rank": [1],
             "config": {"variant": variant, "layers": [8], "dataset": "mnist", "epochs": len(wall)},
             "minibatches_per_epoch": 10,
             "final_test_accuracy": float(accuracy[-1]), "target_accuracy": 0.95}
    append_run(str(path), arrays, attrs, name=name)


def _without_notes(csv_text: str) -> list[str]:
    """The csv lines without the last column: the notes (busy host, pooled runs) come after the targets."""
    lines = csv_text.strip().splitlines()
    assert lines[0].endswith(",notes"), lines[0]
    return [line.rsplit(",", 1)[0] for line in lines]


def test_report_gives_the_median_time_to_target_over_the_repetitions_that_reached_it(tmp_path, capsys):
    path = tmp_path / "r.h5"
    _append(path, "bp-r0", [0.9, 0.96], [1.0, 1.0])   # reaches 95 % after 2 s
    _append(path, "bp-r1", [0.96, 0.97], [3.0, 1.0])  # after 3 s
    _append(path, "bp-r2", [0.9, 0.94], [1.0, 1.0])   # never
    assert report.main([str(path), "--format", "csv"]) == 0  # the runs' own target: 0.95
    header, row = _without_notes(capsys.readouterr().out)
    assert header.endswith("to 95% s,reached 95%") and row.endswith(",2.5,2/3")
    assert report.main([str(path), "--target", "0.97", "--target", "0.99", "--format", "csv"]) == 0
    header, row = _without_notes(capsys.readouterr().out)
    assert header.endswith("to 97% s,reached 97%,to 99% s,reached 99%") and row.endswith(",4.0,1/3,,0/3")


def test_the_accuracy_plot_marks_the_targets(tmp_path):
    from pffbench import plot
    path = tmp_path / "r.h5"
    _append(path, "bp-r0", [0.9, 0.96], [1.0, 1.0])
    runs = results.read_runs(str(path))
    fig = plot.accuracy_figure(runs, targets=[0.97])
    ax = fig.axes[0]
    assert sorted(line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == ":") == [95.0, 97.0]
    stars = [line for line in ax.lines if line.get_marker() == "*"]
    assert len(stars) == 1 and stars[0].get_xdata()[0] == 2.0  # reached 95 % (not 97 %) after 2 s
    assert analysis.recorded_targets(runs) == [0.95]


def test_report_gives_every_variant_its_speedup_over_single_process_backprop(tmp_path, capsys):
    path = tmp_path / "r.h5"
    _append(path, "bp-r0", [0.9, 0.96], [2.0, 2.0])                                 # 4 s
    _append(path, "gp-r0", [0.9, 0.96], [4.0, 4.0], variant="gpipe", world_size=2)  # 8 s
    _append(path, "ot-r0", [0.9, 0.96, 0.97], [1.0, 1.0, 1.0], variant="gpipe")          # other epochs: no reference
    assert report.main([str(path), "--versus", "backprop", "--format", "csv"]) == 0
    lines = _without_notes(capsys.readouterr().out)
    assert lines[0].endswith("accuracy %,vs backprop,to 95% s,reached 95%")
    vs = {line.split(",")[0]: line.split(",")[13] for line in lines[1:]}
    assert vs == {"bp": "1.0", "gp": "0.5", "ot": ""}

"""One ending for every family (issue 21): schedules/ending.py closes rank 0's result, so run.py only records.

The resumed run's NaN timings (PFF's per-chapter ones included), the time to --target-accuracy of epoch-granular
schedules and the collapse check were patched onto the result by run.run, the last one by variant name; the backprop
loop built its own TrainResult and checkpoint state.  Run on one rank (MPI.COMM_SELF), without mpiexec."""
import ast
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from mpi4py import MPI

from pffbench.core.config import Config
from pffbench.instrument.timer import COLUMNS, EpochTimer
from pffbench.schedules import ending

ROOT = Path(__file__).resolve().parents[2]


def _timer(epochs: int) -> EpochTimer:
    timer = EpochTimer(epochs)
    for epoch in range(epochs):
        timer.start_epoch(epoch)
        with timer("compute"):
            pass
        timer.end_epoch()
    return timer


def test_a_resumed_run_records_only_its_own_epochs_timings_pff_chapters_included():
    config = dataclasses.replace(Config(), epochs=4)
    chapters = {"timing_chapter/compute": np.ones((1, 4))}
    result = ending.finish(config, MPI.COMM_SELF, _timer(4), 100, 2, loss=np.zeros((1, 4)),
                           test_accuracy=np.full(4, np.nan), linears=[], dims=[8, 4], blocks=[range(1)],
                           arrays=chapters, attrs={"epochs_per_chapter": 1})
    assert result.attrs["resumed_from_epoch"] == 2
    assert np.isnan(result.timing[:, :2]).all() and np.isfinite(result.timing[:, 2:]).all()
    np.testing.assert_array_equal(result.arrays["timing_chapter/compute"], [[np.nan, np.nan, 1, 1]])


def test_epoch_granular_schedules_get_the_time_to_target_from_the_ending():
    config = dataclasses.replace(Config(), epochs=3, batch_size=10, target_accuracy=0.9)
    result = ending.finish(config, MPI.COMM_SELF, _timer(3), 100, loss=np.zeros((1, 3)),
                           test_accuracy=np.array([0.5, 0.95, 0.97]), linears=[], dims=[8, 4], blocks=[range(1)])
    assert result.attrs["target_accuracy"] == 0.9 and result.attrs["target_reached_epoch"] == 2
    assert result.attrs["target_reached_step"] == 20  # 100 rows in minibatches of 10
    wall = result.timing[0, :, COLUMNS.index("wall")] - result.timing[0, :, COLUMNS.index("eval")]
    assert result.attrs["time_to_target"] == wall[:2].sum()
    clocked = ending.finish(config, MPI.COMM_SELF, _timer(3), 100, loss=np.zeros((1, 3)),
                            test_accuracy=np.array([0.5, 0.95, 0.97]), linears=[], dims=[8, 4], blocks=[range(1)],
                            attrs={"target_accuracy": 0.9, "target_reached_step": 15})
    assert clocked.attrs["target_reached_step"] == 15  # a schedule's own TargetClock (backprop) is kept


def test_the_collapse_check_follows_the_threshold_the_schedule_gave_not_the_variant_name(capsys):
    torch.manual_seed(0)
    dataset = SimpleNamespace(x_test=torch.rand(200, 30), y_test=torch.randint(0, 10, (200,)), num_classes=10)
    healthy, faint = torch.nn.Linear(30, 8), torch.nn.Linear(8, 8)
    with torch.no_grad():
        faint.weight.zero_()
        faint.bias.fill_(1e-3)  # alive, but its goodness far under 1 % of the threshold 1

    def result(**health):
        return ending.finish(dataclasses.replace(Config(), epochs=1), MPI.COMM_SELF, _timer(1), 100,
                             loss=np.zeros((2, 1)), test_accuracy=np.array([0.5]), linears=[healthy, faint],
                             dims=[30, 8, 8], blocks=[range(2)], **health)

    goodness = result(check_health=True, health_threshold=1.0)
    ending.check_health(goodness, dataset, 0.03)
    assert goodness.attrs["collapsed_layers"] == [1] and "layer 1 is silent" in capsys.readouterr().err
    for unchecked in (result(check_health=True, health_threshold=None), result()):  # own heads; a baseline
        ending.check_health(unchecked, dataset, 0.03)
        assert "collapsed_layers" not in unchecked.attrs


def _calls(path: Path) -> set[str]:
    return {node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))}


def test_only_the_ending_builds_a_train_result_and_every_family_ends_through_it():
    schedules = ROOT / "pffbench" / "schedules"
    builders = {p.relative_to(schedules).as_posix() for p in schedules.rglob("*.py") if "TrainResult" in _calls(p)}
    assert builders == {"ending.py"}
    epochs = {"finish", "stop", "end_epoch", "evaluates", "checkpoint_state", "restore_state"}
    for family, used in ((["pipeline/schedule.py"], epochs), (["backprop/loop.py"], epochs),
                         (["pff/chapters.py", "pff/boundaries.py"], {"finish", "stop", "report_epochs"})):
        assert used <= set().union(*(_calls(schedules / name) for name in family)), family
    run = (ROOT / "pffbench" / "run.py").read_text()
    assert "perf-opt" not in run and "dead_layers" not in run and "target_attrs" not in run

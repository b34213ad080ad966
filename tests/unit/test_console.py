"""Issue 13, in process: presets shortened with --epochs, the messages of
run/report/plot, the progress lines' pieces, plot's record of its figures."""
import io
import os

import matplotlib.pyplot as plt
import numpy as np
import pytest

from pffbench import data, plot, report
from pffbench.launch.cli import parse_config
from pffbench.core.config import UsageError
from pffbench.instrument import progress
from pffbench.store import writer
from pffbench.analysis import sidecar


def test_a_preset_shortened_with_epochs_keeps_one_epoch_per_chapter():
    config = parse_config(["--preset", "mnist-goodness-random-all-layers", "--epochs", "2"])
    assert (config.epochs, config.splits) == (2, 2)
    config = parse_config(["--preset", "mnist-goodness-random-all-layers", "--epochs", "4", "--splits", "2"])
    assert (config.epochs, config.splits) == (4, 2)  # explicit --splits wins
    assert parse_config(["--preset", "mnist-goodness-random-all-layers"]).splits == 100


@pytest.mark.parametrize("argv,n", [(["-n", "4"], "4"), (["-np", "2"], "2"), (["--epochs", "1", "-n4"], "4")])
def test_run_with_a_rank_count_points_at_mpiexec(argv, n):
    with pytest.raises(UsageError, match=f"mpiexec -n {n} python -m pffbench.run"):
        parse_config(argv)


def test_the_start_line_names_where_bundled_mnist_was_read_from(tmp_path):
    if not all((data.BUNDLED_DIRS["mnist"] / f).is_file() for f in data.IDX_FILES):
        pytest.skip("no bundled MNIST in this install")
    assert data.source_of("mnist", tmp_path).startswith("the bundled copy in ")
    assert data.source_of("synthetic", tmp_path) == "generated"


def test_a_long_epoch_prints_a_plain_line_when_stderr_is_not_a_terminal(monkeypatch):
    out = io.StringIO()
    reporter = progress.Progress(epochs=3, num_train=640, eval_share=0.5, evals=1, stream=out)
    reporter.tty = False
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    reporter.start()
    reporter.minibatch(0, 5, 10)
    assert out.getvalue().startswith("  epoch 1/3: 5/10 minibatches  elapsed ")
    assert reporter.eta() is None  # no epoch done yet: no rate to go by
    reporter(0, np.array([1.0, 2.0]), float("nan"), 0.5)
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("epoch   1/3  loss   3.0000") and "ETA" in line and "?" not in line
    # two epochs left at the rate of the first, plus the final evaluation (half an epoch)
    per_epoch = reporter.elapsed()
    assert 2 * per_epoch <= reporter.eta() <= 2.5 * per_epoch + 1
    assert "stopping at the end of epoch 2/3" in reporter.stop_line("SIGINT", "epoch 2/3")


def test_plural():
    assert (progress.plural(1, "run"), progress.plural(2, "run")) == ("1 run", "2 runs")
    assert progress.plural(2, "minibatch", "minibatches") == "2 minibatches"


def test_a_lock_refused_for_permission_is_called_a_permission_error(tmp_path, monkeypatch):
    def refused(path, timeout):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(writer, "_exclusive_lock", refused)
    problem = writer.unappendable(str(tmp_path / "runs.h5"))
    assert "permission denied" in problem and "flock" not in problem


def _figure():
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    return fig


def test_plot_warns_before_overwriting_another_files_figures_and_removes_its_own_stale_ones(tmp_path, capsys):
    folder = str(tmp_path / "plots")
    first, second = sidecar.sources_of(["a.h5"]), sidecar.sources_of(["b.h5"])
    written = plot.write({"speedup": _figure(), "timeline": _figure()}, folder, "", ("png",), first)
    assert sorted(os.listdir(folder)) == [sidecar.RECORD, "speedup.png", "timeline.png"]  # no PDF by default
    assert all(path.endswith(".png") for path in written)
    capsys.readouterr()
    plot.write({"speedup": _figure()}, folder, "", ("png",), second)
    err = capsys.readouterr().err
    assert f"warning: overwriting {os.path.join(folder, 'speedup.png')} (drawn from {first[0]})" in err
    assert "timeline.png" not in err  # another file's figure that b.h5 did not draw: left alone
    plot.write({"speedup": _figure()}, folder, "", ("png",), first)  # a.h5 again, now without a timeline
    err = capsys.readouterr().err
    assert f"removed {os.path.join(folder, 'timeline.png')}" in err
    assert not os.path.exists(os.path.join(folder, "timeline.png"))


def test_plot_errors_are_one_line_and_skipped_figures_say_why(tmp_path, capsys):
    assert plot.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage" not in err
    assert report.main(["--bogus", "x.h5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage" not in err


def test_report_on_a_file_of_only_interrupted_runs_says_so(tmp_path, capsys):
    out = str(tmp_path / "stopped.h5")
    arrays = {"timing/wall": np.ones((1, 2)), "loss": np.ones((1, 2)), "test_accuracy": np.full(2, np.nan)}
    attrs = {"variant": "pipeline", "dataset": "synthetic", "config": {}, "world_size": 1}
    writer.append_run(out, arrays, attrs, name="cut", status="interrupted")
    assert report.main([out]) == 1
    err = capsys.readouterr().err
    assert "no complete run to tabulate: 1 run not complete (interrupted)" in err and "cut" in err


def test_a_silent_layer_counts_as_collapsed_and_a_healthy_one_does_not():
    import torch
    from pffbench.ff import health
    torch.manual_seed(0)
    x, y = torch.rand(200, 30), torch.randint(0, 10, (200,))
    healthy, dead, faint = torch.nn.Linear(30, 8), torch.nn.Linear(30, 8), torch.nn.Linear(8, 8)
    with torch.no_grad():
        dead.bias.fill_(-100.0)  # every pre-activation below zero: every unit dead
        faint.weight.zero_()
        faint.bias.fill_(1e-3)  # alive, but goodness 1e-6, far under 1 % of the threshold 1
    assert health.dead_layers([healthy], x, y, 10, threshold=1.0) == []
    assert health.dead_layers([dead], x, y, 10) == [0]
    assert health.dead_layers([healthy, faint], x, y, 10, threshold=1.0) == [1]
    assert health.dead_layers([healthy, faint], x, y, 10) == []  # without a threshold only dead units count

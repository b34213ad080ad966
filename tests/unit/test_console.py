"""Issue 13, in process: presets shortened with --epochs, the messages of
run/report/plot, the progress lines' pieces, plot's record of its figures."""
import contextlib
import io
import re
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


def test_the_paper_presets_feed_their_goodness_layers_unit_length_inputs():
    """Issue 25: the Goodness and Softmax presets keep the paper's Adam 0.01 and threshold 0.01 and train on
    unit-length inputs; Performance-Optimized (backprop) and the core's default keep unit RMS."""
    from pffbench.presets import PRESETS
    for name, preset in PRESETS.items():
        config = parse_config(["--preset", name])
        if config.variant in ("perf-opt", "pipeline"):
            assert config.norm == "rms", name
        else:
            assert (config.norm, config.threshold, config.lr) == ("length", 0.01, 0.01), name
    assert parse_config([]).norm == "rms"
    assert parse_config(["--preset", "mnist-goodness-random-all-layers", "--norm", "rms"]).norm == "rms"
    for argv in (["--variant", "perf-opt", "--norm", "length"], ["--variant", "backprop", "--norm", "length"]):
        with pytest.raises(UsageError, match="--norm length applies to goodness-trained FF layers"):
            parse_config(argv)


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
    def refused(path, timeout, remove=False):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(writer, "_exclusive_lock", refused)
    problem = writer.unappendable(str(tmp_path / "runs.h5"))
    assert "permission denied" in problem.lower() and "flock" not in problem


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


# --- issue 23 point 6: what the console says -----------------------------------------------------------------

from types import SimpleNamespace  # noqa: E402

from pffbench import run  # noqa: E402
from pffbench.launch import presets  # noqa: E402
from pffbench.launch import console  # noqa: E402
from pffbench.core.types import TrainResult  # noqa: E402
from pffbench.launch.validate import validate  # noqa: E402
from pffbench.instrument.timer import COLUMNS  # noqa: E402


def _config(*flags):
    return parse_config(["--dataset", "synthetic", "--layers", "16,16", *flags])


@pytest.mark.parametrize("flags,ranks,text", [
    (["--variant", "gpipe"], 2, "layers per rank 0 | 1+head"),
    (["--variant", "1f1b"], 1, "all 2 layers and the head"),
    (["--variant", "ddp"], 2, "all 2 layers and the head on every rank, each minibatch split over the ranks"),
    (["--variant", "pipeline"], 2, "layers per rank 0 | 1"),
    (["--variant", "single-layer"], 2, "layers per rank 0 | 1"),
    (["--variant", "all-layers"], 2, "all 2 layers on every rank, chapters round-robin"),
    (["--variant", "federated"], 1, "all 2 layers"),
    (["--variant", "federated"], 2, "all 2 layers on every rank, each on its own data shard, layers averaged "
                                    "after every chapter"),
])
def test_the_start_line_names_the_partition_the_schedule_uses(flags, ranks, text):
    config = _config(*flags)
    assert console.layers_per_rank(config, ranks, [100, 16, 16]) == text


def test_the_start_lines_blocks_are_the_schedules_own():
    from pffbench.core.partition import balanced_partition, layer_costs
    from pffbench.schedules.backprop.torch_pipeline import stage_layers
    dims = [784, 500, 300, 100]
    for ranks in (1, 2, 3):
        assert console.planned_blocks(_config("--variant", "gpipe"), ranks, dims) == stage_layers(3, dims + [10], ranks)
        assert console.planned_blocks(_config(), ranks, dims) == balanced_partition(layer_costs(dims), ranks)


def _result(blocks, ranks=2):
    timing = np.zeros((ranks, 1, len(COLUMNS)))
    share = dict(compute=2.0, sync=6.0, eval=1.0, idle=1.0)
    for name, seconds in share.items():
        timing[:, 0, COLUMNS.index(name)] = seconds
    timing[:, 0, COLUMNS.index("wall")] = sum(share.values())
    return TrainResult(timing, np.zeros((2, 1)), np.array([0.5]), [], [100, 16, 16, 10], blocks)


@pytest.mark.parametrize("variant,column", [("gpipe", "bubble+p2p"), ("1f1b", "bubble+p2p"), ("ddp", "allreduce"),
                                            ("dp-backprop", "allreduce"), ("pipeline", "sync")])
def test_the_summary_names_the_sync_column_for_what_it_holds_and_keeps_eval_apart(variant, column):
    config = _config("--variant", variant)
    lines = run.summary_lines(config, _result([range(0, 1), range(1, 3)]), 10.0, {})
    header = next(line for line in lines if line.startswith("rank"))
    assert header.split() == ["rank", "layers", "compute", "comm-wait", "data", column, "eval", "idle"]
    assert "sync+eval" not in "\n".join(lines)
    assert lines[-3].split()[1:] == ["0", "20.0%", "0.0%", "0.0%", "60.0%", "10.0%", "10.0%"]
    assert lines[-2].split()[1] == "1+head"
    assert lines[-1].startswith(f"(% of each rank's wall time; {column}: ")


def test_the_summary_gives_the_time_to_the_target():
    config = _config("--variant", "backprop", "--target-accuracy", "0.9", "--stop-at-target", "--eval-every", "1")
    attrs = {"target_accuracy": 0.9, "time_to_target": 12.345, "target_reached_epoch": 3, "target_reached_step": 90,
             "stop_reason": "reached the target"}
    lines = run.summary_lines(config, _result([range(0, 3)], ranks=1), 20.0, attrs)
    assert lines[1] == ("target test accuracy 90.00% reached after 12.3s of training (epoch 3, step 90); "
                        "the run stopped there (--stop-at-target)")
    attrs.update(time_to_target=float("nan"), target_reached_epoch=-1, stop_reason=None)
    assert run.summary_lines(config, _result([range(0, 3)], ranks=1), 20.0, attrs)[1] == \
        "target test accuracy 90.00% not reached"


@pytest.mark.parametrize("flags,ranks,expected", [
    (["--layers", "500"], 2, "2 ranks but only 1 layer: use at most 1 rank or more --layers"),
    (["--layers", "500", "--variant", "gpipe"], 2, "2 ranks but only 1 hidden layer: use at most 1 rank"),
    (["--layers", "500", "--score-layers", "1"], 1, "out of range for 1 layer (0-based)"),
    (["--variant", "all-layers", "--splits", "1", "--epochs", "1"], 2, "only 1 chapter (--splits)"),
    (["--variant", "federated", "--shards", "1"], 2, "only 1 shard (--shards)"),
])
def test_counts_of_one_are_singular(flags, ranks, expected):
    with pytest.raises(UsageError, match=re.escape(expected)):
        validate(parse_config(["--dataset", "synthetic", *flags]), ranks)


@pytest.mark.parametrize("typo,meant", [("paper", "paper-net"),
                                        ("mnist-goodnes-random-all-layer", "mnist-goodness-random-all-layers"),
                                        ("cifar10-perfopt", "cifar10-perf-opt")])
def test_a_mistyped_preset_gets_did_you_mean(typo, meant):
    with pytest.raises(UsageError, match=re.escape(f"unknown --preset {typo!r}: did you mean {meant!r}?")):
        parse_config(["--preset", typo])
    with pytest.raises(UsageError, match="see --list-presets$"):
        parse_config(["--preset", "zzzz"])


def test_list_presets_shows_the_net_epochs_and_a_measured_duration(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--list-presets"])
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    assert "net" in header.split() and "epochs" in header.split() and "measured here" in header
    row = next(line for line in lines if line.startswith("paper-net "))
    assert "[784, 2000 x 4]" in row and " 20 " in row and "4111 s" in row
    row = next(line for line in lines if line.startswith("cifar10-perf-opt "))
    assert "[3072, 2000 x 4]" in row and " 100 " in row
    assert presets.net_text(presets.PRESETS["mnist-perf-opt"]) == "[784, 2000 x 4]"


def test_an_image_folder_says_it_is_reading_before_it_decodes(tmp_path, monkeypatch):
    from PIL import Image
    from pffbench.datasets import images
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / split / name / "0.png")
    said, decode = [], images._decode_images

    def decoding(*args):
        assert said and said[0].startswith(f"reading the image folder {tmp_path}: decoding 4 images in 2 classes")
        return decode(*args)
    monkeypatch.setattr(images, "_decode_images", decoding)
    data.load_dataset("imagefolder", tmp_path, say=said.append)
    assert len(said) == 2 and said[1].startswith("read 4 images of 4x4 RGB in ")


def test_under_validation_the_console_names_the_held_out_rows_not_the_test_set():
    # the accuracies of a --validation run are of the rows held out of the training set: never "test"
    config = _config("--variant", "backprop", "--validation", "1000", "--target-accuracy", "0.9")
    attrs = {"target_accuracy": 0.9, "time_to_target": float("nan"), "target_reached_epoch": -1}
    lines = run.summary_lines(config, _result([range(0, 3)], ranks=1), 20.0, attrs)
    assert lines[0].startswith("validation accuracy ") and lines[1] == "target validation accuracy 90.00% not reached"
    stream = io.StringIO()
    reporter = progress.Progress(2, 100, 0.0, 0, stream=stream, evaluated_on=progress.evaluated_on(config))
    reporter(1, np.zeros(2), 0.5, 1.0)
    reporter.final_epochs(np.zeros((1, 2)), np.array([0.25, 0.5]))
    assert "validation acc  50.00%" in stream.getvalue() and "test acc" not in stream.getvalue()


def test_list_presets_reads_the_full_length_rows_from_results(tmp_path):
    from pffbench.launch import presets
    rows = presets.full_rows()  # results/paper-full-mnist-perf-opt.h5, committed
    assert rows["mnist-perf-opt"].startswith("98.43 %, 9,976 s, 2 ranks")
    assert "mnist-perf-opt" in presets.listing().split("98.43 %")[0].splitlines()[-1]
    (tmp_path / "paper-full-broken.h5").write_text("not HDF5")  # a listing never fails on a file
    assert presets.full_rows(tmp_path) == {}


@pytest.fixture
def clock(monkeypatch):
    """progress's clock, set by hand: clock[0] seconds."""
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    return now


@contextlib.contextmanager
def pff_progress(chapters: int, lag: int = 1):
    """Rank 0's Progress of a PFF run of ``chapters`` epochs in as many chapters, its ranks agreeing ``lag``
    rounds late."""
    reporter = progress.Progress(epochs=chapters, num_train=600, eval_share=0.0, evals=0, chapters=chapters,
                                 stream=io.StringIO()).install()
    try:
        progress.stops_after(lag)
        yield reporter
    finally:
        reporter.uninstall()


def test_a_signal_in_pff_announces_the_rest_of_the_round_and_the_lagged_rounds(clock):
    """PFF ranks agree on a signal ``lag`` rounds of chapters late: a SIGTERM 74 s into round 2 of an
    All-Layers run (230 s a round, lag 1) stopped it 378 s later, not in the 152 s once announced (one
    epoch's time)."""
    with pff_progress(100) as reporter:
        reporter.start()
        clock[0] = 230.0
        progress.chapter_done(0, 1, 50)  # rank 0's first round of chapters (one of its 50)
        clock[0] = 304.0
        line = reporter.stop_line("SIGTERM", "the next round of chapters")
        assert "in about 386s" in line, line  # the rest of round 2 (156 s), then round 3 (230 s)


def test_a_signal_too_late_to_stop_a_pff_run_announces_its_end(clock):
    with pff_progress(10) as reporter:
        reporter.start()
        for done in range(1, 5):  # 5 rounds of 2 chapters; the last boundary with a verdict ends round 4
            clock[0] = 100.0 * done
            progress.chapter_done(2 * done - 2, done, 5)
        clock[0] = 410.0  # in round 5, the last: no boundary is left to stop at, the run finishes
        assert reporter.until_stop() == pytest.approx(reporter.eta())


def test_a_resumed_pff_run_announces_a_stop_at_the_pace_of_the_rounds_it_ran(clock):
    """Resumed after round 1 of 17 chapters on 4 ranks (rounds of 4, 4, 4, 4, 1): once 1.2x too slow, its
    start counted in epochs and its progress in rounds."""
    with pff_progress(17) as reporter:
        clock[0] = 1000.0
        progress.resumed(4)
        reporter.start(4 / 17)
        clock[0] = 1050.0
        progress.chapter_done(4, 2, 5)  # round 2 of 5 took 50 s
        assert reporter.until_stop() == pytest.approx(100.0)  # round 3, then round 4 (lag 1)

"""Sweeps, reports and plots on HDF5 files written by real small runs
(mpiexec python -m pffbench.sweep / pffbench.run on the synthetic data set)."""
import csv
import io
import json
import sys

import h5py
import numpy as np
import pytest

from pffbench import plot, results, sweep
from pffbench.launch.cli import parse_config
from pffbench.core.config import UsageError
from pffbench.launch.validate import validate
from pffbench.core.world import launch_mismatch
from pffbench.instrument.timer import CATEGORIES
from pffbench.analysis import analysis

from helpers import ROOT, mpirun

TINY = ["--dataset", "synthetic", "--layers", "32,32", "--epochs", "2", "--batch-size", "50", "--eval-every", "1"]


def run_module(*args, timeout=600):
    import os
    import subprocess
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def results_file(tmp_path_factory):
    """A pipeline sweep (p = 1, 2 and 1 rank x 2 threads, 2 repeats, traced), a
    dp-backprop sweep (p = 1, 2) and one backprop run, all in one file."""
    out = str(tmp_path_factory.mktemp("harness") / "sweep.h5")
    done = run_module("pffbench.sweep", "--ranks", "1,2", "--repeats", "2", "--cores", "2", "--no-warmup",
                      "--label", "ff", "--out", out, "--", *TINY, "--trace")
    assert done.returncode == 0, done.stderr
    assert "ff-p2-t1" in done.stdout  # the closing table
    done = run_module("pffbench.sweep", "--ranks", "1,2", "--repeats", "1", "--no-warmup", "--no-single-best",
                      "--label", "dp", "--out", out, "--", "--variant", "dp-backprop", *TINY, "--trace")
    assert done.returncode == 0, done.stderr
    done = mpirun(1, "-m", "pffbench.run", "--variant", "backprop", *TINY, "--threads", "1", "--out", out,
                  "--name", "bp-p1-t1-r0")
    assert done.returncode == 0, done.stderr
    return out


def test_a_reused_results_file_gets_a_fresh_label(results_file, tmp_path):
    # append_run would store a second "ff-p1-t1-r0" as "ff-p1-t1-r0-2", and a sweep or bench looking its runs
    # up by the names it asked for would read the first invocation's
    assert sweep.unused_label(results_file, "ff") == "ff-2"
    assert sweep.unused_label(results_file, "bp") == "bp-2"
    assert sweep.unused_label(results_file, "f") == "f"  # "ff-p1..." is not a run of label "f"
    assert sweep.unused_label(str(tmp_path / "new.h5"), "ff") == "ff"


def raw_seconds(path):
    """Training seconds per run, straight from h5py: slowest rank's sum of (wall - eval)."""
    with h5py.File(path, "r", locking=False) as f:
        return {name: float((g["timing/wall"][()] - g["timing/eval"][()]).sum(axis=1).max())
                for name, g in f["runs"].items()}


def test_sweep_records_every_repetition(results_file):
    runs = results.read_runs(results_file)
    names = [r.name for r in runs]
    assert names[:6] == ["ff-p1-t1-r0", "ff-p2-t1-r0", "ff-p1-t2-r0", "ff-p1-t1-r1", "ff-p2-t1-r1", "ff-p1-t2-r1"]
    assert names[6:] == ["dp-p1-t1-r0", "dp-p2-t1-r0", "bp-p1-t1-r0"]
    by_name = {r.name: r for r in runs}
    assert by_name["ff-p2-t1-r0"].attrs["threads_per_rank"] == [1, 1]
    assert by_name["ff-p1-t2-r0"].attrs["threads_per_rank"] == [2]
    assert "trace/events" in by_name["ff-p2-t1-r0"].arrays
    assert by_name["dp-p2-t1-r0"].arrays["timing/sync"][:, 0].min() > 0  # the gradient Allreduce


def test_report_matches_a_recomputation_from_raw_arrays(results_file):
    done = run_module("pffbench.report", results_file, "--format", "csv")
    assert done.returncode == 0, done.stderr
    rows = {row["run"]: row for row in csv.DictReader(io.StringIO(done.stdout))}
    assert set(rows) == {"ff-p1-t1", "ff-p2-t1", "ff-p1-t2", "dp-p1-t1", "dp-p2-t1", "bp-p1-t1"}
    seconds = raw_seconds(results_file)
    sample = {stem: [s for name, s in seconds.items() if name.rsplit("-r", 1)[0] == stem] for stem in rows}
    for stem, row in rows.items():
        assert int(row["n"]) == len(sample[stem])
        assert float(row["median s"]) == pytest.approx(np.median(sample[stem]), rel=1e-12)
        assert float(row["min s"]) == pytest.approx(min(sample[stem]), rel=1e-12)
        assert float(row["max s"]) == pytest.approx(max(sample[stem]), rel=1e-12)
    for stem, base in (("ff-p2-t1", "ff-p1-t1"), ("dp-p2-t1", "dp-p1-t1")):
        speedup = np.median(sample[base]) / np.median(sample[stem])
        assert float(rows[stem]["speedup"]) == pytest.approx(speedup, rel=1e-12)
        assert float(rows[stem]["efficiency"]) == pytest.approx(speedup / 2, rel=1e-12)
    best = np.median(sample["ff-p1-t2"]) / np.median(sample["ff-p2-t1"])
    assert float(rows["ff-p2-t1"]["speedup vs 1xall"]) == pytest.approx(best, rel=1e-12)
    assert rows["bp-p1-t1"]["variant"] == "backprop" and float(rows["bp-p1-t1"]["speedup"]) == 1.0
    with h5py.File(results_file, "r", locking=False) as f:
        accuracy = f["runs/bp-p1-t1-r0"].attrs["final_test_accuracy"]
    assert float(rows["bp-p1-t1"]["accuracy %"]) == pytest.approx(100 * accuracy)
    for fmt, marker in (("markdown", "| ff-p2-t1 | pipeline | synthetic | 2 | 1 | 2 |"), ("text", "ff-p1-t2")):
        done = run_module("pffbench.report", results_file, "--format", fmt)
        assert done.returncode == 0 and marker in done.stdout, done.stdout


def test_a_super_linear_point_is_not_cut_off(results_file):
    # a slow 1-rank run (noise) makes p = 2 look 3x faster: the axes must still show it
    runs = results.read_runs(results_file)
    seconds = {run.name: analysis.training_seconds(run) for run in runs}
    scale = 4 * max(seconds["ff-p2-t1-r0"], seconds["ff-p2-t1-r1"]) / min(seconds["ff-p1-t1-r0"], seconds["ff-p1-t1-r1"])
    for run in runs:
        if run.name.startswith("ff-p1-t1"):  # the 1-rank runs now >= 4x the 2-rank ones, whatever was measured
            run.arrays["timing/wall"] = run.arrays["timing/wall"] * scale
    fig = plot.speedup_figure(runs)
    ax_s, ax_e = fig.axes
    speedups = [y for line in (c.lines[0] for c in ax_s.containers) for y in line.get_ydata()]
    efficiencies = [y for line in (c.lines[0] for c in ax_e.containers) for y in line.get_ydata()]
    assert max(speedups) > 3 and max(speedups) < ax_s.get_ylim()[1]
    assert max(efficiencies) > 1.5 and max(efficiencies) < ax_e.get_ylim()[1]
    fig = plot.variants_figure(runs)
    assert max(speedups) < fig.axes[0].get_ylim()[1]


def test_speedup_figure(results_file):
    fig = plot.speedup_figure(results.read_runs(results_file))
    ax_s, ax_e = fig.axes
    assert ax_s.get_xscale() == "log" and ax_s.get_yscale() == "log" and ax_e.get_xscale() == "log"
    assert ax_s.get_xlabel() == "MPI ranks p" and "speedup" in ax_s.get_ylabel()
    assert "efficiency" in ax_e.get_ylabel()
    labels = ax_s.get_legend_handles_labels()[1]
    assert "ideal S = p" in labels
    assert any(label.startswith("pipeline bound") for label in labels)
    assert any(label.startswith("pipeline [100, 32, 32] synthetic") for label in labels)
    assert any(label.startswith("dp-backprop [100, 32, 32, 10] synthetic") for label in labels)
    assert len(ax_s.containers) == 2  # two error-bar series
    text = " ".join(t.get_text() for t in fig.texts)
    assert "base = 1 rank × 1 thread, T1 =" in text and "1 rank × 2 threads" in text
    # the plotted medians are the report's
    rows = {row.case.name: row for row in analysis.table(results.read_runs(results_file))}
    xs, ys = ax_s.containers[0].lines[0].get_data()
    assert list(xs) == [1, 2]
    assert ys[1] == pytest.approx(rows["ff-p2-t1"].speedup)


def test_timeline_figure(results_file):
    run = next(r for r in results.read_runs(results_file) if r.name == "ff-p2-t1-r0")
    events = run.arrays["trace/events"]
    assert events.shape[1] == 4 and set(np.unique(events[:, 0])) == {0, 1}
    assert (events[:, 3] >= events[:, 2]).all()
    fig = plot.timeline_figure(run)
    assert [ax.get_title() for ax in fig.axes] == ["whole run", "fill: start of epoch 1", "drain: end of epoch 1"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["rank 0", "rank 1"]
    assert len(fig.axes[0].collections) >= 3  # compute, waits, ... as broken bars
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    # every receive is timed, a send only when the ring is full (rank 0 a ring's length ahead): whether a send
    # wait shows depends on the run, so the legend must name exactly the categories the run recorded
    recorded = {plot.LABELS[CATEGORIES[int(c)]] for c in np.unique(events[:, 1])}
    assert {"compute", "receive wait", "idle"} <= set(legend) and set(legend) == recorded | {"idle"}


def test_accuracy_and_variant_figures(results_file):
    runs = results.read_runs(results_file)
    fig = plot.accuracy_figure(runs)
    (ax,) = fig.axes
    assert ax.get_xlabel().startswith("training time (s")
    assert len(ax.lines) == 6  # one per case
    x, y = ax.lines[0].get_data()
    assert len(x) == 2 and (np.diff(x) > 0).all() and (0 <= y).all() and (y <= 100).all()
    fig = plot.variants_figure(runs)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any("dp-backprop" in label for label in labels) and any(label.startswith("pipeline") for label in labels)


def test_plot_command_writes_png_and_pdf(results_file, tmp_path):
    done = run_module("pffbench.plot", results_file, "-o", str(tmp_path / "png"))
    assert done.returncode == 0, done.stderr
    assert not list((tmp_path / "png").glob("*.pdf"))  # PNG only unless --pdf
    done = run_module("pffbench.plot", results_file, "-o", str(tmp_path / "plots"), "--pdf")
    assert done.returncode == 0, done.stderr
    for stem in ("speedup", "timeline", "accuracy_time", "variants_speedup"):
        for ext in ("png", "pdf"):
            path = tmp_path / "plots" / f"{stem}.{ext}"
            assert path.stat().st_size > 1000, path


def test_sweep_plan():
    assert sweep.plan([1, 2], 2) == [(1, 1), (2, 1), (1, 2)]
    assert sweep.plan([2, 4], 8) == [(1, 2), (2, 2), (4, 2), (1, 8)]
    assert sweep.plan([1, 2], 2, single_best=False) == [(1, 1), (2, 1)]
    assert sweep.plan([1], 4, threads_per_rank=4) == [(1, 4)]


def test_sweep_rejects_flags_it_owns():
    done = run_module("pffbench.sweep", "--ranks", "1", "--", "--dataset", "synthetic", "--out", "x.h5")
    assert done.returncode == 2 and "--out: set by the sweep" in done.stderr


def test_baseline_validation():
    validate(parse_config(["--variant", "dp-backprop", "--eval-every", "1", "--trace"]), 8)
    with pytest.raises(UsageError, match="backprop runs in one process"):
        validate(parse_config(["--variant", "backprop"]), 2)
    with pytest.raises(UsageError, match="PFF flags"):
        parse_config(["--variant", "backprop", "--neg", "adaptive"])
    assert parse_config(["--variant", "all-layers", "--trace"]).trace  # every variant records a trace


def test_launch_mismatch():
    assert launch_mismatch(2, {}) is None
    assert launch_mismatch(1, {"SLURM_NTASKS": "4"}) is None  # batch step: mpirun starts its own ranks
    assert launch_mismatch(2, {"SLURM_NTASKS": "2", "SLURM_STEP_ID": "0"}) is None
    message = launch_mismatch(1, {"SLURM_NTASKS": "2", "SLURM_STEP_ID": "0"})
    assert "1 rank but the launcher started 2 tasks (SLURM_NTASKS=2)" in message and "\n" not in message
    assert launch_mismatch(2, {"PMI_SIZE": "2", "SLURM_NTASKS": "1", "SLURM_STEP_ID": "0"}) is None  # hydra
    assert "OMPI_COMM_WORLD_SIZE=4" in launch_mismatch(1, {"OMPI_COMM_WORLD_SIZE": "4"})
    assert launch_mismatch(1, {"PMI_SIZE": "2", "PFFBENCH_NO_WORLD_CHECK": "1"}) is None


def test_run_json_config_round_trip(results_file):
    run = results.read_runs(results_file)[0]
    assert run.config["trace"] is True and json.dumps(run.config)


def _timed_run(compute, data, send_wait, recv_wait, sync, eval_, idle) -> results.Run:
    """A 2-rank, 1-epoch run whose timing arrays hold these per-rank seconds."""
    columns = {"compute": compute, "data": data, "send_wait": send_wait, "recv_wait": recv_wait,
               "sync": sync, "eval": eval_, "idle": idle}
    arrays = {f"timing/{name}": np.array(values, dtype=float)[:, None] for name, values in columns.items()}
    arrays["timing/wall"] = sum(arrays[f"timing/{name}"] for name in columns)
    return results.Run("r", {}, arrays)


def test_comm_wait_share_and_busy_imbalance_from_the_timing_arrays():
    # rank 0: 9 s compute + 1 s data, waits 0.5 s; rank 1: 10 s compute, waits 1 s (receive) + 0.5 s (sync)
    run = _timed_run(compute=[9.0, 10.0], data=[1.0, 0.0], send_wait=[0.5, 0.0], recv_wait=[0.0, 1.0],
                     sync=[0.0, 0.5], eval_=[2.0, 2.0], idle=[0.0, 0.0])
    # evaluation is left out of the training time: 10.5 s on rank 0, 11.5 s on rank 1
    assert analysis.training_seconds(run) == pytest.approx(11.5)
    assert analysis.comm_wait_share(run) == pytest.approx(1.5 / 11.5)  # the rank that waited most
    assert analysis.busy_imbalance(run) == pytest.approx(0.0)  # equally busy: every wait was jitter
    run = _timed_run(compute=[8.0, 10.0], data=[0.5, 0.0], send_wait=[1.5, 0.0], recv_wait=[0.0, 0.0],
                     sync=[0.0, 0.0], eval_=[0.0, 0.0], idle=[0.0, 0.0])
    assert analysis.busy_imbalance(run) == pytest.approx(1.5 / 10.0)
    assert analysis.comm_wait_share(run) == pytest.approx(1.5 / 10.0)


def test_bench_balanced_width_solves_the_fitted_line():
    from pffbench.bench import balanced_width
    # stage time 1 ms + 4 us per unit of width: 3.56 ms is reached at width 640, 3.4 ms at 600
    seconds = {w: 1e-3 + 4e-6 * w for w in (200, 400, 800)}
    assert balanced_width(3.56e-3, seconds) == 640
    assert balanced_width(3.4e-3, {200: seconds[200], 800: seconds[800]}, multiple=64) == 576
    assert balanced_width(1e-4, seconds) == 16  # never below one multiple
    with pytest.raises(ValueError):
        balanced_width(3.4e-3, {200: 2e-3, 400: 1e-3})


def test_bench_stage_seconds_times_each_stage():
    from pffbench.bench import stage_seconds
    first, seconds = stage_seconds(256, [16, 1024], batch=32, steps=20, features=40)
    # how much longer the wider stage takes is the CPU's business (and a busy host's): only that each was timed
    assert first > 0 and set(seconds) == {16, 1024} and all(s > 0 for s in seconds.values())


def test_bench_refuses_bad_sizes_and_reports_a_failed_run():
    done = run_module("pffbench.bench", "--second-width", "-5", timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == \
        "pffbench.bench: error: --second-width must be >= 1 (or 0: measure the balanced one)"
    done = run_module("pffbench.bench", "--mpiexec", "/bin/false", "--width", "32", "--second-width", "16",
                      "--batch-size", "8", timeout=300)
    assert done.returncode == 1
    assert done.stderr.startswith("pffbench.bench: error: run warmup (1 rank x 2 threads) failed with exit code 1")
    assert "(command: /bin/false -n 1 ...)" in done.stderr and done.stderr.count("\n") == 1  # not the whole line

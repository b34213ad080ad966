"""Issue 13 end to end, as a user sees a job: the lines it prints while it
trains, how it answers signals, and re-running a finished job.  Real jobs
under mpiexec, each in its own session under a hard timeout (the Job helper
of test_reliability_jobs.py)."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pffbench import results
from pffbench.reliability import faults

from helpers import ROOT, mpirun
from test_reliability_jobs import TINY, Job

pytestmark = pytest.mark.timeout(300)

PROGRESS = re.compile(r"^(epoch|chapter) +\d+/\d+ .*elapsed +([0-9.]+)s", re.M)


@pytest.mark.parametrize("variant", ["pipeline", "all-layers", "single-layer"])
def test_progress_lines_arrive_while_training_with_true_elapsed_times(variant, tmp_path):
    # far more epochs (chapters) than the test lets run: the first progress line must come while training,
    # so a SIGTERM sent when it arrives stops the run early (lines printed only at the end could not)
    epochs = 400
    started = time.monotonic()
    job = Job(2, [*TINY, "--variant", variant, "--layers", "16,16", "--epochs", str(epochs)], tmp_path)
    job.wait_for(lambda: PROGRESS.search(job.stdout))
    job.proc.send_signal(signal.SIGTERM)
    code = job.wait(timeout=120)
    wall = time.monotonic() - started
    out, err = job.stdout, job.stderr
    assert code == 143, err
    first = out.splitlines()[0]
    assert first.startswith(f"pffbench: {variant} on synthetic") and "from generated" in first, out
    assert "2 ranks, layers per rank" in first, out
    assert "SIGTERM received: stopping at the end of" in out, out
    elapsed = [float(m.group(2)) for m in PROGRESS.finditer(out)]
    assert elapsed and max(elapsed) <= wall, (elapsed, wall)  # the launch's wall time bounds any true elapsed time
    run, = results.read_runs(str(job.out))
    assert run.attrs["status"] == "interrupted" and run.attrs["epochs_completed"] < epochs


def test_quiet_prints_nothing_but_the_run_is_recorded(tmp_path):
    done = mpirun(2, "-m", "pffbench.run", *TINY, "--layers", "16,16", "--epochs", "2", "--quiet",
                  "--out", str(tmp_path / "q.h5"))
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr
    assert len(results.read_runs(str(tmp_path / "q.h5"))) == 1


def test_a_second_sigterm_aborts_at_once_in_one_line(tmp_path):
    # epochs of ~25 s (MNIST, 1500 wide, 1 thread; 256 wide took ~3 s on a quiet host: too short), so the first signal's stop is still ahead when the second comes
    job = Job(2, ["--layers", "1500,1500", "--epochs", "50", "--threads", "1"], tmp_path)
    job.wait_for(lambda: PROGRESS.search(job.stdout), timeout=200)
    job.proc.send_signal(signal.SIGTERM)  # mpiexec forwards SIGTERM to every rank, each time
    job.wait_for(lambda: "SIGTERM received" in job.stdout)
    time.sleep(faults.Interrupts.DUPLICATE_S + 0.5)  # not the same warning delivered twice
    assert job.proc.poll() is None, "the run stopped before the second signal: epochs too short for this test"
    job.proc.send_signal(signal.SIGTERM)
    code = job.wait(timeout=60)
    err = job.stderr
    assert code == 143, err
    assert "pffbench: aborted by a second SIGTERM: nothing recorded" in err, err
    assert "Traceback" not in err and "Assertion" not in err and "assert" not in err, err
    assert not job.out.exists() or results.read_runs(str(job.out)) == []


def test_resume_of_a_finished_run_says_so_and_appends_nothing(tmp_path):
    args = [*TINY, "--layers", "16,16", "--epochs", "3", "--checkpoint-dir", str(tmp_path / "ck")]
    first = Job(2, args, tmp_path)
    assert first.wait() == 0, first.stderr
    again = Job(2, [*args, "--resume"], tmp_path)
    assert again.wait() == 0, again.stderr
    assert "already complete" in again.stdout, again.stdout
    run, = results.read_runs(str(first.out))  # one run, not a second copy of it
    assert "collapsed_layers" not in run.attrs  # a healthy run is not flagged


def test_a_resumed_run_records_only_the_timings_of_its_own_epochs(tmp_path):
    args = [*TINY, "--layers", "16,16", "--epochs", "4", "--checkpoint-dir", str(tmp_path / "ck")]
    crashed = Job(2, [*args, "--inject-fault", "1:2"], tmp_path)  # dies at the start of epoch 3: 2 checkpointed
    assert crashed.wait() != 0
    resumed = Job(2, [*args, "--resume"], tmp_path)
    assert resumed.wait() == 0, resumed.stderr
    run, = results.read_runs(str(resumed.out))
    assert run.attrs["resumed_from_epoch"] == 2
    wall = np.asarray(run.arrays["timing/wall"])  # [ranks, epochs]
    assert np.isnan(wall[:, :2]).all() and np.isfinite(wall[:, 2:]).all() and (wall[:, 2:] > 0).all()


@pytest.mark.slow
def test_a_collapsed_layer_is_warned_about_recorded_and_reported(tmp_path):
    # MNIST, 16 units, Adam at 0.01: every unit of layer 0 dies in the first epoch (accuracy 9.80 %)
    out = str(tmp_path / "c.h5")
    done = mpirun(1, "-m", "pffbench.run", "--layers", "16,16", "--lr", "0.01", "--epochs", "1", "--threads", "1",
                  "--out", out, timeout=200)
    assert done.returncode == 0, done.stderr
    assert "warning: training collapsed: layer 0 is silent (every unit dead" in done.stderr, done.stderr
    run, = results.read_runs(out)
    assert list(run.attrs["collapsed_layers"]) == [0]
    # the warning states the net's own test accuracy (the layers before a silent one may still classify)
    stated = re.search(r"test accuracy (\d+\.\d\d)% \(chance 10\.00%\)", done.stderr)
    assert stated, done.stderr
    accuracy = np.asarray(run.arrays["test_accuracy"])
    assert float(stated.group(1)) == pytest.approx(100 * accuracy[np.isfinite(accuracy)][-1], abs=0.006)
    report = subprocess.run([sys.executable, "-m", "pffbench.report", out],
                            capture_output=True, text=True, timeout=120)
    assert f"run {run.name}: training collapsed (layer 0 silent" in report.stderr, report.stderr


def test_a_sweep_answers_ctrl_c_in_one_line_and_records_the_run_it_stopped(tmp_path):
    out, checkpoints = tmp_path / "sweep.h5", tmp_path / "ck"
    command = [sys.executable, "-m", "pffbench.sweep", "--ranks", "2", "--repeats", "1", "--no-warmup",
               "--no-single-best", "--threads-per-rank", "1", "--out", str(out), "--", *TINY[:4], "--layers", "16,16",
               "--epochs", "100000", "--checkpoint-dir", str(checkpoints)]
    with open(tmp_path / "err.txt", "w") as err:
        sweep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT, start_new_session=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 120  # the run's handlers are in place once it has checkpointed
        while not list(checkpoints.glob("epoch-*/COMPLETE")) and time.time() < deadline and sweep.poll() is None:
            time.sleep(0.1)
        sweep.send_signal(signal.SIGINT)  # what Ctrl-C sends the sweep (the run is in a session of its own)
        code = sweep.wait(timeout=120)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    err = (tmp_path / "err.txt").read_text()
    assert code == 130, err
    assert "sweep: SIGINT received: the current run stops at its next epoch or chapter boundary" in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("pffbench.sweep: stopped by SIGINT: run ") and "interrupted by SIGTERM" in last, err
    assert "Traceback" not in err and "mpiexec" not in err, err  # one line, not the launcher's command line
    run, = results.read_runs(str(out))
    assert run.attrs["status"] == "interrupted"


"""The backprop baselines (backprop, dp-backprop, ddp, gpipe, 1f1b) under the
reliability rules of the FF variants, end to end under mpiexec: SIGKILL then
--resume gives the uninterrupted weights, SIGTERM stops at an epoch boundary
and records the run interrupted, a rank that raises or hangs inside a gloo
collective ends the job with one clear line, --stop-at-target ends a run
complete."""
import os
import re
import signal

import pytest

from pffbench import results

from helpers import assert_same_model
from test_reliability_jobs import ENDED_BY_ITS_OWN_PATH_S, TINY, Job, _stamp

pytestmark = pytest.mark.timeout(300)

# synthetic, 2000 rows in batches of 64: 32 steps an epoch
ARGV = [*TINY, "--layers", "32,32", "--epochs", "4", "--seed", "3", "--batch-size", "64"]
VARIANTS = [("backprop", 1), ("dp-backprop", 2), ("ddp", 2), ("gpipe", 2), ("1f1b", 2)]


@pytest.mark.parametrize("variant,n", VARIANTS, ids=[v for v, _ in VARIANTS])
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(variant, n, tmp_path):
    argv = [*ARGV, "--variant", variant]
    for sub in "abc":
        (tmp_path / sub).mkdir()
    whole = Job(n, [*argv, "--model-out", str(tmp_path / "a" / "whole.pt")], tmp_path / "a")
    assert whole.wait() == 0, whole.stderr

    checkpoints = tmp_path / "ck"
    killed = Job(n, [*argv, "--checkpoint-dir", str(checkpoints), "--inject-hang", f"{n - 1}:2"], tmp_path / "b")
    killed.wait_for(lambda: "injected hang" in killed.stderr)  # the last rank is halfway through epoch 3
    os.killpg(killed.proc.pid, signal.SIGKILL)  # the mpiexec process group, as a scheduler would
    killed.wait(timeout=30)
    assert sorted(os.listdir(checkpoints)) == ["epoch-000001", "epoch-000002"]

    resumed = Job(n, [*argv, "--checkpoint-dir", str(checkpoints), "--resume",
                      "--model-out", str(tmp_path / "c" / "resumed.pt")], tmp_path / "c")
    assert resumed.wait() == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "after epoch 2/4" in resumed.stdout
    a = assert_same_model(tmp_path / "a" / "whole.pt", tmp_path / "c" / "resumed.pt")
    assert len(a["layers"]) == 3  # two hidden layers and the softmax head
    run_a, = results.read_runs(str(whole.out))
    run_c, = results.read_runs(str(resumed.out))
    assert run_c.attrs["resumed_from_epoch"] == 2 and run_c.attrs["status"] == "complete"
    assert (run_a.arrays["loss"] == run_c.arrays["loss"]).all()
    assert run_a.arrays["test_accuracy"][-1] == run_c.arrays["test_accuracy"][-1]


@pytest.mark.parametrize("variant", ["dp-backprop", "ddp", "gpipe"])
def test_sigterm_stops_at_an_epoch_boundary_checkpoints_and_records_interrupted(variant, tmp_path):
    checkpoints = tmp_path / "ck"
    job = Job(2, [*TINY, "--layers", "16,16", "--epochs", "100000", "--variant", variant,
                  "--checkpoint-dir", str(checkpoints)], tmp_path)
    job.wait_for(lambda: any(int(ck.parent.name[6:]) >= 2 for ck in checkpoints.glob("epoch-*/COMPLETE")))
    job.proc.send_signal(signal.SIGTERM)  # hydra forwards it to every rank
    code = job.wait(timeout=120)
    err = job.stderr
    assert code == 143, err
    assert "pffbench: stopped: interrupted by SIGTERM after epoch" in err and "Traceback" not in err, err
    run, = results.read_runs(str(job.out))
    done = run.attrs["epochs_completed"]
    assert run.attrs["status"] == "interrupted" and 2 <= done < 100000
    assert (checkpoints / f"epoch-{done:06d}" / "COMPLETE").exists()


@pytest.mark.parametrize("variant", ["ddp", "gpipe"])
def test_an_exception_on_a_rank_ends_the_gloo_job_at_once(variant, tmp_path):
    job = Job(2, [*TINY, "--layers", "16,16", "--epochs", "3", "--variant", variant, "--inject-fault", "1:1"],
              tmp_path)
    code = job.wait(timeout=120)
    err = job.stderr
    assert code != 0, err
    assert "[rank 1] pffbench.reliability.faults.InjectedFault: injected fault on rank 1" in err, err
    assert job.ended - _stamp(err, "injected fault") < ENDED_BY_ITS_OWN_PATH_S
    assert not job.out.exists()


@pytest.mark.parametrize("variant,pattern", [
    ("ddp", r"rank 0: the DDP gradient allreduce failed: .*Timed out .*--peer-timeout 3 s\)"),
    ("gpipe", r"rank 0: a ScheduleGPipe step failed: .*Timed out .*--peer-timeout 3 s\)"),
    ("1f1b", r"rank 0: a Schedule1F1B step failed: .*Timed out .*--peer-timeout 3 s\)"),
])
def test_a_rank_hung_in_a_gloo_collective_ends_the_job_after_peer_timeout(variant, pattern, tmp_path):
    job = Job(2, [*TINY, "--layers", "16,16", "--epochs", "3", "--variant", variant, "--inject-hang", "1:1",
                  "--peer-timeout", "3"], tmp_path)
    code = job.wait(timeout=150)  # gloo without a timeout would wait here until this one, and the test fail
    err = job.stderr
    assert code != 0, err
    assert re.search(pattern, err), err
    elapsed = job.ended - _stamp(err, "injected hang")
    print(f"hang {variant}: job ended {elapsed:.2f} s after the hang (--peer-timeout 3)")
    assert 3 <= elapsed < 3 + ENDED_BY_ITS_OWN_PATH_S  # not before the timeout; then at once


@pytest.mark.parametrize("variant,every", [("gpipe", ["--eval-every-steps", "16"]), ("pipeline", ["--eval-every", "1"])])
def test_stop_at_target_records_a_complete_run_with_its_reason(variant, every, tmp_path):
    job = Job(2, [*ARGV, "--variant", variant, "--epochs", "20", "--target-accuracy", "0.5", *every,
                  "--stop-at-target"], tmp_path)
    assert job.wait() == 0, job.stderr
    run, = results.read_runs(str(job.out))
    assert run.attrs["status"] == "complete" and "--stop-at-target" in run.attrs["stop_reason"]
    assert run.attrs["target_reached_epoch"] < 20 and run.attrs["time_to_target"] > 0
    assert run.attrs["final_test_accuracy"] >= 0.5

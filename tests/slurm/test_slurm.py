"""jobs/*.sbatch on a real single-node Slurm started on localhost (tests/slurm_local.py).

Skipped when Slurm is not installed (`apt-get install -y --no-install-recommends
slurmctld slurmd slurm-client munge`; .ci/run does it) or not run as root.
Jobs are submitted from the repository root with tiny synthetic workloads and
polled with squeue; each test checks the HDF5 file the job wrote.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pffbench import results
from pffbench.analysis import analysis

from slurm_local import LocalSlurm, available

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(available() is not None, reason=str(available()))]

TINY = ["--dataset", "synthetic", "--layers", "16,16", "--epochs", "1", "--batch-size", "100"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    # 4 CPUs claimed (config_overrides) so 4-rank jobs fit on a 2-core machine; MpiDefault=none
    # makes plain srun start n one-rank worlds, which pffbench must refuse
    with LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=4, mpi_default="none") as cluster:
        yield cluster


def job_env(**extra) -> dict:
    return {"PYTHON": sys.executable, "PYTHONPATH": str(ROOT),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}


def submit(slurm, tmp_path, script, *args, sbatch=(), timeout=240, **env) -> tuple[int, str]:
    log = tmp_path / "job.out"
    job = slurm.sbatch("--output", str(log), *sbatch, f"jobs/{script}", *args, cwd=ROOT, env=job_env(**env))
    state = slurm.wait(job, timeout=timeout)  # below the 300 s test timeout, so a stuck job is cancelled
    text = log.read_text() if log.exists() else ""
    assert state == "COMPLETED", f"job {job} ended {state}:\n{text[-3000:]}\n{slurm.logs()}"
    return job, text


def test_single_run_srun_pmi2(slurm, tmp_path):
    out = tmp_path / "single.h5"
    job, _ = submit(slurm, tmp_path, "single_run.sbatch", *TINY, sbatch=("--ntasks=2", "--cpus-per-task=1"),
                    OUT=str(out))
    (run,) = results.read_runs(str(out))
    assert run.attrs["world_size"] == 2
    assert run.attrs["slurm_job_id"] == str(job)
    assert run.arrays["timing/wall"].shape == (2, 1)
    assert run.attrs["threads_per_rank"] == [1, 1]


def test_single_run_mpiexec(slurm, tmp_path):
    out = tmp_path / "single.h5"
    submit(slurm, tmp_path, "single_run.sbatch", *TINY, sbatch=("--ntasks=2", "--cpus-per-task=1"),
           OUT=str(out), LAUNCHER=str(Path(sys.executable).parent / "mpiexec"))
    (run,) = results.read_runs(str(out))
    assert run.attrs["world_size"] == 2


@pytest.mark.parametrize("launcher", ["srun --mpi=pmi2", "mpiexec"])
def test_time_limit_warning_stops_the_run_cleanly(slurm, tmp_path, launcher):
    """What #SBATCH --signal=B:TERM@120 does before the time limit, sent at once
    (scancel --batch --signal): the batch shell hands SIGTERM to the ranks, the
    run stops at an epoch boundary, checkpointed and recorded as interrupted."""
    log, out, checkpoints = tmp_path / "job.out", tmp_path / "signal.h5", tmp_path / "checkpoints"
    if launcher == "mpiexec":
        launcher = str(Path(sys.executable).parent / "mpiexec")
    job = slurm.sbatch("--output", str(log), "--ntasks=2", "--cpus-per-task=1", "jobs/single_run.sbatch",
                       "--dataset", "synthetic", "--layers", "1024,1024", "--batch-size", "10", "--epochs", "100",
                       "--checkpoint-dir", str(checkpoints), cwd=ROOT, env=job_env(OUT=str(out), LAUNCHER=launcher))
    deadline = time.monotonic() + 120
    while "epoch   2/100" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"job {job} did not start training:\n{slurm.logs()}"
        time.sleep(0.2)
    subprocess.run(["scancel", "--batch", "--signal=TERM", str(job)], env=slurm.env, check=True, timeout=10)
    slurm.wait(job, timeout=120)
    text = log.read_text()
    (run,) = results.read_runs(str(out))
    assert run.attrs["status"] == "interrupted", text
    done = run.attrs["epochs_completed"]
    assert 2 <= done < 100 and "pffbench: stopped: interrupted by SIGTERM" in text
    assert "second signal" not in text and (checkpoints / f"epoch-{done:06d}" / "COMPLETE").exists()


def test_scaling_study(slurm, tmp_path):
    out, plots = tmp_path / "scaling.h5", tmp_path / "plots"
    _, log = submit(slurm, tmp_path, "scaling_study.sbatch", *TINY, sbatch=("--ntasks=2", "--cpus-per-task=1"),
                    OUT=str(out), PLOTS=str(plots), REPEATS="1", SWEEP_FLAGS="--no-warmup")
    runs = results.read_runs(str(out))
    cases = sorted((r.attrs["world_size"], analysis.threads_per_rank(r)) for r in runs)
    assert len(cases) == 3 and cases[0] == (1, 1) and cases[2] == (2, 1)
    assert cases[1][0] == 1 and cases[1][1] > 1  # 1 rank x all the node's allocated cores
    assert all(r.attrs["slurm_step_id"] != "" for r in runs)  # each case its own srun step
    assert "| sweep-p2-t1 |" in log  # the report
    assert (plots / "speedup.png").stat().st_size > 0


def test_paper_reproduction(slurm, tmp_path):
    out = tmp_path / "paper.h5"
    presets = "mnist-goodness-random-sequential mnist-goodness-random-all-layers"
    submit(slurm, tmp_path, "paper_reproduction.sbatch", "--dataset", "synthetic", "--layers", "16,16,16,16",
           "--epochs", "4", "--splits", "4", "--batch-size", "200", sbatch=("--ntasks=4", "--cpus-per-task=1"),
           OUT=str(out), PRESETS=presets)
    runs = {r.name: r for r in results.read_runs(str(out))}
    assert set(runs) == set(presets.split())
    assert runs["mnist-goodness-random-sequential"].attrs["world_size"] == 1
    assert runs["mnist-goodness-random-all-layers"].attrs["world_size"] == 4
    assert runs["mnist-goodness-random-all-layers"].config["preset"] == "mnist-goodness-random-all-layers"


def test_plain_srun_without_pmi_is_refused(slurm, tmp_path):
    """MpiDefault=none: plain srun -n 2 starts two one-rank worlds; each must stop with one line."""
    out = tmp_path / "never.h5"
    done = slurm.srun("-n", "2", sys.executable, "-m", "pffbench.run", *TINY, "--out", str(out),
                      env=job_env(), cwd=ROOT, timeout=120)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("pffbench: error:")]
    assert len(lines) == 2, done.stderr
    assert "MPI world has 1 rank but the launcher started 2 tasks (SLURM_NTASKS=2)" in lines[0]
    assert not out.exists()

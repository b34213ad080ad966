"""tools/paper_gpu.sh, the paper's rows on one GPU machine (issue 25), in its CPU dry-run mode: the same
control flow (each variant once on the device, every preset row, the deadline, the report) with 4 epochs
of a small net per row on the CPU, on the synthetic data set."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pffbench import results
from pffbench.launch.presets import PRESETS

from helpers import MPIEXEC, MPIEXEC_FLAGS, ROOT

SCRIPT = ROOT / "tools" / "paper_gpu.sh"
VARIANTS = {"pipeline-p1", "pipeline-p2", "single-layer-p2", "all-layers-p2", "federated-p2", "perf-opt-p2",
            "backprop-p1", "dp-backprop-p2", "ddp-p2", "gpipe-p2", "1f1b-p2"}


def paper_gpu(out: Path, *argv: str, timeout: float):
    if MPIEXEC is None:
        pytest.skip("no mpiexec found")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "MPIEXEC_FLAGS": " ".join(MPIEXEC_FLAGS),
           "PATH": f"{Path(MPIEXEC).parent}:{os.environ['PATH']}"}
    return subprocess.run(["bash", str(SCRIPT), str(out), *argv], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the subprocess's own timeout, not setup.cfg's 300 s, bounds it
def test_the_dry_run_runs_every_variant_once_and_every_row_of_the_paper(tmp_path):
    done = paper_gpu(tmp_path, "--dry-run", "--deadline", "1500", timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    variants = {run.name: run for run in results.read_runs(str(tmp_path / "gpu-variants.h5"))}
    assert set(variants) == VARIANTS
    assert all(run.attrs["status"] == "complete" and run.config["device"] == "cpu" for run in variants.values())
    rows = {run.name: run for run in results.read_runs(str(tmp_path / "paper-gpu.h5"))}
    assert set(rows) == set(PRESETS)  # every row of the paper's tables, and paper-net
    for name, run in rows.items():
        assert run.attrs["status"] == "complete", name
        assert run.config["preset"] == name and run.config["epochs"] == 4 and list(run.config["layers"]) == [32] * 4
    assert "| run |" in done.stdout  # the report's table


@pytest.mark.timeout(900)
def test_at_the_deadline_rows_stop_and_are_recorded_never_lost(tmp_path):
    # the first two rows start at once, later ones only up to 30 s before the deadline; whatever this CPU's
    # speed, each row that started is recorded, complete or stopped at its epoch boundary, and the rows the
    # deadline kept from starting are counted
    done = paper_gpu(tmp_path, "--dry-run", "--skip-variants", "--deadline", "45", "--grace", "300", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (tmp_path / "gpu-variants.h5").exists()
    listed = results.read_runs(str(tmp_path / "paper-gpu.h5"))
    logs = sorted(p.name[len("row-"):-len(".log")] for p in tmp_path.glob("row-*.log"))
    assert len(logs) >= 2 and sorted(run.name for run in listed) == logs  # every row that started is recorded
    assert all(run.attrs["status"] in ("complete", "stopped") for run in listed)
    assert len(logs) == len(PRESETS) or f"{len(PRESETS) - len(logs)} row(s) not started before the deadline" \
        in done.stdout


@pytest.mark.parametrize("argv, needle", [(["--deadline", "0"], "positive integers"),
                                          (["--bogus"], "unknown argument --bogus"), ([], None)])
def test_bad_arguments_get_one_line_and_exit_2(tmp_path, argv, needle):
    command = ["bash", str(SCRIPT)] + ([str(tmp_path), *argv] if argv else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert (needle or "usage: bash tools/paper_gpu.sh") in done.stderr

"""The performance model against real small runs: mpiexec -n p python -m pffbench.run, then
python -m pffbench.model validate (the simulator's hand-derived cases: tests/unit/test_model.py)."""
import os

import pytest

from pffbench import model as cli
from pffbench.perfmodel import validate

from conftest import mpirun


@pytest.mark.slow
def test_the_model_predicts_real_runs_from_a_1_rank_run(tmp_path, mnist_dir):
    """Real runs (MNIST, 1 epoch, 1 thread per rank; the p = 4 runs share
    this machine's cores), p = 1, 2, 4 twice, interleaved so that the host's
    drift hits every p alike; each run predicted from the 1-rank runs'
    calibration.  Tolerances: median |error| < 35 %, every run < 60 %.  On
    this shared 2-vCPU VM identical 1-rank runs differed by up to 2.1x in one
    hour (docs/model.md, validation), so a tighter bound would fail on the
    host alone; the errors the test is for are larger: a model that predicts
    no speedup at p = 2 is +100 % off, one that ignores 4 ranks sharing 2
    cores -50 % on those runs (and shifts the median)."""
    out = str(tmp_path / "runs.h5")
    common = ["-m", "pffbench.run", "--data-dir", mnist_dir, "--layers", "256,256,256,256", "--epochs", "1",
              "--threads", "1", "--out", out]
    for repeat in range(2):
        for p in (1, 2, 4):
            done = mpirun(p, *common, "--name", f"m-p{p}-r{repeat}", timeout=600)
            assert done.returncode == 0, done.stderr
    checks, skipped = validate.check(out, cores_per_node=os.cpu_count())
    assert not skipped and sorted(c.p for c in checks) == [1, 1, 2, 2, 4, 4]
    summary = validate.summary(checks)
    assert summary["median_abs_error"] < 0.35, validate.table(checks)
    assert summary["worst_abs_error"] < 0.60, validate.table(checks)
    assert cli.main(["validate", out]) == 0

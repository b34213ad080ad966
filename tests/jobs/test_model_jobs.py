"""The performance model against real small runs: mpiexec -n p python -m pffbench.run, then
python -m pffbench.model validate (the simulator's hand-derived cases: tests/unit/test_model.py)."""
import os

import pytest

from pffbench import model as cli
from pffbench.perfmodel import validate

from helpers import mpirun


@pytest.mark.slow
def test_the_model_predicts_real_runs_from_a_1_rank_run(tmp_path, mnist_dir):
    """Real runs (MNIST, 1 epoch, 1 thread per rank; the p = 4 runs share
    this machine's cores), p = 1, 2, 4 twice, interleaved so that the host's
    drift hits every p alike; each run predicted from the 1-rank runs'
    calibration.  The host's speed during a run is the hardware's, not the
    model's: on this shared 2-vCPU VM identical 1-rank runs differed by up to
    2.1x in one hour (docs/model.md, validation), and in one CI run the p = 2
    runs took as long as p = 1 (a core busy elsewhere: -37 % against the
    model's whole prediction, -11 % once the run's own measured work set the
    level).  So where each rank has a core, the test compares the schedule-only
    prediction (the work level taken from the run itself): median |error| <
    35 %, every run < 60 %; where ranks share cores (no such level), the whole
    prediction, every run < 60 %.  The errors the test is for are larger: a
    model that predicts no speedup at p = 2 is +100 % off.  The sharing itself
    is checked on hand-derived cases (tests/unit/test_model.py)."""
    import statistics
    out = str(tmp_path / "runs.h5")
    common = ["-m", "pffbench.run", "--data-dir", mnist_dir, "--layers", "256,256,256,256", "--epochs", "1",
              "--threads", "1", "--out", out]
    for repeat in range(2):
        for p in (1, 2, 4):
            done = mpirun(p, *common, "--name", f"m-p{p}-r{repeat}", timeout=600)
            assert done.returncode == 0, done.stderr
    checks, skipped = validate.check(out, cores_per_node=os.cpu_count())
    assert not skipped and sorted(c.p for c in checks) == [1, 1, 2, 2, 4, 4]
    table = validate.table(checks)
    own = [c for c in checks if c.p > 1 and c.schedule_only == c.schedule_only]  # a core per rank
    shared = [c for c in checks if c.p > 1 and c.schedule_only != c.schedule_only]
    assert own, table  # p = 2 has a core per rank on any machine these tests run on
    assert statistics.median(abs(c.schedule_error) for c in own) < 0.35, table
    assert all(abs(c.schedule_error) < 0.60 for c in own) and all(abs(c.error) < 0.60 for c in shared), table
    assert cli.main(["validate", out]) == 0


@pytest.mark.slow
def test_the_model_predicts_the_torch_baselines_from_their_1_rank_runs(tmp_path, mnist_dir):
    """ddp and gpipe (MNIST, [256, 256], 1 epoch, 1 thread per rank) on 1 and 2 ranks; each 2-rank run
    predicted from its variant's 1-rank run (the library's bookkeeping and DDP's tail calibrated from
    it, the per-message overhead of the gloo link measured by linkprobe --gloo), end to end through
    validate.  Tolerance 60 %: on this 2-vCPU VM the model leaves out what gloo's threads take from the
    compute (docs/model.md, validation: gpipe -4 % and -13 %, ddp -23 % and -39 % at p = 2), so the test
    guards the path and gross errors (without the message overhead gpipe on this net came out -64 %;
    a calibration that lost the 1-rank run's level, a schedule that deadlocked), not the model's
    accuracy, which the validation tables measure."""
    out = str(tmp_path / "baselines.h5")
    for variant in ("ddp", "gpipe"):
        for p in (1, 2):
            done = mpirun(p, "-m", "pffbench.run", "--data-dir", mnist_dir, "--variant", variant, "--layers",
                          "256,256", "--epochs", "1", "--lr", "1e-3", "--threads", "1", "--out", out,
                          "--name", f"{variant}-p{p}", timeout=600)
            assert done.returncode == 0, done.stderr
    checks, skipped = validate.check(out, cores_per_node=os.cpu_count())
    assert not skipped and sorted((c.variant, c.p) for c in checks) == [("ddp", 1), ("ddp", 2), ("gpipe", 1),
                                                                        ("gpipe", 2)]
    for c in checks:  # the host's speed taken from the run itself where it has a core a rank (test above)
        error = c.schedule_error if c.schedule_only == c.schedule_only else c.error
        assert abs(error) < 0.60, validate.table(checks)
        if c.variant == "gpipe" and c.p == 2:
            assert c.breakdown["library"] > 0 and c.breakdown["fill/drain, bubble"] > 0, c.breakdown

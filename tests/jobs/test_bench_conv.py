"""`python -m pffbench.bench --conv` (make bench-conv): a conv net's layers timed, split by those times, and the
pipeline at 1 and 2 ranks measured against the bound of that split; on a tiny image folder made here."""
import pytest

from helpers import MPIEXEC, write_image_folder
from test_harness import run_module


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"), classes=10, train=16, test=4)


def test_the_conv_bench_splits_by_measured_costs_and_prints_both_bounds(image_folder):
    if MPIEXEC is None:
        pytest.skip("no mpiexec found")
    done = run_module("pffbench.bench", "--conv", "10,20", "--dataset", "imagefolder", "--data-dir",
                      str(image_folder), "--epochs", "1", "--repeats", "1", "--batch-size", "16",
                      "--mpiexec", MPIEXEC)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "imagefolder 3x8x8, --conv 10,20, local-softmax" in lines[0]
    assert lines[1].startswith("layer step ms (measured here): 0: ") and "2 ranks: layers 0-0 | 1-1" in lines[1]
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["ranks"])
    assert lines[header].split() == ["ranks", "threads", "train", "s", "speedup", "of", "bound", "of", "split",
                                     "comm", "wait", "imbalance", "accuracy"]
    assert [line.split()[0] for line in lines[header + 1:header + 3]] == ["1", "2"]
    assert lines[header + 1].split()[3:6] == ["1.00", "100.0%", "100.0%"]  # 1 rank: its own bound
    assert lines[-1].startswith("of bound: the speedup over p*m/(m+p-1)")


def test_the_conv_bench_refuses_a_missing_folder_in_one_line(tmp_path):
    done = run_module("pffbench.bench", "--conv", "10,20", "--dataset", "imagefolder", "--data-dir",
                      str(tmp_path / "nowhere"), "--epochs", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if ": error: " in line]


def test_the_model_calibrates_on_a_conv_pipeline_run_and_predicts_its_p2_run(image_folder, tmp_path):
    from helpers import mpirun
    from pffbench.perfmodel import calibrate, validate
    from pffbench import results
    out = tmp_path / "conv.h5"
    flags = ["-m", "pffbench.run", "--conv", "10,20", "--objective", "local-softmax", "--dataset", "imagefolder",
             "--data-dir", str(image_folder), "--epochs", "2", "--batch-size", "16", "--threads", "1", "--quiet",
             "--layer-costs", "1,3", "--out", str(out)]
    for ranks in (1, 2):
        done = mpirun(ranks, *flags, "--name", f"conv-p{ranks}", timeout=120)
        assert done.returncode == 0, done.stderr
    one = next(run for run in results.read_runs(str(out)) if run.name == "conv-p1")
    costs = calibrate.from_run(one)
    assert costs.kind == "conv" and len(costs.step) == 2 and all(s > 0 for s in costs.step)
    assert costs.split == [1, 3] and costs.dims == list(one.attrs["dims"])  # the run's split, its messages
    assert costs.weight_bytes[0] == 4 * (3 * 9 * 10 + 2 * 10 + 10 * 4 * 10 + 10)  # conv, GroupNorm, the head
    with pytest.raises(ValueError, match="its own net and batch only"):
        calibrate.retarget(costs, batch=32)
    checks, skipped = validate.check(str(out))
    assert not skipped and sorted(c.p for c in checks) == [1, 2]
    assert all(c.predicted > 0 and c.calibration == "conv-p1" for c in checks)


def test_the_model_calibrates_on_conv_backprop_runs_and_predicts_their_p2_runs(image_folder, tmp_path, capsys):
    # the backprop baselines on a conv net: each linear (block, head) measured, scaled to the 1-rank run
    from helpers import mpirun
    from pffbench.perfmodel import calibrate, validate
    from pffbench import results
    out = tmp_path / "conv-backprop.h5"
    flags = ["-m", "pffbench.run", "--conv", "10,20", "--dataset", "imagefolder", "--data-dir", str(image_folder),
             "--epochs", "2", "--batch-size", "16", "--threads", "1", "--quiet", "--out", str(out)]
    for variant, more in (("gpipe", ["--layer-costs", "1,3"]), ("ddp", [])):
        for ranks in (1, 2):
            done = mpirun(ranks, *flags, "--variant", variant, *more, "--name", f"{variant}-p{ranks}", timeout=180)
            assert done.returncode == 0, done.stderr
    runs = {run.name: run for run in results.read_runs(str(out))}
    costs = calibrate.from_run(runs["gpipe-p1"])
    assert len(costs.layer_fb) == len(costs.layer_adam) == len(costs.params) == 3  # 2 blocks and the head
    # each block its convolution (no bias) and GroupNorm; the head on block 1's 20 x 4 x 4 (pooling only between blocks)
    assert costs.params == [3 * 9 * 10 + 2 * 10, 10 * 9 * 20 + 2 * 20, 20 * 4 * 4 * 10 + 10]
    assert costs.split == [1, 3] and costs.microbatches == 4 and costs.dims == list(runs["gpipe-p1"].attrs["dims"])[:-1]
    assert costs.gradient_floats == sum(costs.params)
    checks, skipped = validate.check(str(out))
    assert not skipped and sorted((c.variant, c.p) for c in checks) == [("ddp", 1), ("ddp", 2), ("gpipe", 1),
                                                                        ("gpipe", 2)]
    for c in checks:
        assert c.predicted > 0 and c.calibration == f"{c.variant}-p1"
        if c.p == 1:  # its own calibration: the level of its compute, data and sync kept
            assert abs(c.error) < 0.25, validate.table(checks)
    from pffbench import model
    assert model.main(["predict", "--calibrate", str(out), "--variant", "dp-backprop", "--ranks", "1,2",
                       "--batch-size", "16"]) == 0  # data parallelism from another data-parallel 1-rank run (ddp's)
    assert model.main(["predict", "--calibrate", str(out), "--variant", "gpipe", "--layers", "500",
                       "--batch-size", "16"]) == 2  # a conv net's calibration keeps its net: --layers refused
    import h5py
    with h5py.File(out, "r+") as f:  # the calibrating run measured while the host was busy
        f["runs"]["ddp-p1"].attrs["load_avg_start"] = [99.0, 99.0, 99.0]
    capsys.readouterr()
    assert model.main(["predict", "--calibrate", str(out), "--variant", "ddp", "--ranks", "1,2", "--batch-size", "16",
                       "--threads", "2"]) == 0
    err = capsys.readouterr().err
    assert "ddp-p1 was measured on a busy host" in err and "ran 1 thread(s) per rank, not --threads 2" in err

"""The command line, launched the way users launch it: mpiexec -n N python -m pffbench.run."""
import numpy as np
import pytest
import torch

from pffbench import results
from pffbench.config import UsageError, parse_config

from conftest import mpirun


@pytest.mark.parametrize("argv,needle", [
    (["--epochs", "0"], "--epochs must be positive"),
    (["--batch-size", "-5"], "--batch-size must be positive"),
    (["--layers", "100,0"], "--layers widths must be positive"),
    (["--layers", "1x2"], "comma-separated integers"),
    (["--lr", "0"], "--lr must be positive"),
    (["--dataset", "imagenet"], "invalid choice"),
    (["--score-layers", "7"], "out of range"),
    (["--cooldown", "2"], "--cooldown"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_arguments_raise_usage_errors(argv, needle):
    with pytest.raises(UsageError, match=needle):
        parse_config(argv)


@pytest.mark.parametrize("n,argv,needle", [
    (2, ["--epochs", "-1"], "--epochs must be positive"),
    (4, ["--layers", "10,10", "--dataset", "synthetic"], "4 ranks but only 2 layers"),
    (2, ["--dataset", "cifar10", "--data-dir", "/nonexistent-pffbench"], "cifar"),
    pytest.param(2, ["--device", "cuda", "--dataset", "synthetic", "--layers", "8,8"], "no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
])
def test_bad_input_exits_2_on_every_rank_with_one_line(n, argv, needle, tmp_path):
    done = mpirun(n, "-m", "pffbench.run", *argv, "--out", str(tmp_path / "r.h5"), timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("pffbench: error:")]
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r.h5").exists()


def test_help_lists_every_flag_once(tmp_path):
    done = mpirun(2, "-m", "pffbench.run", "--help", timeout=60)
    assert done.returncode == 0
    assert done.stdout.count("usage:") == 1
    for flag in ("--dataset", "--data-dir", "--layers", "--epochs", "--batch-size", "--lr", "--threshold",
                 "--seed", "--threads", "--out", "--name", "--model-out", "--device"):
        assert flag in done.stdout


def test_synthetic_run_end_to_end(tmp_path):
    out, model = tmp_path / "runs.h5", tmp_path / "model.pt"
    done = mpirun(2, "-m", "pffbench.run", "--dataset", "synthetic", "--layers", "64,64", "--epochs", "2",
                  "--out", str(out), "--name", "e2e", "--model-out", str(model), timeout=180)
    assert done.returncode == 0, done.stderr
    assert "epoch   2/2" in done.stdout and "test accuracy" in done.stdout
    run, = results.read_runs(str(out))
    assert run.name == "e2e" and run.attrs["world_size"] == 2
    assert run.arrays["timing/wall"].shape == (2, 2)
    import torch
    saved = torch.load(model)
    assert [layer["weight"].shape[0] for layer in saved["layers"]] == [64, 64]


@pytest.mark.slow
def test_real_mnist_two_ranks_one_epoch_reaches_90_percent(tmp_path, mnist_dir):
    out = tmp_path / "mnist.h5"
    done = mpirun(2, "-m", "pffbench.run", "--data-dir", mnist_dir, "--layers", "300,300", "--epochs", "1",
                  "--lr", "3e-3", "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stderr
    run, = results.read_runs(str(out))
    accuracy = run.arrays["test_accuracy"][-1]
    print(f"MNIST 2 ranks [784,300,300] 1 epoch: test accuracy {accuracy:.4f}")
    assert accuracy >= 0.90
    assert np.isfinite(run.arrays["loss"]).all()

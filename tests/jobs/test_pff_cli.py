"""The PFF variants through the command line: mpiexec -n N python -m pffbench.run --variant ..."""
import pytest
import torch

from pffbench import results

from helpers import mpirun


@pytest.mark.parametrize("n,argv,needle", [
    (2, ["--variant", "single-layer", "--layers", "16,16,16"], "single-layer needs one rank per layer"),
    (2, ["--variant", "all-layers", "--epochs", "5", "--splits", "2"], "--splits 2 does not divide --epochs 5"),
    (2, ["--variant", "federated", "--shards", "1"], "2 ranks but only 1 shard (--shards)"),
])
def test_impossible_combinations_exit_2_with_one_line(n, argv, needle, tmp_path):
    done = mpirun(n, "-m", "pffbench.run", "--dataset", "synthetic", *argv, "--out", str(tmp_path / "r.h5"))
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("pffbench: error:")]
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert not (tmp_path / "r.h5").exists()


def test_list_presets_prints_every_table_row_once():
    done = mpirun(2, "-m", "pffbench.run", "--list-presets", timeout=60)
    assert done.returncode == 0, done.stderr
    from pffbench.presets import PRESETS
    names = [line.split()[0] for line in done.stdout.splitlines()[1:] if line.strip() and not line.startswith(("run ", "paper time:"))]
    assert sorted(names) == sorted(PRESETS) and len(names) == len(set(names))  # every preset, once
    assert "11,190.72" in done.stdout


def test_all_layers_run_end_to_end(tmp_path):
    out = tmp_path / "runs.h5"
    done = mpirun(2, "-m", "pffbench.run", "--variant", "all-layers", "--dataset", "synthetic", "--layers", "64,64",
                  "--epochs", "4", "--splits", "2", "--neg", "fixed", "--classifier", "softmax", "--softmax-lr",
                  "1e-2", "--out", str(out), "--name", "al", timeout=180)
    assert done.returncode == 0, done.stderr
    assert "epoch   4/4" in done.stdout and "test accuracy" in done.stdout
    run, = results.read_runs(str(out))
    assert run.attrs["variant"] == "all-layers" and run.attrs["negatives"] == "fixed"
    assert run.arrays["timing_chapter/compute"].shape == (2, 2)
    assert run.arrays["test_accuracy"][-1] > 0.6


def test_model_out_keeps_the_classifier_heads_and_federated_counts_its_own_minibatches(tmp_path):
    common = ["--dataset", "synthetic", "--layers", "32,32,32", "--epochs", "2", "--threads", "1",
              "--out", str(tmp_path / "r.h5")]
    for variant, extra, expected_heads in (("perf-opt", [], 3), ("all-layers", ["--classifier", "softmax"], 1)):
        model = tmp_path / f"{variant}.pt"
        done = mpirun(2, "-m", "pffbench.run", "--variant", variant, *extra, *common, "--name", variant,
                      "--model-out", str(model), timeout=180)
        assert done.returncode == 0, done.stderr
        saved = torch.load(model)
        assert len(saved["layers"]) == 3 and len(saved["heads"]) == expected_heads
        assert saved["heads"][-1]["weight"].shape[0] == 10  # one logit per class
    done = mpirun(2, "-m", "pffbench.run", "--variant", "federated", "--partition", "label-skew", "--shards", "2",
                  "--batch-size", "64", *common, "--name", "fed", timeout=180)
    assert done.returncode == 0, done.stderr
    run = {r.name: r for r in results.read_runs(str(tmp_path / "r.h5"))}["fed"]
    per_rank = run.attrs["minibatches_per_epoch_per_rank"]
    rows = run.arrays["shard_label_counts"].sum(axis=1)
    assert per_rank == [-(-int(n) // 64) for n in rows] and run.attrs["minibatches_per_epoch"] == max(per_rank)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_readme_preset_learns_mnist_at_the_papers_adam_rate(tmp_path, mnist_dir):
    """The README's example preset (the paper's Adam 0.01, threshold 0.01),
    shortened to 2 epochs (2 chapters, one per rank) on [784, 500 x 4] instead
    of 2000-wide layers (a few minutes on 2 ranks of a busy 2-core machine
    instead of ten): it learns, well above chance.  Before --norm length its
    layers fell silent (9.80 %)."""
    out = tmp_path / "r.h5"
    done = mpirun(2, "-m", "pffbench.run", "--preset", "mnist-goodness-random-all-layers", "--epochs", "2",
                  "--layers", "500,500,500,500", "--data-dir", mnist_dir, "--threads", "1", "--out", str(out),
                  timeout=540)
    assert done.returncode == 0, done.stderr
    assert "collapsed" not in done.stdout + done.stderr
    run, = results.read_runs(str(out))
    assert run.config["norm"] == "length" and run.config["lr"] == 0.01 and run.config["threshold"] == 0.01
    assert run.arrays["test_accuracy"][-1] > 0.9

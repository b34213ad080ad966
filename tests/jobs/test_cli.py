"""The command line, launched the way users launch it: mpiexec -n N python -m pffbench.run."""
import os

import numpy as np
import pytest
import torch

from pffbench import results
from pffbench.store import writer
from pffbench.launch.cli import parse_config
from pffbench.core.config import UsageError
from pffbench.store.checks import output_problem

from helpers import mpirun


def trained(stdout: str) -> bool:
    """Whether the run printed an epoch line (the start line before it names the epochs but trains nothing)."""
    return any(line.startswith("epoch ") for line in stdout.splitlines())


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


def test_unwritable_outputs_are_refused_before_training(tmp_path):
    notes, folder = tmp_path / "notes.txt", tmp_path / "folder"
    notes.write_text("not a results file")
    folder.mkdir()
    problems = {("--name", "a/b"): "--name: run name 'a/b'",
                ("--out", str(notes)): "not an HDF5 file",
                ("--out", str(folder)): "is a folder, not a results file",
                ("--out", str(notes / "r.h5")): "notes.txt is a file, not a folder",
                ("--out", ""): "must name a file",
                ("--model-out", str(folder)): "--model-out: " + str(folder) + " is a folder",
                ("--model-out", str(notes / "m.pt")): "--model-out: cannot create",
                ("--checkpoint-dir", str(notes)): "--checkpoint-dir: " + str(notes) + " is a file"}
    out = ["--out", str(tmp_path / "ok.h5")]
    for flags, needle in problems.items():
        argv = out + list(flags) if flags[0] != "--out" else list(flags)
        assert needle in (output_problem(parse_config(argv)) or ""), flags
    assert output_problem(parse_config(out + ["--model-out", str(tmp_path / "new" / "m.pt")])) is None
    # and through the command line: one line, exit 2 on both ranks, no epoch trained, the file untouched
    done = mpirun(2, "-m", "pffbench.run", "--dataset", "synthetic", "--layers", "8,8", "--out", str(notes),
                  timeout=120)
    assert done.returncode == 2 and not trained(done.stdout), done.stdout + done.stderr
    assert done.stderr.count("pffbench: error: --out:") == 1 and "Traceback" not in done.stderr
    assert notes.read_text() == "not a results file"


NODE_LOCAL = """
import os, sys
from mpi4py import MPI
folder = os.path.join(sys.argv[1], f"node{MPI.COMM_WORLD.rank}")  # as if every rank ran on a node of its own
os.makedirs(folder)
os.chdir(folder)
from pffbench.run import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_checkpoint_folder_the_ranks_do_not_share_is_refused(tmp_path):
    # a relative (or $TMPDIR) --checkpoint-dir on several nodes: checkpoints marked complete that no resume can read
    script = tmp_path / "node_local.py"
    script.write_text(NODE_LOCAL)
    done = mpirun(2, str(script), str(tmp_path), "--dataset", "synthetic", "--layers", "8,8", "--epochs", "2",
                  "--checkpoint-dir", "ck", "--out", str(tmp_path / "r.h5"), timeout=120)
    assert done.returncode == 2 and not trained(done.stdout), done.stdout + done.stderr
    line, = [line for line in done.stderr.splitlines() if line.startswith("pffbench: error:")]
    assert "--checkpoint-dir ck: 1 rank does not see what rank 0 writes there" in line
    assert "Traceback" not in done.stderr and os.listdir(tmp_path / "node0" / "ck") == []  # the probe is gone


def test_a_run_that_cannot_be_appended_is_saved_beside_it(tmp_path, monkeypatch):
    from pffbench import run
    out = tmp_path / "runs.h5"
    real_append = writer.append_run

    def busy(path, *args, **kwargs):  # as when another job holds runs.h5's lock past the timeout
        if path == str(out) and not kwargs.get("probe"):  # (the check before training found it free)
            raise results.ResultsError(f"{path}: another job is writing to this file")
        return real_append(path, *args, **kwargs)
    monkeypatch.setattr(writer, "append_run", busy)
    config = parse_config(["--out", str(out), "--name", "kept"])
    with pytest.raises(run.NotRecorded, match=r"another job is writing to this file; run 'kept' is saved in "):
        run.record(config, {"loss": np.ones((2, 3))}, {"variant": "pipeline"}, "complete")
    rescued, = tmp_path.glob("runs-unsaved-*.h5")
    kept, = results.read_runs(str(rescued))
    assert kept.name == "kept" and kept.arrays["loss"].shape == (2, 3)
    # a whole run: the model is still saved, then the one error line
    from pffbench.core.world import World
    model = tmp_path / "model.pt"
    config = parse_config(["--dataset", "synthetic", "--layers", "8", "--epochs", "1", "--out", str(out),
                           "--model-out", str(model)])
    threads = torch.get_num_threads()
    try:
        with pytest.raises(run.NotRecorded):
            run.run(config, World())
    finally:  # run() sets both for the process, as a rank's main does; hypothesis tests later need subnormals
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    assert model.stat().st_size > 0 and len(results.read_runs(str(rescued))) == 2  # the same process: one file


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


def test_imagefolder_run_records_its_class_names_and_refuses_an_empty_class(tmp_path):
    """A notebook's .ipynb_checkpoints in both splits (as Jupyter leaves it) is
    no class: the run trains on cat and dog only, labels 0 and 1, and says so
    in the results file and the saved model.  An empty class folder is one
    line, exit 2, naming it."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        for name in ("cat", "dog", ".ipynb_checkpoints"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
        for name in ("cat", "dog"):
            for i in range(count):
                pixels = rng.integers(0, 256, (4, 4), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / name / f"{i}.png")
    out, model = tmp_path / "runs.h5", tmp_path / "model.pt"
    argv = ["-m", "pffbench.run", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"),
            "--layers", "8", "--epochs", "1", "--batch-size", "4", "--out", str(out)]
    done = mpirun(1, *argv, "--model-out", str(model), timeout=120)
    assert done.returncode == 0, done.stderr
    run, = results.read_runs(str(out))
    assert run.attrs["class_names"] == ["cat", "dog"] and run.attrs["dims"] == [16, 8]
    assert torch.load(model)["class_names"] == ["cat", "dog"]
    (tmp_path / "data" / "train" / "bird").mkdir()
    (tmp_path / "data" / "test" / "bird").mkdir()
    done = mpirun(1, *argv, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"pffbench: error: image folder {tmp_path}/data/train/bird has no *.png/*.jpg/*.jpeg images: every class "
        f"needs training images (add some, or remove the folder)"]
    assert len(results.read_runs(str(out))) == 1


def test_2_ranks_x_1_thread_give_the_weights_of_1_rank_x_1_thread(tmp_path):
    """What users compare: the saved models of whole runs.  2 ranks x 1
    thread give the weights of 1 rank x 1 thread exactly (1e-6 admits BLAS
    builds that pick kernels per process).  Whether 1 rank x 2 threads gives
    them too is the CPU's and BLAS's choice, not pffbench's, so it is only
    printed: a product split over 2 threads may add its parts in another order
    (AMD EPYC, 2026-11-30: about 1e-6 after these 189 steps), or not (Intel
    Xeon with AVX-512, 2026-12-04: identical).  Hence the README's condition,
    equal threads per rank."""
    argv = ["-m", "pffbench.run", "--dataset", "synthetic", "--layers", "256,256", "--epochs", "3",
            "--batch-size", "32", "--out", str(tmp_path / "runs.h5")]
    models = {}
    for ranks, threads in ((1, 1), (2, 1), (1, 2)):
        models[ranks, threads] = tmp_path / f"{ranks}x{threads}.pt"
        done = mpirun(ranks, *argv, "--threads", str(threads), "--model-out", str(models[ranks, threads]),
                      timeout=240)
        assert done.returncode == 0, done.stderr
    layers = {case: torch.load(path)["layers"] for case, path in models.items()}

    def largest_difference(a, b):
        return max((x[key] - y[key]).abs().max().item()
                   for x, y in zip(layers[a], layers[b], strict=True) for key in ("weight", "bias"))

    assert largest_difference((2, 1), (1, 1)) <= 1e-6
    print(f"1 rank x 2 threads against 2 ranks x 1 thread, on this CPU: {largest_difference((2, 1), (1, 2)):.3g}")
    assert [run.attrs["threads_per_rank"] for run in results.read_runs(str(tmp_path / "runs.h5"))] == \
        [[1], [1, 1], [2]]

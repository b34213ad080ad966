"""Results files written by real small runs (1 rank, synthetic data): what
they say about themselves, and what every reader does when they are damaged.
The damage loop runs in a child process under a time limit, so that a hang
or crash inside HDF5 fails the test instead of the session."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pffbench import results
from helpers import mpirun


def trained(stdout: str) -> bool:
    """Whether the run printed an epoch line (the start line before it names the epochs but trains nothing)."""
    return any(line.startswith("epoch ") for line in stdout.splitlines())

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["-m", "pffbench.run", "--dataset", "synthetic", "--layers", "16,16"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A results file with two complete runs and one stopped by a NaN after its first epoch."""
    folder = tmp_path_factory.mktemp("store")
    out = folder / "runs.h5"
    for name, extra in (("a", ["--epochs", "2"]), ("b", ["--epochs", "2"]),
                        ("nan", ["--epochs", "3", "--inject-nan", "0:1"])):
        done = mpirun(1, *SMALL, *extra, "--out", str(out), "--name", name, timeout=180)
        assert done.returncode in (0, 3), done.stderr
    return out


def test_epochs_a_run_never_reached_are_nan(written):
    stopped, = results.read_runs(str(written), names=["nan"])
    done = stopped.attrs["epochs_completed"]
    assert stopped.attrs["status"] == "failed" and 0 < done < 3
    for key, array in stopped.arrays.items():
        if key.startswith("timing/"):
            assert np.isnan(array[:, done:]).all() and np.isfinite(array[:, :done]).all(), key
    assert np.isnan(stopped.arrays["loss"][:, done:]).all()


def test_every_dataset_names_its_axes_and_units(written):
    with h5py.File(written, "r") as f:
        datasets = []
        f.visititems(lambda key, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
        assert len(datasets) > 10
        for dataset in datasets:
            assert len(dataset.attrs["axes"]) == dataset.ndim and "units" in dataset.attrs, dataset.name
            assert not any(axis.startswith(b"axis") for axis in dataset.attrs["axes"]), dataset.name
        assert f["runs/a/timing/wall"].attrs["units"] == b"s"
        assert f["runs/a/loss"].attrs["axes"].tolist() == [b"layer", b"epoch"]
    run, = results.read_runs(str(written), names=["a"])
    assert run.attrs["hostnames"] == [run.attrs["hostname"]] and len(run.attrs["threads_per_rank"]) == 1
    assert run.attrs["cpu_model"] and run.attrs["host_cores"] == os.cpu_count()
    assert len(run.attrs["load_avg_start"]) == 3 and len(run.attrs["load_avg_end"]) == 3
    # no variable-length string anywhere: those live in the global heap, and a damaged one hangs HDF5
    assert b"GCOL" not in written.read_bytes()


DAMAGE = r"""
import json, sys
from pffbench import results
source, offsets = sys.argv[1], json.loads(sys.argv[2])
def snapshot(runs):
    return {r.name: (json.dumps(r.attrs, sort_keys=True, default=str), {k: v.tobytes() for k, v in r.arrays.items()})
            for r in runs}
original = snapshot(results.read_runs(source))
data = open(source, "rb").read()
for offset in offsets:
    offset, length = offset if isinstance(offset, list) else (offset, 16)
    damaged = bytearray(data)
    damaged[offset:offset + length] = bytes(length)
    path = source + ".damaged"
    open(path, "wb").write(damaged)
    lines = []
    try:
        got, refused = snapshot(results.read_runs(path, on_damaged=lines.append)), ""
    except results.ResultsError as error:
        got, refused = {}, str(error)
    # anything else escapes: a traceback, which the test sees
    verdict = {name: "same" if got.get(name) == original[name] else "skipped" if name not in got else "DIFFERENT"
               for name in original}
    print(json.dumps({"offset": offset, "verdict": verdict, "lines": lines, "refused": refused}), flush=True)
"""


def damage(path, offsets):
    done = subprocess.run([sys.executable, "-c", DAMAGE, str(path), json.dumps(offsets)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def addresses(path):
    """{run: [(offset, length) of 16 bytes in its group's and datasets' object headers, and of its datasets'
    data (at most 16 bytes, within the data)]}."""
    found = {}
    with h5py.File(path, "r") as f:
        for name, group in f["runs"].items():
            spots = [(h5py.h5o.get_info(group.id).addr + 4, 16)]

            def add(key, obj):
                spots.append((h5py.h5o.get_info(obj.id).addr + 4, 16))
                if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                    spots.append((obj.id.get_offset(), min(16, obj.id.get_storage_size())))
            group.visititems(add)
            found[name] = spots
    return found


def test_damage_at_many_offsets_never_gives_a_traceback_nor_hides_good_runs(written, tmp_path):
    copy = tmp_path / "runs.h5"
    copy.write_bytes(written.read_bytes())
    size = copy.stat().st_size
    for outcome in damage(copy, list(range(0, size, 199))):  # anywhere: headers, indexes, heaps, data
        assert "DIFFERENT" not in outcome["verdict"].values(), outcome  # damage is an error, never other data
        assert all("\n" not in line and "cannot be read" in line for line in outcome["lines"]), outcome
        assert "\n" not in outcome["refused"]
        for name, verdict in outcome["verdict"].items():
            assert verdict != "skipped" or outcome["refused"] or any(f"'{name}'" in line or "#" in line
                                                                   for line in outcome["lines"]), outcome
    # aimed at one run's object headers and data: that run is named and skipped, every other run read whole
    spots, data = addresses(copy), copy.read_bytes()
    for name, offsets in spots.items():
        # zeroing bytes that are zero already is no damage (1 rank never waits: timing/send_wait is all 0)
        changed = [[spot, length] for spot, length in offsets if any(data[spot:spot + length])]
        assert len(changed) > len(offsets) // 2
        for outcome in damage(copy, changed):
            others = {other: verdict for other, verdict in outcome["verdict"].items() if other != name}
            assert set(others.values()) == {"same"} and not outcome["refused"], outcome
            assert outcome["verdict"][name] == "skipped", outcome
            assert any(line.startswith(f"{copy}.damaged: run '{name}' cannot be read") for line in outcome["lines"])


def test_report_plot_and_run_on_a_damaged_file_say_so_in_one_line(written, tmp_path):
    copy = tmp_path / "runs.h5"
    data = bytearray(written.read_bytes())
    spot, length = next(spot for spot in reversed(addresses(written)["a"]) if any(data[spot[0]:sum(spot)]))
    data[spot:spot + length] = bytes(length)  # run a's last dataset whose data are not all 0
    copy.write_bytes(data)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command in (["-m", "pffbench.report", str(copy)], ["-m", "pffbench.plot", str(copy), "-o", str(tmp_path)]):
        done = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=300, env=env)
        assert "Traceback" not in done.stderr and done.returncode == 0, done.stderr
        warning, = [line for line in done.stderr.splitlines() if "warning" in line]
        assert f"{copy}: run 'a' cannot be read" in warning and "skipped it" in warning
    # the run still appends (its append reads nothing of run a's data) and the report then has both b and it
    done = mpirun(1, *SMALL, "--epochs", "1", "--out", str(copy), "--name", "c", timeout=180)
    assert done.returncode == 0, done.stderr
    assert [run.name for run in results.read_runs(str(copy), on_damaged=lambda line: None)] == ["b", "nan", "c"]
    # a file whose group of runs is damaged: refused before training, in one line
    with h5py.File(written, "r") as f:
        runs_header = h5py.h5o.get_info(f["runs"].id).addr
    data = bytearray(written.read_bytes())
    data[runs_header + 4:runs_header + 20] = bytes(16)
    copy.write_bytes(data)
    done = mpirun(1, *SMALL, "--epochs", "1", "--out", str(copy), timeout=180)
    assert done.returncode == 2 and not trained(done.stdout) and "Traceback" not in done.stderr, done.stderr
    line, = [line for line in done.stderr.splitlines() if line.startswith("pffbench: error:")]
    assert line.startswith(f"pffbench: error: --out: {copy}")


WRITER_FAILS = """
import sys
from pffbench.store import writer
real, calls = writer._write_run, []
def failing(runs, name, arrays, stored):  # h5py refusing something while appending to --out
    calls.append(name)
    # the checks before training write the run twice (in memory, then the probe append); the 3rd is the append
    if "unsaved" not in runs.file.filename and (sys.argv[1] == "always" or len(calls) == 3):
        raise KeyError("Unable to synchronously create group (name already exists)")
    return real(runs, name, arrays, stored)
writer._write_run = failing
from pffbench.run import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("when", ["always", "after-training"])
def test_a_writer_error_is_found_before_training_or_keeps_model_and_run(tmp_path, when):
    script = tmp_path / "writer_fails.py"
    script.write_text(WRITER_FAILS)
    out, model = tmp_path / "job" / "runs.h5", tmp_path / "job" / "model.pt"
    done = mpirun(1, str(script), "always" if when == "always" else "second", "--dataset", "synthetic",
                  "--layers", "16,16", "--epochs", "1", "--out", str(out), "--model-out", str(model),
                  "--name", "kept", timeout=180)
    assert "Traceback" not in done.stderr, done.stderr
    line, = [line for line in done.stderr.splitlines() if line.startswith("pffbench: error:")]
    if when == "always":  # the check before training is the append itself (to a probe): it meets the error first
        assert done.returncode == 2 and not trained(done.stdout) and "could not be stored" in line
        assert "KeyError" in line and not model.exists()
        return
    assert done.returncode == 4, done.stderr  # trained, not appended
    rescued, = out.parent.glob("runs-unsaved-*.h5")
    assert f"KeyError" in line and f"run 'kept' is saved in {rescued} instead" in line
    assert model.stat().st_size > 0 and not out.exists()
    assert results.read_runs(str(rescued))[0].name == "kept"


# --- issue 20: names as long as the file system takes, and a model that cannot be written -----------

def test_249_byte_names_are_written_and_longer_ones_refused_before_training(tmp_path):
    # NAME_MAX is 255: a 249-byte name is legal, and nothing pffbench writes beside it may make it fail
    out, model = tmp_path / ("o" * 246 + ".h5"), tmp_path / ("m" * 246 + ".pt")
    done = mpirun(1, *SMALL, "--epochs", "1", "--out", str(out), "--model-out", str(model), timeout=180)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert results.read_runs(str(out))[0].attrs["status"] == "complete"
    assert torch_load(model)["layers"]
    assert sorted(os.listdir(tmp_path)) == sorted([out.name, model.name])  # no temporary and no lock file left
    # names the file system refuses (the lock file of --out adds 5 bytes): one line each, before training,
    # naming the user's file (not a temporary), leaving nothing behind
    for flag, name in (("--out", "o" * 251 + ".h5"), ("--model-out", "m" * 253 + ".pt")):
        folder = tmp_path / flag.strip("-")
        target = folder / name
        argv = ["--out", str(target)] if flag == "--out" else ["--out", str(folder / "r.h5"), flag, str(target)]
        done = mpirun(1, *SMALL, "--epochs", "1", *argv, timeout=180)
        assert done.returncode == 2 and not trained(done.stdout) and "Traceback" not in done.stderr, done.stderr
        line, = done.stderr.strip().splitlines()
        assert line.startswith(f"pffbench: error: {flag}: cannot write {target}: File name too long"), line
        assert ".tmp" not in line and ".pffbench" not in line
        assert os.listdir(folder) == [], os.listdir(folder)


def torch_load(path):
    import torch
    return torch.load(path)


MODEL_FAILS = """
import errno, sys
from pffbench import run
real = run.save_model
def full(model, path):  # the disk fills while the run trains: --model-out's write fails, the run's goes on
    if path == sys.argv[1]:
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(model, path)
run.save_model = full
sys.exit(run.main(sys.argv[2:]))
"""


def test_a_model_that_cannot_be_written_goes_beside_the_rescue_file_and_the_run_is_recorded(tmp_path):
    script = tmp_path / "model_fails.py"
    script.write_text(MODEL_FAILS)
    out, model = tmp_path / "job" / "runs.h5", tmp_path / "models" / "model.pt"
    done = mpirun(1, str(script), str(model), "--dataset", "synthetic", "--layers", "16,16", "--epochs", "1",
                  "--out", str(out), "--model-out", str(model), "--name", "kept", timeout=180)
    assert done.returncode == 4 and "Traceback" not in done.stderr, done.stderr
    kept, = out.parent.glob("model-unsaved-*.pt")
    line, = [line for line in done.stderr.splitlines() if line.startswith("pffbench: error:")]
    assert line == f"pffbench: error: --model-out: cannot write {model}: No space left on device; " \
                   f"the model is saved in {kept} instead"
    assert torch_load(kept)["layers"] and not model.exists()
    assert results.read_runs(str(out))[0].name == "kept"


def test_a_run_whose_249_byte_out_cannot_be_appended_is_rescued(tmp_path):
    script = tmp_path / "writer_fails.py"
    script.write_text(WRITER_FAILS)
    out = tmp_path / "job" / ("o" * 246 + ".h5")
    done = mpirun(1, str(script), "second", "--dataset", "synthetic", "--layers", "16,16", "--epochs", "1",
                  "--out", str(out), "--name", "kept", timeout=180)
    assert done.returncode == 4 and "Traceback" not in done.stderr, done.stderr
    rescued, = out.parent.glob("o*-unsaved-*.h5")
    assert len(os.fsencode(rescued.name)) <= 255 and f"saved in {rescued} instead" in done.stderr
    assert results.read_runs(str(rescued))[0].name == "kept"

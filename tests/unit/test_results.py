import fcntl
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pffbench.results import ResultsError, list_runs, read_runs, summarize
from pffbench.store.writer import append_run, provenance

ROOT = Path(__file__).resolve().parents[2]
CHILD_ENV = dict(os.environ, PYTHONPATH=str(ROOT))


@pytest.fixture
def path(tmp_path):
    # realpath, because that is the name append_run uses in its messages
    return tmp_path.resolve() / "results.h5"


def digest(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def temporaries(p):
    """The temporaries of results file ``p``'s writers (store/writer.py names them after a digest of its name)."""
    from pffbench.store.writer import _temporary_name
    return list(Path(p).parent.glob(f"{_temporary_name(Path(p).name)}.*.tmp"))


def small_run(i):
    return {"timing/compute": np.full((2, 3), float(i))}, {"variant": "v", "i": i}


def test_round_trip_keeps_arrays_attrs_and_dtypes(tmp_path):
    path = tmp_path.resolve() / "new" / "dir" / "results.h5"
    arrays = {
        "timing/compute": np.arange(12, dtype=np.float64).reshape(3, 4),
        "timing/comm": np.linspace(0, 1, 5, dtype=np.float32),
        "loss": np.array([3, -1, 7], dtype=np.int16),
        "deep/er/flags": np.array([True, False]),
        "steps": np.int64(42),
    }
    attrs = {"variant": "pipeline", "world_size": 4, "lr": 1e-3, "download": False, "note": "",
             "data_dir": None, "config": {"layers": [1000, 1000], "nested": {"a": 1}},
             "hostnames": ["n1", "n2"], "empty": [], "numpy_int": np.int32(5)}

    assert append_run(str(path), arrays, attrs, name="first", status="partial") == "first"

    [run] = read_runs(str(path))
    assert run.name == "first"
    assert set(run.arrays) == set(arrays)
    for key, expected in arrays.items():
        assert run.arrays[key].dtype == np.asarray(expected).dtype
        np.testing.assert_array_equal(run.arrays[key], expected)
    expected_attrs = {**attrs, "numpy_int": 5, "status": "partial", "index": 0}
    assert {k: v for k, v in run.attrs.items() if k != "created"} == expected_attrs
    assert type(run.attrs["world_size"]) is int and type(run.attrs["download"]) is bool
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", run.attrs["created"])
    assert run.config == attrs["config"]

    with h5py.File(path, "r") as f:
        # format 2: text as fixed-length UTF-8 strings (bytes to h5py), lists as HDF5 arrays, not JSON text
        assert f.attrs["format"] == b"pffbench-results" and f.attrs["format_version"] == 2
        assert isinstance(f["runs/first/timing"], h5py.Group)
        assert f["runs/first"].attrs["data_dir"] == b"null"
        assert f["runs/first"].attrs["hostnames"].tolist() == [b"n1", b"n2"]
        assert f["runs/first"].attrs["empty"] == b"[]"  # an empty list has no type: it stays JSON
        # every dataset names its axes and units
        compute = f["runs/first/timing/compute"]
        assert compute.attrs["axes"].tolist() == [b"rank", b"epoch"] and compute.attrs["units"] == b"s"
        assert f["runs/first/deep/er/flags"].attrs["axes"].tolist() == [b"axis0"]


def test_config_stored_as_json_text_reads_as_dict(path):
    append_run(str(path), {}, {"config": '{"epochs": 3}'})
    assert read_runs(str(path))[0].config == {"epochs": 3}


def test_default_names_and_suffixes_never_overwrite(path):
    first = append_run(str(path), {}, {"variant": "pipeline", "world_size": 4})
    assert re.fullmatch(r"pipeline-p4-\d{8}T\d{6}Z", first)
    second = append_run(str(path), {}, {})
    assert re.fullmatch(r"run-\d{8}T\d{6}Z", second)
    names = [append_run(str(path), {"x": np.array([i])}, {}, name="same") for i in range(3)]
    assert names == ["same", "same-2", "same-3"]
    runs = read_runs(str(path), names=["same-3", "same"])
    assert [r.name for r in runs] == ["same", "same-3"]
    assert [r.arrays["x"][0] for r in runs] == [0, 2]
    assert list_runs(str(path)) == [first, second, *names]
    assert [r.attrs["index"] for r in read_runs(str(path))] == [0, 1, 2, 3, 4]


def test_second_append_leaves_first_run_identical(path):
    arrays = {"timing/compute": np.random.default_rng(0).random((4, 3)), "ids": np.arange(4, dtype=np.uint8)}
    append_run(str(path), arrays, {"variant": "a"}, name="a")
    [before] = read_runs(str(path))
    append_run(str(path), {"timing/compute": np.zeros((8, 3))}, {"variant": "b"}, name="b")
    [after] = read_runs(str(path), names=["a"])
    assert after.attrs == before.attrs
    for key in arrays:
        assert after.arrays[key].dtype == before.arrays[key].dtype
        assert after.arrays[key].tobytes() == before.arrays[key].tobytes()


def test_append_through_symlink_keeps_the_link(path):
    link = path.parent / "link.h5"
    link.symlink_to(path)
    append_run(str(link), {}, {}, name="a")
    assert link.is_symlink() and list_runs(str(path)) == ["a"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"timings, but as text\n"), "not an HDF5 file"),
    (lambda p: h5py.File(p, "w").create_dataset("x", data=[1]), "not a pffbench results file"),
])
def test_foreign_file_is_refused_and_untouched(path, make, message):
    make(path)
    before = digest(path)
    for action in (lambda: append_run(str(path), *small_run(0)), lambda: read_runs(str(path))):
        with pytest.raises(ResultsError, match=message) as err:
            action()
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert digest(path) == before
    assert temporaries(path) == []


def test_newer_format_version_is_refused(path):
    append_run(str(path), *small_run(0))
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 3
    with pytest.raises(ResultsError, match="newer"):
        append_run(str(path), *small_run(1))


def test_missing_file_and_unknown_run(path):
    with pytest.raises(ResultsError, match="no such results file"):
        read_runs(str(path))
    with pytest.raises(ResultsError, match="no such results file"):
        list_runs(str(path))
    append_run(str(path), *small_run(0), name="a")
    with pytest.raises(ResultsError, match="no run named b"):
        read_runs(str(path), names=["a", "b"])


@pytest.mark.parametrize("arrays, attrs, name, error", [
    ({}, {"index": 3}, None, ValueError),
    ({}, {"status": "x"}, None, ValueError),
    ({"/abs": np.zeros(1)}, {}, None, ValueError),
    ({"a//b": np.zeros(1)}, {}, None, ValueError),
    ({}, {}, "a/b", ValueError),
    ({}, {"when": object()}, None, TypeError),
    ({}, {"cfg": {"x": object()}}, None, TypeError),
])
def test_bad_arguments_touch_nothing(path, arrays, attrs, name, error):
    append_run(str(path), *small_run(0))
    before = digest(path)
    with pytest.raises(error):
        append_run(str(path), arrays, attrs, name=name)
    assert digest(path) == before


def test_failure_while_writing_leaves_file_and_no_temporary(path):
    append_run(str(path), *small_run(0))
    before = digest(path)
    with pytest.raises(ValueError):  # a dataset "a" cannot also be a group "a"
        append_run(str(path), {"a": np.zeros(1), "a/b": np.zeros(1)}, {})
    assert digest(path) == before
    assert temporaries(path) == []


KILLED_WRITER = """
import os, sys, time
import h5py, numpy as np
from pffbench.store import writer

path, stage = sys.argv[1:]

def stall(*args, **kwargs):
    print("inside", flush=True)
    time.sleep(60)

if stage == "dataset":
    create = h5py.Group.create_dataset
    def create_then_stall(self, *args, **kwargs):
        create(self, *args, **kwargs)
        stall()
    h5py.Group.create_dataset = create_then_stall
else:
    os.replace = stall
writer.append_run(path, {"big": np.ones((500, 1000)), "more": np.ones(10)}, {"variant": "doomed"})
"""


@pytest.mark.parametrize("stage", ["dataset", "replace"])
def test_killed_writer_leaves_earlier_runs_intact(path, stage):
    for i in range(2):
        append_run(str(path), *small_run(i), name=f"r{i}")
    before = digest(path)

    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), stage],
                             stdout=subprocess.PIPE, env=CHILD_ENV)
    try:
        assert child.stdout.readline() == b"inside\n"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()

    assert temporaries(path), "the child should have died holding a half-done temporary"
    assert digest(path) == before
    runs = read_runs(str(path))
    assert [r.name for r in runs] == ["r0", "r1"]
    np.testing.assert_array_equal(runs[1].arrays["timing/compute"], np.full((2, 3), 1.0))

    # The kernel released the dead writer's lock; its temporary is cleaned up.
    append_run(str(path), *small_run(2), name="r2", lock_timeout=2)
    assert list_runs(str(path)) == ["r0", "r1", "r2"]
    assert temporaries(path) == []


def test_a_file_system_without_flock_is_reported_before_a_run(path, monkeypatch):
    from pffbench.store import writer
    assert writer.unappendable(str(path)) is None
    def no_flock(*args):  # Lustre mounted noflock
        raise OSError(38, "Function not implemented")
    monkeypatch.setattr(writer.fcntl, "flock", no_flock)
    assert "cannot lock it for appending (Function not implemented)" in writer.unappendable(str(path))


def test_another_files_temporary_is_left_alone(path):
    # "results.h5.old" is another results file; its live writer's temporary starts like ours
    from pffbench.store.writer import _temporary_name
    theirs = path.parent / f".{path.name}.old.4242.deadbeef.tmp"
    theirs.write_bytes(b"half-written")
    older = path.parent / f".{path.name}.4242.deadbeef.tmp"  # a dead writer's of an older version: removed
    older.write_bytes(b"stale")
    ours = path.parent / f"{_temporary_name(path.name)}.4242.deadbeef.tmp"  # a dead writer's, under our lock
    ours.write_bytes(b"stale")
    other = path.parent / f"{_temporary_name(path.name + '.old')}.4243.deadbeef.tmp"  # results.h5.old's live one
    other.write_bytes(b"half-written")
    append_run(str(path), *small_run(0), name="r0")
    assert theirs.read_bytes() == b"half-written" and other.read_bytes() == b"half-written"
    assert not ours.exists() and not older.exists()


CONCURRENT_WRITER = """
import os, sys, time
import numpy as np
from pffbench.store.writer import append_run

path, writer, go = sys.argv[1:]
while not os.path.exists(go):
    time.sleep(0.01)
for i in range(20):
    append_run(path, {"x": np.full(100, int(writer))}, {"writer": int(writer), "i": i},
               name="w", lock_timeout=15)
"""


def test_concurrent_appenders_serialize(path):
    go = path.parent / "go"
    children = [subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, str(path), str(w), str(go)],
                                 env=CHILD_ENV) for w in (1, 2)]
    go.touch()
    assert [child.wait(timeout=30) for child in children] == [0, 0]

    runs = read_runs(str(path))
    assert sorted(r.name for r in runs) == sorted(["w"] + [f"w-{k}" for k in range(2, 41)])
    assert [r.attrs["index"] for r in runs] == list(range(40))
    for writer in (1, 2):
        mine = [r for r in runs if r.attrs["writer"] == writer]
        assert [r.attrs["i"] for r in mine] == list(range(20))
        assert all((r.arrays["x"] == writer).all() for r in mine)


def test_lock_timeout_gives_clear_error_and_touches_nothing(path):
    append_run(str(path), *small_run(0))
    before = digest(path)
    lock_path = f"{path}.lock"
    with open(lock_path, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        start = time.monotonic()
        with pytest.raises(ResultsError, match="another job is writing") as err:
            append_run(str(path), *small_run(1), lock_timeout=0.2)
        assert 0.2 <= time.monotonic() - start < 20  # waited its lock_timeout; the upper bound only tells it from a hang
    assert lock_path in str(err.value) and "\n" not in str(err.value)
    assert digest(path) == before


def test_writer_waits_for_lock_then_appends(path):
    with open(f"{path}.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        writer = threading.Thread(target=append_run, args=(str(path), *small_run(0)),
                                  kwargs={"name": "late", "lock_timeout": 10})
        writer.start()
        time.sleep(0.3)
        assert not path.exists()
    writer.join(timeout=10)
    assert list_runs(str(path)) == ["late"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50))
def test_summarize_matches_numpy(values):
    s = summarize(values)
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    assert s == pytest.approx({"min": min(values), "q1": q1, "median": median, "q3": q3,
                               "max": max(values), "iqr": q3 - q1, "n": len(values)})
    assert type(s["n"]) is int


@pytest.mark.parametrize("values", [[], [[1.0, 2.0]]])
def test_summarize_rejects_empty_and_multidimensional(values):
    with pytest.raises(ValueError):
        summarize(values)


PROVENANCE_KEYS = {"python", "mpi4py", "torch", "numpy", "h5py", "mpi_library", "git_sha",
                   "slurm_job_id", "slurm_step_id", "slurm_nodelist", "hostname", "platform",
                   "cpu_model", "host_cores", "load_avg_end"}


def test_provenance_describes_this_process(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    info = provenance()
    assert set(info) == PROVENANCE_KEYS
    assert info["numpy"] == np.__version__ and info["h5py"] == h5py.__version__
    assert info["slurm_job_id"] == "1234" and info["slurm_step_id"] == ""
    assert info["mpi_library"] and "\n" not in info["mpi_library"]
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", info["git_sha"])
    assert info["cpu_model"] and info["host_cores"] == os.cpu_count()
    assert len(info["load_avg_end"]) == 3 and all(load >= 0 for load in info["load_avg_end"])


def test_provenance_names_the_gpu_of_a_cuda_run_and_no_gpu_otherwise(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert "gpu_model" not in provenance()  # a CPU run: no CUDA context is made to ask
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    info = provenance()
    assert info["gpu_model"] == "NVIDIA H200" and set(info) == PROVENANCE_KEYS | {"gpu_model", "cuda_version"}


def test_provenance_without_git(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    info = provenance()
    assert set(info) == PROVENANCE_KEYS and info["git_sha"] == "unknown"


def test_provenance_marks_dirty_checkout(monkeypatch, tmp_path):
    fake_git = tmp_path / "git"
    fake_git.write_text('#!/bin/sh\ncase "$1" in rev-parse) echo 0123abcd;; status) echo " M x.py";; esac\n')
    fake_git.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert provenance()["git_sha"] == "0123abcd-dirty"


def test_no_lock_file_is_left_beside_the_results_file(path):
    append_run(str(path), *small_run(0))
    append_run(str(path), *small_run(1))
    assert sorted(os.listdir(path.parent)) == [path.name]


def test_a_writer_that_locked_a_removed_lock_file_tries_again_on_the_new_one(path):
    # Writer B opens the lock file while A holds it; A removes it and releases (as every writer now does),
    # and C has meanwhile locked a new lock file.  B's flock on the removed inode then succeeds, but B must
    # not write while C holds the lock at the path.
    lock_path = f"{path}.lock"
    holder_a = open(lock_path, "a")
    fcntl.flock(holder_a, fcntl.LOCK_EX)
    writer = threading.Thread(target=append_run, args=(str(path), *small_run(0)),
                              kwargs={"name": "b", "lock_timeout": 20})
    writer.start()
    time.sleep(0.3)  # B has opened the old inode and polls its flock
    os.remove(lock_path)
    with open(lock_path, "a") as holder_c:
        fcntl.flock(holder_c, fcntl.LOCK_EX)
        holder_a.close()  # B can now lock the removed inode
        time.sleep(0.5)
        assert not path.exists(), "wrote while another writer held the lock"
    writer.join(timeout=20)
    assert list_runs(str(path)) == ["b"]

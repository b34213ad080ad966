"""The results store as its users meet it: checks of what a run writes before
it trains (also for folders that do not exist yet), any failure of the
writer, a file that explains itself, and a report that keeps apart what it
must not pool.  Damaged files and whole runs: tests/jobs/test_store_jobs.py."""
import errno
import math
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pffbench import report, results, run, sweep
from pffbench.launch.cli import parse_config
from pffbench.store import checks, writer
from pffbench.analysis import analysis

ROOT = Path(__file__).resolve().parents[2]
OLD_FILE = ROOT / "results" / "sweep-mnist-2core.h5"  # written by format 1 (lists as JSON text), committed


def no_flock(code):
    def flock(*args):  # NFS without lockd (ENOLCK), Lustre mounted noflock (EOPNOTSUPP)
        raise OSError(code, os.strerror(code))
    return flock


# --- kind 3: output checks that hold for folders that do not exist yet ----------------------------------------

@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_out_in_a_new_folder_without_flock_is_refused_before_training(tmp_path, monkeypatch, code):
    out = tmp_path / "results" / "job42" / "runs.h5"  # a per-job folder: not there yet
    monkeypatch.setattr(writer.fcntl, "flock", no_flock(code))
    problem = checks.output_problem(parse_config(["--out", str(out)]))
    assert problem.startswith("--out: ") and f"cannot lock it for appending ({os.strerror(code)})" in problem
    assert "\n" not in problem and not out.exists()


def test_sweep_refuses_the_same_out_before_its_first_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "job42" / "sweep.h5"
    monkeypatch.setattr(writer.fcntl, "flock", no_flock(errno.ENOLCK))

    def started(*args, **kwargs):
        raise AssertionError("the sweep started its runs")
    monkeypatch.setattr(sweep, "sweep", started)
    assert sweep.main(["--out", str(out), "--ranks", "1", "--", "--dataset", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert "--out: " in err and "cannot lock it for appending" in err and "Traceback" not in err


@pytest.mark.parametrize("flag", ["--model-out", "--checkpoint-dir"])
def test_a_folder_where_renames_fail_is_refused_before_training(tmp_path, monkeypatch, flag):
    # the atomic write of a model or checkpoint renames its temporary; a folder (not there yet) refusing that
    target = tmp_path / "new" / ("m.pt" if flag == "--model-out" else "ck")
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(tmp_path / "new") in str(dst):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        return real_replace(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "replace", replace)
    problem = checks.output_problem(parse_config(["--out", str(tmp_path / "r.h5"), flag, str(target)]))
    assert problem and problem.startswith(flag) and "Operation not permitted" in problem, problem
    assert [p.name for p in (tmp_path / "new").rglob("*")] in ([], ["ck"])  # no probe left behind


def test_rescue_goes_beside_out_when_its_lock_fails(tmp_path, monkeypatch):
    out = tmp_path / "job42" / "runs.h5"
    config = parse_config(["--out", str(out), "--name", "kept"])
    assert checks.output_problem(config) is None  # the folder is made and tried
    monkeypatch.setattr(writer.fcntl, "flock", no_flock(errno.ENOLCK))  # e.g. lockd gone while the run trained
    with pytest.raises(run.NotRecorded) as error:
        run.record(config, {"loss": np.ones((2, 3))}, {"variant": "pipeline"}, "complete")
    rescued, = out.parent.glob("runs-unsaved-*.h5")
    assert f"run 'kept' is saved in {rescued} instead" in str(error.value)
    assert results.read_runs(str(rescued))[0].name == "kept"


# --- kind 4: any failure while recording a finished run ------------------------------------------------------

@pytest.mark.parametrize("kind", [KeyError, RuntimeError, ValueError, TypeError, UnicodeEncodeError, OSError])
def test_any_error_of_the_writer_becomes_one_line_and_a_rescue_file(tmp_path, monkeypatch, kind):
    out = tmp_path / "runs.h5"
    real = writer._write_run

    def failing(runs, name, arrays, stored):
        if runs.file.filename.startswith(str(tmp_path / ".runs.h5.")):  # only the append to --out
            if kind is UnicodeEncodeError:
                raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")
            raise kind("h5py said\nsomething on two lines")
        return real(runs, name, arrays, stored)
    monkeypatch.setattr(writer, "_write_run", failing)
    config = parse_config(["--out", str(out), "--name", "kept"])
    with pytest.raises(run.NotRecorded) as error:
        run.record(config, {"loss": np.ones((2, 3))}, {"variant": "pipeline"}, "complete")
    line = str(error.value)
    assert "\n" not in line and "cannot append run" in line and "saved in" in line
    rescued, = tmp_path.glob("runs-unsaved-*.h5")
    assert results.read_runs(str(rescued))[0].name == "kept" and not out.exists()


def test_a_rescue_keeps_a_value_hdf5_refuses_as_text(tmp_path):
    config = parse_config(["--out", str(tmp_path / "runs.h5")])
    with pytest.raises(run.NotRecorded) as error:  # a NUL in a string: not storable, not even in the rescue
        run.record(config, {"loss": np.ones(2)}, {"variant": "pipe\x00line"}, "complete")
    assert "attrs['variant'] kept as text" in str(error.value)
    rescued, = tmp_path.glob("runs-unsaved-*.h5")
    kept, = results.read_runs(str(rescued))
    assert kept.attrs["variant"] == ascii("pipe\x00line") and kept.arrays["loss"].tolist() == [1, 1]


@pytest.mark.parametrize("flags, needle", [
    (["--name", "r\udcff"], "--name: run name 'r\\udcff' must be valid Unicode"),  # a byte of another encoding
    (["--name", "a\x00b"], "must not hold a NUL"),
])
def test_values_hdf5_refuses_are_refused_before_training(tmp_path, flags, needle):
    # (the config's strings and paths go in as JSON text, which escapes what HDF5 would refuse)
    problem = checks.output_problem(parse_config(["--out", str(tmp_path / "r.h5"), *flags]))
    assert problem and needle in problem and "\n" not in problem, problem


ARGUMENT_ERRORS = ("run name ", "array key", "attrs key", "attrs[")
texts = st.text(st.characters(codec="utf-8") | st.sampled_from("\x00\udcff/."), max_size=12)
scalars = st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats() | texts
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                      max_leaves=6)


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b and type(a) is type(b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.none() | texts, attrs=st.dictionaries(texts, values, max_size=4))
def test_the_writer_stores_a_run_or_says_why_in_one_line(tmp_path, name, attrs):
    path = tmp_path / "fuzz.h5"
    path.unlink(missing_ok=True)
    try:
        stored = writer.append_run(str(path), {"timing/wall": np.ones((1, 2))}, attrs, name=name)
    except results.ResultsError as error:
        assert "\n" not in str(error)
        return
    except (ValueError, TypeError) as error:  # arguments refused before the file is touched, named in the line
        assert str(error).startswith(ARGUMENT_ERRORS) and "\n" not in str(error), repr(error)
        assert not path.exists()
        return
    run_, = results.read_runs(str(path))
    assert run_.name == stored
    for key, value in attrs.items():
        assert same(value, run_.attrs[key]), (key, value, run_.attrs[key])


# --- issue 13 point 5: a results file that explains itself --------------------------------------------------

def test_a_format_1_file_still_reads_and_takes_format_2_runs(tmp_path):
    with h5py.File(OLD_FILE, "r") as f:
        assert f.attrs["format_version"] == 1 and isinstance(f["runs/ff-p2-t1-r0"].attrs["hostnames"], str)
    old = results.read_runs(str(OLD_FILE))
    assert len(old) == 18 and old[0].attrs["hostnames"] == ["vm"] and old[0].attrs["threads_per_rank"] == [1]
    copy = tmp_path / "old.h5"
    shutil.copyfile(OLD_FILE, copy)
    attrs = {k: v for k, v in old[-1].attrs.items() if k not in ("status", "created", "index")}
    writer.append_run(str(copy), old[-1].arrays, attrs, name="new")
    both = results.read_runs(str(copy))
    assert len(both) == 19 and both[-1].attrs["hostnames"] == old[-1].attrs["hostnames"]
    with h5py.File(copy, "r") as f:
        assert f["runs/new"].attrs["hostnames"].dtype.kind == "S"  # an HDF5 array of strings, not JSON
        assert f["runs/new/timing/wall"].attrs["axes"].tolist() == [b"rank", b"epoch"]
    rows = {row.case.name: row for row in analysis.table(both)}
    assert rows[analysis.stem(old[-1].name)].stats["n"] == 4  # same code, versions, host: one case


def timed_run(path, name, seconds, **attrs):
    base = {"variant": "pipeline", "dataset": "mnist", "config": {"layers": [8, 8], "epochs": 1},
            "world_size": 1, "threads_per_rank": [1], "hostname": "vm", "cpu_model": "AMD EPYC",
            "git_sha": "a" * 40, "torch": "2.13.0", "mpi4py": "4.1.2", "numpy": "2.4.6", "h5py": "3.16.0",
            "python": "3.11.7", "final_test_accuracy": 0.9, "host_cores": 2}
    arrays = {"timing/wall": np.array([[seconds]]), "timing/eval": np.zeros((1, 1))}
    writer.append_run(str(path), arrays, {**base, **attrs}, name=name)


def test_report_keeps_runs_of_other_commits_and_machines_apart_unless_pooled(tmp_path, capsys):
    path = tmp_path / "r.h5"
    timed_run(path, "a-r0", 10.0)
    timed_run(path, "a-r1", 12.0, git_sha="b" * 40)
    timed_run(path, "a-r2", 14.0, cpu_model="Intel Xeon")
    timed_run(path, "a-r3", 16.0, torch="2.12.0")
    runs = results.read_runs(str(path))
    assert [row.stats["n"] for row in analysis.table(runs)] == [1, 1, 1, 1]
    pooled, = analysis.table(runs, pool=True)
    assert pooled.stats["n"] == 4 and pooled.stats["median"] == 13.0
    assert pooled.case.notes == "pooled: 2 git_sha, 2 torch, 2 cpu_model"
    assert report.main([str(path), "--pool", "--format", "csv"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].endswith(",notes") and table[1].endswith(',"pooled: 2 git_sha, 2 torch, 2 cpu_model"')


def test_report_flags_runs_measured_on_a_busy_host(tmp_path, capsys):
    path = tmp_path / "r.h5"
    timed_run(path, "quiet-r0", 10.0, load_avg_start=[0.5, 0.4, 0.3], load_avg_end=[2.0, 1.0, 0.5])
    timed_run(path, "busy-r0", 10.0, load_avg_start=[2.5, 2.0, 1.0], load_avg_end=[1.0, 1.0, 1.0],
              config={"layers": [16], "epochs": 1})
    assert report.main([str(path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["busy"].endswith("busy host: 1 of 1 runs") and "busy" not in lines["quiet"]


def test_to_dataframe_gives_one_row_per_run_with_the_reports_figures(tmp_path):
    pytest.importorskip("pandas")
    path = tmp_path / "r.h5"
    for repeat, (p, seconds) in enumerate([(1, 10.0), (2, 6.0), (1, 12.0), (2, 5.0)]):
        timed_run(path, f"s-p{p}-t1-r{repeat}", seconds, world_size=p, threads_per_rank=[1] * p)
    frame = results.to_dataframe(str(path))
    assert list(frame["run"]) == ["s-p1-t1-r0", "s-p2-t1-r1", "s-p1-t1-r2", "s-p2-t1-r3"]
    assert list(frame["training_s"]) == [10.0, 6.0, 12.0, 5.0]
    p2 = frame[frame["ranks"] == 2].iloc[0]
    assert p2["case"] == "s-p2-t1" and p2["speedup"] == pytest.approx(11.0 / 5.5)
    assert p2["efficiency"] == pytest.approx(11.0 / 5.5 / 2) and p2["git_sha"] == "a" * 40


def test_a_sweep_into_a_file_with_runs_says_so(tmp_path):
    path = tmp_path / "r.h5"
    assert sweep.already_held(str(path)) is None
    timed_run(path, "old-r0", 10.0)
    timed_run(path, "old-r1", 10.0)
    line = sweep.already_held(str(path))
    assert line.startswith(f"sweep: {path} already holds 2 runs;") and "--pool" in line

"""Reading and writing pffbench results files: the only module that touches them.

A results file is HDF5 and collects runs from many jobs::

    /                    attrs: format = "pffbench-results", format_version = 1
    /runs/<name>/        one group per run; attrs:
                           status      "complete" unless the writer says otherwise
                           created     UTC time of the append, ISO 8601
                           index       0, 1, 2, ... in append order (the order runs are read in)
                           json_attrs  JSON list of the attrs below that hold JSON text
                           ...         the writer's attrs: str, int, float and bool as they are;
                                       dict, list, tuple and None as JSON text (None is "null"),
                                       decoded again on read
    /runs/<name>/<key>   one dataset per array; a key with "/" nests, so "timing/compute"
                         is dataset compute in subgroup timing

Summary statistics (summarize) are computed on read and never stored.

Appends are copy-on-write, so a writer killed at any moment (SIGKILL, node failure,
Slurm time limit) cannot damage the runs already in the file: holding an exclusive
flock on the sidecar "<path>.lock", the writer copies the file to a temporary
".<file name>.<pid>.<random>.tmp" in the same directory, adds the run to the copy,
fsyncs it and renames it over the file. A killed writer leaves only its temporary,
which the next writer removes. The lock file is never deleted: deleting it would let
two writers lock two different files. Each append copies the whole file, which is
cheap for timing data.

HDF5's own file locking is turned off (h5py ``locking=False``; with older h5py set
HDF5_USE_FILE_LOCKING=FALSE) because it fails on some network file systems. Writers
are serialized by the flock sidecar, and readers need no lock because a file they
have open is never modified in place, only replaced.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import json
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import h5py
import numpy as np

FORMAT = "pffbench-results"
FORMAT_VERSION = 1
_RESERVED = ("status", "created", "index", "json_attrs")


class ResultsError(Exception):
    """A results file cannot be read or written; the message is one line naming the file."""


@dataclass
class Run:
    name: str
    attrs: dict
    arrays: dict[str, np.ndarray]

    @property
    def config(self) -> dict:
        config = self.attrs.get("config") or {}
        # A writer may have stored Config.to_json() text instead of a dict.
        return json.loads(config) if isinstance(config, str) else config


def check_name(name) -> None:
    """Raise ValueError unless ``name`` can name a run (an HDF5 group under /runs)."""
    if not isinstance(name, str) or name in ("", ".") or "/" in name:
        raise ValueError(f"run name {name!r} must be a non-empty string without '/'")


def unappendable(path: str) -> str | None:
    """One line saying why append_run(path, ...) would fail, checked before a
    run starts so that no finished run is lost to a wrong --out; None if it
    would not (an existing pffbench results file, or a new file in a folder
    that exists or can be made)."""
    if os.path.isdir(path):
        return f"{path} is a folder, not a results file"
    if os.path.exists(path):
        try:
            with _open(path):
                pass
        except ResultsError as error:
            return str(error)
    problem = unwritable_parent(path)
    if problem or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        return problem  # a folder append_run will make: nothing to try the lock on yet
    try:  # the lock append_run takes: some cluster file systems refuse flock (Lustre mounted noflock)
        with _exclusive_lock(os.path.realpath(path), timeout=0):
            pass
    except ResultsError:
        pass  # held by another writer right now: append_run will wait for it
    except OSError as error:
        return f"{path}: cannot lock it for appending ({error.strerror or error}); put results on a file " \
               f"system with flock, e.g. not a Lustre mount with noflock"
    return None


def unwritable_parent(path: str) -> str | None:
    """One line if the file ``path`` cannot be created for want of a folder to put it in, else None."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return f"cannot create {path}: {folder} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot create {path}: no permission to write in {folder}"
    return None


def append_run(path: str, arrays: dict[str, np.ndarray], attrs: dict, name: str | None = None,
               status: str = "complete", lock_timeout: float = 60.0) -> str:
    """Append one run as group /runs/<name> and return the name used.

    name None picks "<variant>-p<world_size>-<UTC time>" from attrs ("run" without a
    variant); a name already in the file gets a suffix "-2", "-3", ... so no run is
    ever overwritten. Bad arguments raise ValueError or TypeError before the file is
    touched; trouble with the file raises ResultsError.
    """
    stored = _encode_attrs(attrs)
    stored["status"] = status
    for key in arrays:
        if not isinstance(key, str) or any(part in ("", ".") for part in key.split("/")):
            raise ValueError(f"array key {key!r} must be a string of non-empty '/'-separated parts")
    if name is not None:
        check_name(name)

    # Resolve symlinks so the rename replaces the file, not the link.
    path = os.path.realpath(path)
    directory, base = os.path.split(path)
    try:
        os.makedirs(directory, exist_ok=True)
        with _exclusive_lock(path, lock_timeout):
            # Under the lock no other writer is alive, so any temporary is a dead one's; matched exactly,
            # as ".{base}.*.tmp" also matches ".{base}.x.<pid>.<hex>.tmp", a temporary of "{base}.x", whose
            # writer holds another lock.
            ours = re.compile(re.escape(f".{base}.") + r"\d+\.[0-9a-f]{8}\.tmp")
            for stale in os.listdir(directory):
                if ours.fullmatch(stale):
                    os.remove(os.path.join(directory, stale))
            tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            try:
                if os.path.exists(path):
                    with _open(path):  # raises for a file that is not ours, before any copy
                        pass
                    shutil.copyfile(path, tmp)
                    shutil.copymode(path, tmp)
                with h5py.File(tmp, "a", locking=False) as f:
                    if "runs" not in f:
                        f.attrs["format"] = FORMAT
                        f.attrs["format_version"] = FORMAT_VERSION
                        f.create_group("runs")
                    name = _write_run(f["runs"], name or _default_name(attrs), arrays, stored)
                with open(tmp, "rb") as written:
                    os.fsync(written.fileno())
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
            _fsync_dir(directory)
    except OSError as e:
        raise ResultsError(f"{path}: cannot append run: {_one_line(e)}") from e
    return name


def read_runs(path: str, names: list[str] | None = None) -> list[Run]:
    """The runs in path (all, or those named), in the order they were appended."""
    with _open(path) as f:
        runs = f["runs"]
        missing = [n for n in names or () if n not in runs]
        if missing:
            raise ResultsError(f"{path}: no run named {', '.join(missing)}")
        found = [_read_run(name, runs[name]) for name in (runs if names is None else names)]
    return sorted(found, key=lambda run: run.attrs["index"])


def list_runs(path: str) -> list[str]:
    """Names of the runs in path, in the order they were appended."""
    with _open(path) as f:
        runs = f["runs"]
        return sorted(runs, key=lambda name: runs[name].attrs["index"])


def summarize(values) -> dict:
    """min, q1, median, q3, max, iqr (numpy's default linear percentiles) and n of a 1-D sample."""
    sample = np.asarray(values, dtype=float)
    if sample.ndim != 1 or sample.size == 0:
        raise ValueError(f"summarize() needs a non-empty 1-D sample, got shape {sample.shape}")
    q1, median, q3 = np.percentile(sample, [25, 50, 75])
    return {"min": float(sample.min()), "q1": float(q1), "median": float(median), "q3": float(q3),
            "max": float(sample.max()), "iqr": float(q3 - q1), "n": int(sample.size)}


def provenance() -> dict:
    """Where and with what this process runs, as attrs for append_run; never raises.

    Versions read from package metadata are "unavailable" when a package is missing;
    git_sha is "unknown" outside a git checkout or without git; Slurm values are ""
    outside Slurm.
    """
    info = {"python": platform.python_version()}
    for package in ("mpi4py", "torch", "numpy", "h5py"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "unavailable"
    info["mpi_library"] = _mpi_library()
    info["git_sha"] = _git_sha()
    for key, var in (("slurm_job_id", "SLURM_JOB_ID"), ("slurm_step_id", "SLURM_STEP_ID"),
                     ("slurm_nodelist", "SLURM_JOB_NODELIST")):
        info[key] = os.environ.get(var, "")
    info["hostname"] = socket.gethostname()
    info["platform"] = platform.platform()
    return info


def _mpi_library() -> str:
    try:
        from mpi4py import MPI
        # Open MPI ends the string with a NUL byte, which HDF5 string attributes refuse
        return MPI.Get_library_version().replace("\x00", "").splitlines()[0].strip()
    except Exception:  # a broken MPI install must not cost the measurements
        return "unavailable"


def _git_sha() -> str:
    package_dir = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        return subprocess.run(["git", *args], cwd=package_dir, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + "-dirty" if dirty else sha


@contextlib.contextmanager
def _exclusive_lock(path: str, timeout: float):
    lock_path = path + ".lock"
    with open(lock_path, "a") as lock_file:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ResultsError(f"{path}: another job is writing to this file "
                                       f"(lock {lock_path} still held after {timeout:g} s)") from None
                time.sleep(0.05)
        # Closing the file releases the lock, and so does the kernel when the process dies.
        yield


@contextlib.contextmanager
def _open(path: str):
    if not os.path.exists(path):
        raise ResultsError(f"{path}: no such results file")
    if not h5py.is_hdf5(path):
        raise ResultsError(f"{path}: not an HDF5 file, so not a pffbench results file")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as e:
        raise ResultsError(f"{path}: cannot open HDF5 file: {_one_line(e)}") from e
    with f:
        if f.attrs.get("format") != FORMAT or "runs" not in f:
            raise ResultsError(f"{path}: an HDF5 file but not a pffbench results file")
        version = f.attrs.get("format_version", 0)
        if version > FORMAT_VERSION:
            raise ResultsError(f"{path}: format version {version} is newer than this pffbench "
                               f"reads ({FORMAT_VERSION}); upgrade pffbench")
        yield f


def _write_run(runs: h5py.Group, name: str, arrays: dict, stored: dict) -> str:
    unique, suffix = name, 1
    while unique in runs:
        suffix += 1
        unique = f"{name}-{suffix}"
    indices = [runs[other].attrs["index"] for other in runs]
    group = runs.create_group(unique)
    group.attrs.update(stored)
    group.attrs["index"] = max(indices, default=-1) + 1
    group.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    for key, array in arrays.items():
        group.create_dataset(key, data=np.asarray(array))
    return unique


def _read_run(name: str, group: h5py.Group) -> Run:
    json_keys = set(json.loads(group.attrs.get("json_attrs", "[]")))
    attrs = {key: json.loads(value) if key in json_keys else _native(value)
             for key, value in group.attrs.items() if key != "json_attrs"}
    arrays = {}

    def collect(key, obj):
        if isinstance(obj, h5py.Dataset):
            arrays[key] = np.asarray(obj[()])

    group.visititems(collect)
    return Run(name=name, attrs=attrs, arrays=arrays)


def _encode_attrs(attrs: dict) -> dict:
    stored, json_keys = {}, []
    for key, value in attrs.items():
        if key in _RESERVED:
            raise ValueError(f"attrs key {key!r} is reserved; results.py sets it")
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, (str, bool, int, float)):
            stored[key] = value
        elif value is None or isinstance(value, (dict, list, tuple)):
            stored[key] = json.dumps(value, default=_json_default)
            json_keys.append(key)
        else:
            raise TypeError(f"attrs[{key!r}]: cannot store a {type(value).__name__}")
    stored["json_attrs"] = json.dumps(json_keys)
    return stored


def _json_default(obj):
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    raise TypeError(f"cannot store a {type(obj).__name__} in a JSON attribute")


def _native(value):
    return value.item() if isinstance(value, np.generic) else value


def _default_name(attrs: dict) -> str:
    parts = [str(attrs.get("variant") or "run").replace("/", "_")]
    if attrs.get("world_size") is not None:
        parts.append(f"p{attrs['world_size']}")
    parts.append(datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    return "-".join(parts)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network file systems refuse fsync on a directory; the rename has happened
    finally:
        os.close(fd)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())

"""Appending runs to a results file (format: store/format.py): copy on write
under a flock, so that a writer killed at any moment cannot damage the runs
already in the file; and the checks that let a run refuse a --out it could
not write before it trains."""
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
from datetime import datetime, timezone

import h5py
import numpy as np

from .atomic import atomic_file
from .format import FORMAT, FORMAT_VERSION, RESERVED, ResultsError, one_line, open_results


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
            with open_results(path):
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
    except PermissionError:
        return f"{path}: permission denied: cannot open its lock file {path}.lock for writing (the folder " \
               f"or that file is not writable by this user)"
    except OSError as error:
        return f"{path}: cannot lock it for appending ({error.strerror or error}); put results on a file " \
               f"system with flock, e.g. not a Lustre mount with noflock"
    return None


def missing_folder(path: str) -> str | None:
    """The folder of ``path`` if it does not exist yet (append_run creates it), else None."""
    folder = os.path.dirname(os.path.abspath(path))
    return None if os.path.isdir(folder) else folder


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
            added = []
            atomic_file(path, lambda temp: added.append(_copy_and_add(path, temp, name or _default_name(attrs),
                                                                      arrays, stored)), temp=tmp)
            name = added[0]
    except OSError as e:
        raise ResultsError(f"{path}: cannot append run: {one_line(e)}") from e
    return name


def _copy_and_add(path: str, temp: str, name: str, arrays: dict, stored: dict) -> str:
    """The file at ``path`` (if any) copied to ``temp``, with the run added; returns its unique name."""
    if os.path.exists(path):
        with open_results(path):  # raises for a file that is not ours, before any copy
            pass
        shutil.copyfile(path, temp)
        shutil.copymode(path, temp)
    with h5py.File(temp, "a", locking=False) as f:
        if "runs" not in f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.create_group("runs")
        return _write_run(f["runs"], name, arrays, stored)


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


def _encode_attrs(attrs: dict) -> dict:
    stored, json_keys = {}, []
    for key, value in attrs.items():
        if key in RESERVED:
            raise ValueError(f"attrs key {key!r} is reserved; the writer sets it")
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


def _default_name(attrs: dict) -> str:
    parts = [str(attrs.get("variant") or "run").replace("/", "_")]
    if attrs.get("world_size") is not None:
        parts.append(f"p{attrs['world_size']}")
    parts.append(datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    return "-".join(parts)

"""What a run writes, tried before it trains (run and sweep alike), so that
no finished run is lost to an output it could not write.

Each check does what the write will do, on the path the run will use, even
when the folder does not exist yet (a per-job ``results/job42/``): it makes
the folder, and

- ``--out``: appends the run's planned attributes under the file's lock,
  to a probe file it then removes (writer.unappendable): a file system
  without flock (NFS without lockd, Lustre mounted ``noflock``), a damaged
  file the append cannot read, a value HDF5 refuses are all found here;
- ``--model-out``: writes the file as the atomic write of the model will
  (store/atomic.py), under its own name if it is not there yet, then
  removes it;
- ``--checkpoint-dir``: writes a file in the folder and renames it, as the
  atomic write of a checkpoint does, then removes it.

A refusal says the OS's own reason ("Read-only file system", "Disk quota
exceeded", "File name too long"), from the write that failed.  The folders
made stay (the run writes there anyway); a lock file the probe of --out made
does not.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import socket

from .atomic import atomic_write
from .format import ResultsError, one_line
from . import writer


def output_problem(config, world_size: int = 1) -> str | None:
    """One line if a run of ``config`` on ``world_size`` ranks could not write
    what it writes (results, model, checkpoints), else None."""
    if config.name is not None:
        try:
            writer.check_name(config.name)
        except ValueError as error:
            return f"--name: {error}"
    if config.out == "" or config.model_out == "":
        return "--out and --model-out must name a file"
    attrs = planned_attrs(config, world_size)
    try:  # a value HDF5 refuses (a string with a NUL byte, a name it cannot encode): refused here, not after training
        writer.check_storable({}, attrs, config.name)
    except (ResultsError, ValueError, TypeError) as error:
        return f"the run could not be stored in a results file ({one_line(error)}); change the name or value"
    problem = writer.unappendable(config.out, {}, attrs, config.name)
    if problem:
        return f"--out: {problem}"
    if config.model_out is not None:
        if os.path.isdir(config.model_out):
            return f"--model-out: {config.model_out} is a folder; name the file to save the model in"
        problem = writer.unwritable_parent(config.model_out) or file_problem(config.model_out)
        if problem:
            return f"--model-out: {problem}"
    if config.checkpoint_dir is not None:
        if os.path.exists(config.checkpoint_dir) and not os.path.isdir(config.checkpoint_dir):
            return f"--checkpoint-dir: {config.checkpoint_dir} is a file, not a folder"
        problem = writer.unwritable_parent(config.checkpoint_dir) or folder_problem(config.checkpoint_dir)
        if problem:
            return f"--checkpoint-dir: {problem}"
    return None


def folder_problem(folder: str) -> str | None:
    """One line if a file cannot be written into ``folder`` (made if missing)
    and renamed there, as atomic_write does; else None."""
    error = _probe_folder(folder)
    return f"cannot write a file in {folder}: {_reason(error)}" if error else None


def _probe_folder(folder: str) -> Exception | None:
    probe = os.path.join(folder, f".pffbench-probe.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        os.makedirs(folder, exist_ok=True)
        atomic_write(probe, lambda f: f.write(b"pffbench probe\n"))
    except Exception as error:  # noqa: BLE001 (the OS's reason, whatever raised it)
        return error
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)
    return None


def file_problem(path: str) -> str | None:
    """One line if the file ``path`` could not be written as atomic_write
    writes it (a temporary in its folder, made if missing, renamed to
    ``path``); else None.  A file not there yet is written under its own name
    and removed, so that a name the file system refuses (longer than its
    NAME_MAX) is found here, not after training; one that is there is kept:
    a file renamed over another in its folder tries the same."""
    if os.path.lexists(path):
        error = _probe_folder(os.path.dirname(os.path.abspath(path)))
    else:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            atomic_write(path, lambda f: f.write(b"pffbench probe\n"))
            error = None
        except Exception as failure:  # noqa: BLE001
            error = failure
        with contextlib.suppress(OSError):
            os.remove(path)
    return f"cannot write {path}: {_reason(error)}" if error else None


def _reason(error: BaseException) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else one_line(error)


def planned_attrs(config, world_size: int) -> dict:
    """The attributes a run of ``config`` will store that come from outside
    pffbench (the config's strings and paths, the name, the host, the
    versions), with placeholder numbers: what HDF5 could refuse is in here."""
    return {"variant": config.variant, "dataset": config.dataset, "config": dataclasses.asdict(config),
            "world_size": world_size, "hostnames": [socket.gethostname()] * world_size,
            "threads_per_rank": [1] * world_size, "start_utc": "", "end_utc": "",
            **writer.provenance()}

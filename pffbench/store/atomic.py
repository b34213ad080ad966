"""The one atomic write: a file is either its old self or the new one, never
half written, whatever kills the writer (SIGKILL, node failure, a Slurm time
limit).  Used for checkpoints, models (--model-out) and results files."""
from __future__ import annotations

import contextlib
import os


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable; some network file systems refuse
    fsync on a folder (the rename has happened all the same)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_file(path: str, fill, temp: str | None = None) -> None:
    """``fill(temp)`` makes the file's new contents at the path ``temp``
    (default ``<path>.tmp<pid>``, beside ``path``); then it is fsynced and
    renamed over ``path``, and the folder fsynced.  The temporary is removed
    if anything fails."""
    temp = temp or f"{path}.tmp{os.getpid()}"
    try:
        fill(temp)
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write(path: str, write, temp: str | None = None) -> None:
    """``write(file)`` into a file opened for binary writing, atomically (``atomic_file``)."""
    def fill(temp_path: str) -> None:
        with open(temp_path, "wb") as f:
            write(f)
    atomic_file(path, fill, temp)

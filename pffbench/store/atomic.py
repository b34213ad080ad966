"""The one atomic write: a file is either its old self or the new one, never
half written, whatever kills the writer (SIGKILL, node failure, a Slurm time
limit).  Used for checkpoints, models (--model-out), results files, plots and
their sidecar.

Whatever fails on the way comes out as ``WriteFailed`` when the OS refused
something, whatever type the library that was writing gave its error (torch
reports a full disk as ``RuntimeError: ... unexpected pos N vs M``, h5py as an
OSError without an errno): one line naming the file and the OS's own reason.

The temporary is ``.pffbench-<pid>-<random>.tmp`` in the file's folder: its
name does not grow with the file's, so a name the file system takes (up to
NAME_MAX, 255 bytes on most) is never refused for its temporary's sake.
"""
from __future__ import annotations

import contextlib
import errno as errnos
import os
import re
import secrets


class WriteFailed(OSError):
    """The file ``filename`` could not be written; ``strerror`` is the OS's
    reason ("No space left on device", "Read-only file system", ...), and
    ``str()`` the one line "cannot write FILE: REASON"."""

    def __init__(self, path: str, reason: str, code: int | None = None):
        super().__init__(code, reason, path)

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def os_reason(error: BaseException, folder: str | None = None) -> tuple[int | None, str] | None:
    """(errno, the OS's words) behind ``error``, or None if the OS did not
    refuse anything: the errno of the first OSError in ``error``'s chain
    (``raise ... from``, or raised while handling it: torch's RuntimeError on a
    full disk is raised while handling ENOSPC), else an "errno = N" in its text
    (HDF5's messages), else ENOSPC if ``folder``'s file system has no free
    block left (a library that swallowed the OS's error)."""
    seen, link = set(), error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno:
            return link.errno, link.strerror or os.strerror(link.errno)
        match = re.search(r"errno\s*=\s*(\d+)", str(link))
        if match and int(match.group(1)):
            return int(match.group(1)), os.strerror(int(match.group(1)))
        link = link.__cause__ or link.__context__
    if folder is not None:
        with contextlib.suppress(OSError):
            stats = os.statvfs(folder)
            # root may use the blocks reserved for it (ext4's 5 %): full for root only when none is free
            if stats.f_blocks and (stats.f_bfree if os.geteuid() == 0 else stats.f_bavail) == 0:
                return errnos.ENOSPC, os.strerror(errnos.ENOSPC)
    return None


def describe(path: str, error: BaseException) -> str:
    """One line saying why ``path`` could not be written, for any exception:
    the OS's reason if it gave one, else the library's error and its type."""
    if isinstance(error, WriteFailed):
        return str(error)
    reason = os_reason(error, os.path.dirname(os.path.abspath(path)))
    text = " ".join(str(error).split()) or type(error).__name__
    return f"cannot write {path}: {reason[1] if reason else f'{type(error).__name__}: {text}'}"


def temporary(folder: str) -> str:
    """A fresh temporary's path in ``folder``, of a fixed length."""
    return os.path.join(folder, f".pffbench-{os.getpid()}-{secrets.token_hex(4)}.tmp")


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


def atomic_file(path: str, fill, temp: str | None = None, passes: tuple = ()) -> None:
    """``fill(temp)`` makes the file's new contents at the path ``temp``
    (default ``temporary``, beside ``path``); then it is fsynced and renamed
    over ``path``, and the folder fsynced.  The temporary is removed if
    anything fails.  Raises WriteFailed (naming ``path``, not the temporary)
    for any failure the OS caused; another error of ``fill`` (a library
    refusing the contents) as it is, and so the exception types in
    ``passes``: the caller's own verdicts on the contents (a download's bad
    checksum), whatever OS error they were raised while handling."""
    folder = os.path.dirname(os.path.abspath(path))
    temp = temp or temporary(folder)
    try:
        fill(temp)
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, path)
    except Exception as error:
        reason = None if isinstance(error, passes) else os_reason(error, folder)
        if reason is None:
            raise
        raise WriteFailed(path, reason[1], reason[0]) from error
    finally:
        with contextlib.suppress(OSError):
            os.remove(temp)
    fsync_dir(folder)


class _Recording:
    """The file a writer gets: it keeps the OSError of a failed write or
    flush, which the writing library may replace by an error of its own."""

    def __init__(self, file):
        self._file, self.error = file, None

    def write(self, data):
        try:
            return self._file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self):
        try:
            return self._file.flush()
        except OSError as error:
            self.error = self.error or error
            raise

    def __getattr__(self, name):
        return getattr(self._file, name)


def atomic_write(path: str, write, temp: str | None = None) -> None:
    """``write(file)`` into a file opened for binary writing, atomically (``atomic_file``)."""
    def fill(temp_path: str) -> None:
        with open(temp_path, "wb") as f:
            recording = _Recording(f)
            try:
                write(recording)
            except Exception as error:
                failed = recording.error
                if failed is not None and failed is not error:  # the OS's error, not the library's rewording
                    raise WriteFailed(path, failed.strerror or str(failed), failed.errno) from error
                raise
    atomic_file(path, fill, temp)

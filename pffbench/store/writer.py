"""Appending runs to a results file (format: store/format.py): copy on write
under a flock, so that a writer killed at any moment cannot damage the runs
already in the file; and the checks that let a run refuse a --out it could
not write before it trains."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import time
import zlib
from datetime import datetime, timezone

import h5py
import numpy as np

from .atomic import atomic_file
from .encode import encode_attrs as _encode_attrs, fixed_text
from .format import FORMAT, FORMAT_VERSION, ResultsError, dataset_meta, one_line, open_results, section_name
from .provenance import provenance  # noqa: F401  (run.py records it with every run)

# HDF5 1.10's object formats: object headers, link, attribute and chunk indexes carry checksums (damage reads
# as an error, not as other data), and attributes of any size (the older format stops at 64 KiB)
LIBVER = ("v110", "latest")


def check_name(name) -> None:
    """Raise ValueError unless ``name`` can name a run (an HDF5 group under /runs)."""
    if not isinstance(name, str) or name in ("", ".") or "/" in name:
        raise ValueError(f"run name {name!r} must be a non-empty string without '/'")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a byte of another encoding in argv (Python keeps it as a surrogate)
        raise ValueError(f"run name {name!r} must be valid Unicode text") from None
    if "\x00" in name:
        raise ValueError(f"run name {name!r} must not hold a NUL character")


class LockBusy(ResultsError):
    """Another writer holds the file's lock past the timeout."""


def unappendable(path: str, arrays: dict | None = None, attrs: dict | None = None,
                 name: str | None = None) -> str | None:
    """One line saying why append_run(path, arrays, attrs, name) would fail,
    found before a run trains so that no finished run is lost to a wrong --out;
    None if it would not.  It does what the append does, on the same path:
    makes the folder, takes the lock, copies the file, adds the run (``attrs``:
    the values the run will store) and renames the copy, to a probe file that
    it then removes.  A lock held by another writer right now is no problem
    (append_run waits for it)."""
    if os.path.isdir(path):
        return f"{path} is a folder, not a results file"
    problem = unwritable_parent(path)
    if problem:
        return problem
    try:
        append_run(path, arrays or {}, attrs or {}, name=name, lock_timeout=0, probe=True)
    except LockBusy:
        return None
    except (ResultsError, ValueError, TypeError) as error:
        return one_line(error)
    return None


def missing_folder(path: str) -> str | None:
    """The folder of ``path`` if it does not exist yet (append_run creates it), else None."""
    folder = os.path.dirname(os.path.abspath(path))
    return None if os.path.isdir(folder) else folder


def unwritable_parent(path: str) -> str | None:
    """One line if the file ``path`` cannot be created for want of a folder to put it in, else None.
    Whether the OS lets the folder be written in is the probes' to find (they write there: the OS gives its
    own reason, "Read-only file system", "Disk quota exceeded", ...); a permission bit says nothing of that."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return f"cannot create {path}: {folder} is a file, not a folder"
    return None


def _temporary_name(base: str) -> str:
    """The stem of results file ``base``'s temporaries, ``.pffbench-<digest of base>``: of a fixed length, so
    that any name the file system takes has temporaries it takes too; and unique to ``base``, so that a
    writer removes only its own file's dead temporaries."""
    return ".pffbench-" + hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def append_run(path: str, arrays: dict[str, np.ndarray], attrs: dict, name: str | None = None,
               status: str = "complete", lock_timeout: float = 60.0, probe: bool = False,
               lock: bool = True, section: str = "runs") -> str:
    """Append one run as group /runs/<name> and return the name used
    (``section`` "links": a link measurement of pffbench.links, as /links/<name>,
    which read_runs leaves out).

    name None picks "<variant>-p<world_size>-<UTC time>" from attrs ("run" without a
    variant); a name already in the file gets a suffix "-2", "-3", ... so no run is
    ever overwritten. Bad arguments raise ValueError or TypeError before the file is
    touched; anything else that goes wrong (the file, the lock, a value HDF5 refuses)
    raises ResultsError, one line naming the file, and leaves the file as it was.
    ``probe``: do all of that, but rename the result to a probe file beside ``path``
    and remove it (unappendable).  ``lock`` False: no flock (a rescue file of this
    process's own, which no other writer knows).
    """
    stored = _encode_attrs(attrs)
    stored["status"] = fixed_text(status)
    _check_keys(arrays)
    if name is not None:
        check_name(name)
    section_name(section)

    # Resolve symlinks so the rename replaces the file, not the link.
    path = os.path.realpath(path)
    directory, base = os.path.split(path)
    lock_path = path + ".lock"
    try:
        os.makedirs(directory, exist_ok=True)
        with _exclusive_lock(path, lock_timeout) if lock else contextlib.nullcontext():
            # Under the lock no other writer is alive, so any temporary is a dead one's; matched exactly:
            # this file's (by the digest of its name), and those of versions that named them after the file
            # (".{base}.<pid>.<hex>.tmp"; ".{base}.*.tmp" would also match a temporary of "{base}.x")
            stem = _temporary_name(base)
            ours = re.compile(f"(?:{re.escape(stem)}|{re.escape('.' + base)})" + r"\.\d+\.[0-9a-f]{8}\.tmp")
            for stale in os.listdir(directory) if lock else ():
                if ours.fullmatch(stale):
                    os.remove(os.path.join(directory, stale))
            tmp, target = (os.path.join(directory, f"{stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
                           for _ in range(2))
            added = []
            atomic_file(target if probe else path,
                        lambda temp: added.append(_copy_and_add(path, temp, name or _default_name(attrs),
                                                                arrays, stored, section)), temp=tmp)
            if probe:
                os.remove(target)
            name = added[0]
    except ResultsError:
        raise
    except OSError as e:
        if e.errno:  # the OS refused: its own reason, naming the user's file (not a temporary)
            raise ResultsError(_refused(path, lock_path, e)) from e
        raise ResultsError(f"{path}: cannot append run: {_what(e)}") from e  # h5py's OSError without one
    except Exception as e:  # h5py's KeyError, RuntimeError, ValueError, UnicodeError, ...
        raise ResultsError(f"{path}: cannot append run: {_what(e)}") from e
    return name


def _refused(path: str, lock_path: str, error: OSError) -> str:
    """One line: why the OS refused to let ``path`` be appended to."""
    reason = error.strerror or one_line(error)
    if error.filename != lock_path or error.errno not in (errno.EACCES, errno.EPERM, errno.ENAMETOOLONG):
        return f"cannot write {path}: {reason}"  # the lock file is just the first thing written
    if error.errno == errno.ENAMETOOLONG:
        with contextlib.suppress(OSError, ValueError):
            most = os.pathconf(os.path.dirname(path), "PC_NAME_MAX") - len(".lock")
            return (f"cannot write {path}: {reason}: its lock file adds 5 bytes to the name, which may have at "
                    f"most {most} bytes here (it has {len(os.fsencode(os.path.basename(path)))})")
    return f"cannot write {path} (its lock file {lock_path}): {reason}"


def check_storable(arrays: dict, attrs: dict, name: str | None = None) -> None:
    """Raise ResultsError (one line) if HDF5 would refuse to store this run,
    ValueError or TypeError for arguments append_run refuses: the run is
    written into a results file in memory, exactly as append_run writes it."""
    stored = _encode_attrs(attrs)
    _check_keys(arrays)
    if name is not None:
        check_name(name)
    try:
        with h5py.File(f"probe-{secrets.token_hex(8)}.h5", "w", driver="core", backing_store=False,
                       libver=LIBVER) as f:
            _write_run(f.create_group("runs"), name or _default_name(attrs), arrays, stored)
    except Exception as e:
        raise ResultsError(f"cannot store the run: {_what(e)}") from e


def _what(error: Exception) -> str:
    text = one_line(error)
    return text if isinstance(error, OSError) else f"{type(error).__name__}: {text}"


def _check_keys(arrays: dict) -> None:
    for key in arrays:
        if not isinstance(key, str) or any(part in ("", ".") for part in key.split("/")):
            raise ValueError(f"array key {key!r} must be a string of non-empty '/'-separated parts")
    for key in arrays:  # a dataset "a" cannot also be the group of "a/b"
        for other in arrays:
            if other.startswith(key + "/"):
                raise ValueError(f"array keys {key!r} and {other!r}: {key!r} cannot be both an array and a group")


def _copy_and_add(path: str, temp: str, name: str, arrays: dict, stored: dict, section: str = "runs") -> str:
    """The file at ``path`` (if any) copied to ``temp``, with the run added; returns its unique name."""
    if os.path.exists(path):
        with open_results(path):  # raises for a file that is not ours, before any copy
            pass
        shutil.copyfile(path, temp)
        shutil.copymode(path, temp)
    with h5py.File(temp, "a", locking=False, libver=LIBVER) as f:
        if "runs" not in f:
            f.attrs["format"] = fixed_text(FORMAT)
            f.attrs["format_version"] = FORMAT_VERSION
            f.create_group("runs")
        return _write_run(f.require_group(section), name, arrays, stored)


@contextlib.contextmanager
def _exclusive_lock(path: str, timeout: float):
    """Hold an exclusive flock on ``<path>.lock`` for the block.  The lock
    file exists only while a writer holds it: the holder removes it before
    releasing the lock, so no ``.lock`` is left beside the results file.
    Safe with that removal: a writer that opened the file before the holder
    removed it may then lock the removed inode, so after every flock the
    writer checks that the inode it locked is still the one at the path, and
    otherwise opens the path afresh and tries again (the usual
    lock-file-with-unlink protocol: two writers never hold it at once)."""
    lock_path = path + ".lock"
    deadline = time.monotonic() + timeout
    while True:
        lock_file = open(lock_path, "a")
        try:
            _flock_by(lock_file, deadline, path, lock_path, timeout)
            try:
                current = os.path.samestat(os.fstat(lock_file.fileno()), os.stat(lock_path))
            except FileNotFoundError:  # removed by the writer before us: lock the next one
                current = False
        except BaseException:
            lock_file.close()
            raise
        if current:
            break
        lock_file.close()
    try:
        yield
    finally:
        # removed while still held (see above); the kernel releases the lock when the file closes or the
        # process dies, so a killed writer at most leaves a lock file the next writer removes
        with contextlib.suppress(OSError):
            os.remove(lock_path)
        lock_file.close()


def _flock_by(lock_file, deadline: float, path: str, lock_path: str, timeout: float) -> None:
    """flock ``lock_file`` exclusively, polling until ``deadline`` (time.monotonic); LockBusy after it."""
    while True:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockBusy(f"{path}: another job is writing to this file "
                               f"(lock {lock_path} still held after {timeout:g} s)") from None
            time.sleep(0.05)
        except OSError as error:  # ENOLCK, EOPNOTSUPP, ENOSYS: NFS without lockd, Lustre mounted noflock
            raise ResultsError(f"{path}: cannot lock it for appending ({error.strerror or error}); put "
                               f"results on a file system with flock, e.g. not a Lustre mount with "
                               f"noflock") from None


def _write_run(runs: h5py.Group, name: str, arrays: dict, stored: dict) -> str:
    unique, suffix = name, 1
    while unique in runs:
        suffix += 1
        unique = f"{name}-{suffix}"
    group = runs.create_group(unique)
    group.attrs.update(stored)
    group.attrs["index"] = _next_index(runs)
    group.attrs["created"] = fixed_text(datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    for key, array in arrays.items():
        data = np.ascontiguousarray(array)
        dataset = group.create_dataset(key, data=data)
        axes, units = dataset_meta(key, data.ndim)
        dataset.attrs["axes"] = fixed_text(axes)
        dataset.attrs["units"] = fixed_text(units)
        # so that damaged data reads as an error, not as other numbers (HDF5's own Fletcher-32 filter
        # passes a chunk zeroed together with its checksum, measured); kept in the dataset's object
        # header, which HDF5 checksums
        dataset.attrs["crc32"] = np.uint32(zlib.crc32(data.tobytes()))
    return unique


def _next_index(runs: h5py.Group) -> int:
    """One more than the largest index in the file: runs are read in this order.  A damaged run's
    index cannot be read (the readers skip that run); counting every run keeps the new one last."""
    largest = -1
    for other in runs:
        with contextlib.suppress(Exception):
            largest = max(largest, int(runs[other].attrs["index"]))
    return max(largest + 1, len(runs) - 1)


def _default_name(attrs: dict) -> str:
    parts = [str(attrs.get("variant") or "run").replace("/", "_")]
    if attrs.get("world_size") is not None:
        parts.append(f"p{attrs['world_size']}")
    parts.append(datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    return "-".join(parts)

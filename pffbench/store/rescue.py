"""Where a finished run goes when it cannot be appended to --out: a results
file of its own, so that nothing that goes wrong while recording a run
(a lock, a full disk, a damaged file, a value HDF5 refuses) loses it."""
from __future__ import annotations

import os
import tempfile

import numpy as np

from . import writer
from .atomic import atomic_write


def folders(out: str) -> list[str]:
    """Where a rescue goes, first that takes it: --out's own folder, the
    folder next to it (its parent), the working folder, the temp folder
    (often node-local and wiped with the job: last)."""
    here = os.path.dirname(os.path.abspath(out))
    return list(dict.fromkeys((here, os.path.dirname(here), os.getcwd(), tempfile.gettempdir())))


def rescue_name(folder: str, user_path: str, suffix: str) -> str:
    """``<stem of user_path>-unsaved-<pid><suffix>`` in ``folder``, the stem
    cut so that the name fits the file system's NAME_MAX: the user's name may
    take all of it (a 249-byte --out), a rescue must still fit."""
    stem = os.path.splitext(os.path.basename(user_path))[0] or "results"
    tail = f"-unsaved-{os.getpid()}{suffix}"
    try:
        most = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        most = 255
    room = max(most - len(os.fsencode(tail)), 1)
    cut = os.fsencode(stem)[:room].decode("utf-8", "ignore") or "results"
    return os.path.join(folder, cut + tail)


def rescue_run(out: str, arrays: dict, attrs: dict, name: str | None, status: str) -> tuple[str, str, list[str]]:
    """Write the run into ``<stem>-unsaved-<pid>.h5``, in the first of
    ``folders(out)`` that takes it.  No lock is taken (the file is this
    process's own).  A value HDF5 refuses is kept as text (storable).
    Returns (file, run name, what was changed); raises the last error if no
    folder takes it."""
    error: Exception = RuntimeError("no folder to write in")
    for folder in folders(out):
        path = rescue_name(folder, out, ".h5")
        for lenient in (False, True):
            try:
                kept = storable(arrays, attrs, name) if lenient else (arrays, attrs, name, [])
                stored = writer.append_run(path, *kept[:2], name=kept[2], status=status, lock=False)
                return path, stored, kept[3]
            except Exception as e:  # noqa: BLE001 (any failure: try the next way)
                error = e
    raise error


def rescue_file(out: str, user_path: str, suffix: str, write) -> str:
    """A file that could not be written at ``user_path`` (the model of
    --model-out): ``write(file)`` into ``<stem>-unsaved-<pid><suffix>``
    beside where a run's rescue goes (``folders(out)``), atomically; returns
    its path, or raises the last error if no folder takes it."""
    error: Exception = RuntimeError("no folder to write in")
    for folder in folders(out):
        path = rescue_name(folder, user_path, suffix)
        try:
            atomic_write(path, write)
            return path
        except Exception as e:  # noqa: BLE001
            error = e
    raise error


def storable(arrays: dict, attrs: dict, name: str | None) -> tuple[dict, dict, str | None, list[str]]:
    """The run made storable whatever it holds: a name, attribute or key HDF5
    refuses is kept as its ascii() text, an array HDF5 refuses as float64, or
    left out; returns (arrays, attrs, name, what was changed)."""
    changed = []
    if name is not None and not _stores(name=name):
        name, changed = ascii(name).replace("/", "_"), ["name"]
    kept_attrs = {}
    for key, value in attrs.items():
        if _stores(attrs={key: value}):
            kept_attrs[key] = value
        else:
            text_key = key if isinstance(key, str) and _stores(attrs={key: 0}) else ascii(key)
            kept_attrs[text_key] = ascii(value)
            changed.append(f"attrs[{ascii(key)}]")
    kept_arrays = {}
    for key, value in arrays.items():
        if _stores(arrays={key: value}):
            kept_arrays[key] = value
            continue
        try:
            kept_arrays[key] = np.asarray(value, dtype=np.float64)
            assert _stores(arrays={key: kept_arrays[key]})
        except Exception:  # noqa: BLE001
            kept_arrays.pop(key, None)
        changed.append(f"arrays[{ascii(key)}]")
    return kept_arrays, kept_attrs, name, changed


def _stores(arrays: dict | None = None, attrs: dict | None = None, name: str | None = None) -> bool:
    try:
        writer.check_storable(arrays or {}, attrs or {}, name)
    except Exception:  # noqa: BLE001 (ResultsError, ValueError, TypeError: not storable)
        return False
    return True

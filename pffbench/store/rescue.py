"""Where a finished run goes when it cannot be appended to --out: a results
file of its own, so that nothing that goes wrong while recording a run
(a lock, a full disk, a damaged file, a value HDF5 refuses) loses it."""
from __future__ import annotations

import os
import tempfile

from . import writer


def rescue_run(out: str, arrays: dict, attrs: dict, name: str | None, status: str) -> tuple[str, str, list[str]]:
    """Write the run into ``<stem>-unsaved-<pid>.h5``, in the first folder that
    takes it: --out's own folder, the folder next to it (its parent), the
    working folder, the temp folder (often node-local and wiped with the job:
    last).  No lock is taken (the file is this process's own).  A value HDF5
    refuses is kept as text (writer.storable).  Returns (file, run name,
    what was changed); raises the last error if no folder takes it."""
    here = os.path.dirname(os.path.abspath(out))
    folders = list(dict.fromkeys((here, os.path.dirname(here), os.getcwd(), tempfile.gettempdir())))
    stem = os.path.splitext(os.path.basename(out))[0] or "results"
    error: Exception = RuntimeError("no folder to write in")
    for folder in folders:
        path = os.path.join(folder, f"{stem}-unsaved-{os.getpid()}.h5")
        for lenient in (False, True):
            try:
                kept = writer.storable(arrays, attrs, name) if lenient else (arrays, attrs, name, [])
                stored = writer.append_run(path, *kept[:2], name=kept[2], status=status, lock=False)
                return path, stored, kept[3]
            except Exception as e:  # noqa: BLE001 (any failure: try the next way)
                error = e
    raise error

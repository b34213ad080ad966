"""The pffbench results file: its format, and opening one.  Reading is
pffbench/results.py (the public API), writing store/writer.py.

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
    /links/<name>/       the same for a link measurement of ``python -m pffbench.links``
                         (attr kind = "links"); read with read_runs(path, section="links")

Summary statistics (summarize) are computed on read and never stored.

Appends are copy-on-write, so a writer killed at any moment (SIGKILL, node failure,
Slurm time limit) cannot damage the runs already in the file: holding an exclusive
flock on the sidecar "<path>.lock", the writer copies the file to a temporary
".<file name>.<pid>.<random>.tmp" in the same directory, adds the run to the copy,
fsyncs it and renames it over the file (store/atomic.py). A killed writer leaves only its temporary,
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
import os

import h5py

FORMAT = "pffbench-results"
FORMAT_VERSION = 1
SECTIONS = ("runs", "links")  # what a results file holds: training runs, link measurements (pffbench.links)


def section_name(section: str) -> str:
    """``section`` checked: one of SECTIONS (ValueError otherwise)."""
    if section not in SECTIONS:
        raise ValueError(f"unknown results section {section!r}; expected one of {', '.join(SECTIONS)}")
    return section
RESERVED = ("status", "created", "index", "json_attrs")


class ResultsError(Exception):
    """A results file cannot be read or written; the message is one line naming the file."""


@contextlib.contextmanager
def open_results(path: str):
    if not os.path.exists(path):
        raise ResultsError(f"{path}: no such results file")
    if not h5py.is_hdf5(path):
        raise ResultsError(f"{path}: not an HDF5 file, so not a pffbench results file")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as e:
        raise ResultsError(f"{path}: cannot open HDF5 file: {one_line(e)}") from e
    with f:
        if f.attrs.get("format") != FORMAT or "runs" not in f:
            raise ResultsError(f"{path}: an HDF5 file but not a pffbench results file")
        version = f.attrs.get("format_version", 0)
        if version > FORMAT_VERSION:
            raise ResultsError(f"{path}: format version {version} is newer than this pffbench "
                               f"reads ({FORMAT_VERSION}); upgrade pffbench")
        yield f


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())

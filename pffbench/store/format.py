"""The pffbench results file: its format, and opening one.  Reading is
pffbench/results.py (the public API), writing store/writer.py.

A results file is HDF5 and collects runs from many jobs::

    /                    attrs: format = "pffbench-results", format_version = 2
    /runs/<name>/        one group per run; attrs:
                           status      "complete" unless the writer says otherwise
                           created     UTC time of the append, ISO 8601
                           index       0, 1, 2, ... in append order (the order runs are read in)
                           json_attrs  JSON list of the attrs below that hold JSON text
                           ...         the writer's attrs: str, int, float and bool as they are;
                                       a non-empty list of numbers or of strings (nested lists of
                                       numbers: rectangular) as an HDF5 array; dict, None and any
                                       other list as JSON text (None is "null"); read back as the
                                       same Python values
    /runs/<name>/<key>   one dataset per array; a key with "/" nests, so "timing/compute"
                         is dataset compute in subgroup timing; attrs axes (one name per
                         dimension, e.g. ["rank", "epoch"]) and units (e.g. "s"), from DATASETS,
                         and crc32 (zlib.crc32 of its C-order bytes; readers check it);
                         an epoch a run never reached is NaN
    /links/<name>/       the same for a link measurement of ``python -m pffbench.links``
                         (attr kind = "links"); read with read_runs(path, section="links")

Version 1 (before 2026-11) stored every list attr as JSON text and datasets without
axes/units; readers read both.  Version 2 files are written with HDF5 1.10 object
formats (checksummed object headers and indexes, so damage is an error, not wrong
data), text as fixed-length strings (not in the unchecked global heap), and the crc32
of every dataset.

Summary statistics (summarize) are computed on read and never stored.

Appends are copy-on-write, so a writer killed at any moment (SIGKILL, node failure,
Slurm time limit) cannot damage the runs already in the file: holding an exclusive
flock on the sidecar "<path>.lock", the writer copies the file to a temporary
".pffbench-<digest of the file name>.<pid>.<random>.tmp" in the same directory (a
fixed-length name: any file name the file system takes has temporaries it takes too;
versions before 2026-12 used ".<file name>.<pid>.<random>.tmp"), adds the run to the copy,
fsyncs it and renames it over the file (store/atomic.py). A killed writer leaves only its temporary,
which the next writer removes (of either naming). The holder deletes the lock file before it releases the
lock, so none is left beside the results file; a writer that then locks the deleted file
sees that it is no longer the one at the path and locks the new one instead (writer.py),
so two writers never hold two different locks. Each append copies the whole file, which is
cheap for timing data.

HDF5's own file locking is turned off (h5py ``locking=False``; with older h5py set
HDF5_USE_FILE_LOCKING=FALSE) because it fails on some network file systems. Writers
are serialized by the flock sidecar, and readers need no lock because a file they
have open is never modified in place, only replaced.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os

import h5py

FORMAT = "pffbench-results"
FORMAT_VERSION = 2
SECTIONS = ("runs", "links")  # what a results file holds: training runs, link measurements (pffbench.links)


def section_name(section: str) -> str:
    """``section`` checked: one of SECTIONS (ValueError otherwise)."""
    if section not in SECTIONS:
        raise ValueError(f"unknown results section {section!r}; expected one of {', '.join(SECTIONS)}")
    return section


RESERVED = ("status", "created", "index", "json_attrs")

# axes and units of every dataset a run stores, by key pattern (fnmatch, first match wins)
DATASETS = (
    ("timing/*", ("rank", "epoch"), "s"),            # one dataset per timer column (instrument/timer.py)
    ("timing_chapter/*", ("rank", "chapter"), "s"),  # PFF: per chapter
    ("loss", ("layer", "epoch"), "1"),                # FF loss (dimensionless), summed over minibatches
    ("test_accuracy", ("epoch",), "1"),               # fraction correct, 0..1; NaN where not evaluated
    ("trace/events", ("event", "field"), "s"),        # fields: rank, category index, start, end
    ("shard_label_counts", ("rank", "class"), "images"),
)


def dataset_meta(key: str, ndim: int) -> tuple[list[str], str]:
    """(axes, units) of dataset ``key`` with ``ndim`` dimensions: from DATASETS,
    else generic axis names ("axis0", ...) and units "" (not stated)."""
    for pattern, axes, units in DATASETS:
        if fnmatch.fnmatchcase(key, pattern) and len(axes) == ndim:
            return list(axes), units
    return [f"axis{i}" for i in range(ndim)], ""


class ResultsError(Exception):
    """A results file cannot be read or written; the message is one line naming the file."""


@contextlib.contextmanager
def open_results(path: str):
    """The results file ``path`` open for reading (h5py.File); ResultsError, one
    line naming the file, for anything that keeps it from being read as one."""
    if not os.path.exists(path):
        raise ResultsError(f"{path}: no such results file")
    try:
        if not h5py.is_hdf5(path):
            raise ResultsError(f"{path}: not an HDF5 file, so not a pffbench results file")
        f = h5py.File(path, "r", locking=False)
    except ResultsError:
        raise
    except Exception as e:  # h5py turns damage into OSError, KeyError, RuntimeError, ... (HDF5's own stack)
        raise ResultsError(f"{path}: cannot open HDF5 file: {one_line(e)}") from e
    with f:
        try:
            form = f.attrs.get("format")
            ours = (form.decode("utf-8", "replace") if isinstance(form, bytes) else form) == FORMAT and "runs" in f
            version = f.attrs.get("format_version", 0)
        except Exception as e:
            raise ResultsError(f"{path}: damaged, its root cannot be read: {one_line(e)}") from e
        if not ours:
            raise ResultsError(f"{path}: an HDF5 file but not a pffbench results file")
        if version > FORMAT_VERSION:
            raise ResultsError(f"{path}: format version {version} is newer than this pffbench "
                               f"reads ({FORMAT_VERSION}); upgrade pffbench")
        yield f


def one_line(error: Exception) -> str:
    """The error as one line (HDF5's messages span several), with its type when it says nothing."""
    text = " ".join(str(error).split())
    return text or type(error).__name__

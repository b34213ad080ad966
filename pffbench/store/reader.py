"""Reading pffbench results files: the public API (``read_runs``,
``list_runs``, ``summarize``, ``Run``, ``to_dataframe`` via pffbench.results).  The file format: store/format.py;
appending runs: store/writer.py."""
from __future__ import annotations

import json
import sys
import zlib
from dataclasses import dataclass

import h5py
import numpy as np

from .format import (FORMAT, FORMAT_VERSION, SECTIONS, ResultsError, one_line,  # noqa: F401  (API)
                           open_results, section_name)


@dataclass
class Run:
    name: str
    attrs: dict
    arrays: dict[str, np.ndarray]

    @property
    def config(self) -> dict:
        config = self.attrs.get("config") or {}
        # A writer may have stored the config as JSON text instead of a dict.
        return json.loads(config) if isinstance(config, str) else config


def read_runs(path: str, names: list[str] | None = None, on_damaged=None, section: str = "runs") -> list[Run]:
    """The runs in path (all, or those named), in the order they were appended
    (``section`` "links": the link measurements of pffbench.links instead; none if there are none).

    A run that cannot be read (damage in its object header, attributes or
    data: HDF5 checksums turn damage into errors) is skipped, and
    ``on_damaged(line)`` gets one line naming the file and the run (default:
    printed to stderr); every other run is still read.  Raises ResultsError
    (one line) if the file itself cannot be read or a named run is not in it.
    """
    warn = on_damaged or warn_stderr
    with open_results(path) as f:
        if _absent(f, section_name(section)):
            return []
        runs = _runs(path, f, section)
        listed = _names(path, runs, warn)
        missing = [n for n in names or () if n not in listed]
        if missing:
            raise ResultsError(f"{path}: no run named {', '.join(missing)}")
        found = []
        for name in listed if names is None else names:
            try:
                found.append(_read_run(name, runs[name]))
            except Exception as error:  # whatever h5py raises for damage: OSError, KeyError, RuntimeError, ...
                warn(f"{path}: run '{name}' cannot be read ({one_line(error)}); skipped it")
    return sorted(found, key=lambda run: run.attrs.get("index", float("inf")))


def list_runs(path: str, on_damaged=None) -> list[str]:
    """Names of the runs in path, in the order they were appended (a run whose
    index cannot be read last, and on_damaged told as in read_runs)."""
    warn = on_damaged or warn_stderr
    with open_results(path) as f:
        runs = _runs(path, f)
        order = {}
        for name in _names(path, runs, warn):
            try:
                order[name] = int(runs[name].attrs["index"])
            except Exception as error:
                order[name] = float("inf")
                warn(f"{path}: run '{name}' cannot be read ({one_line(error)})")
        return sorted(order, key=order.get)


def warn_stderr(line: str) -> None:
    print(f"pffbench: warning: {line}", file=sys.stderr, flush=True)


def _absent(f: h5py.File, section: str) -> bool:
    """Whether the file holds no ``section`` by design: links never measured, or a file of link
    measurements only.  A /runs that the root cannot name in a file with nothing else is damage (_runs)."""
    try:
        return section not in f and (section != "runs" or any(other in f for other in SECTIONS if other != section))
    except Exception:  # noqa: BLE001 (a damaged root: _runs says so in one line)
        return False


def _runs(path: str, f: h5py.File, section: str = "runs") -> h5py.Group:
    try:
        return f[section]
    except Exception as error:
        raise ResultsError(f"{path}: damaged, its group of {section} cannot be read ({one_line(error)})") from error


def _names(path: str, runs: h5py.Group, warn) -> list[str]:
    """The names in /runs, one by one, so that damage to the group's index
    loses only the names it holds."""
    try:
        count = runs.id.get_num_objs()
    except Exception as error:
        raise ResultsError(f"{path}: damaged, its list of runs cannot be read ({one_line(error)})") from error
    names = []
    for i in range(count):
        try:
            names.append(runs.id.get_objname_by_idx(i).decode("utf-8", "surrogateescape"))
        except Exception as error:
            warn(f"{path}: run #{i + 1} of {count}: its name cannot be read ({one_line(error)}); skipped it")
    return names


def summarize(values) -> dict:
    """min, q1, median, q3, max, iqr (numpy's default linear percentiles) and n of a 1-D sample."""
    sample = np.asarray(values, dtype=float)
    if sample.ndim != 1 or sample.size == 0:
        raise ValueError(f"summarize() needs a non-empty 1-D sample, got shape {sample.shape}")
    q1, median, q3 = np.percentile(sample, [25, 50, 75])
    return {"min": float(sample.min()), "q1": float(q1), "median": float(median), "q3": float(q3),
            "max": float(sample.max()), "iqr": float(q3 - q1), "n": int(sample.size)}


def _read_run(name: str, group: h5py.Group) -> Run:
    json_keys = set(json.loads(_native(group.attrs.get("json_attrs", "[]"))))
    attrs = {key: json.loads(_native(value)) if key in json_keys else _native(value)
             for key, value in group.attrs.items() if key != "json_attrs"}
    # format 1 stored lists as JSON text (json_attrs), format 2 as arrays: the same lists either way
    arrays = {}

    def collect(key, obj):
        if isinstance(obj, h5py.Dataset):
            arrays[key] = np.asarray(obj[()])
            stored = obj.attrs.get("crc32")  # format 2
            if stored is not None and zlib.crc32(np.ascontiguousarray(arrays[key]).tobytes()) != stored:
                raise ResultsError(f"{key}: its data do not match their checksum")

    group.visititems(collect)
    return Run(name=name, attrs=attrs, arrays=arrays)


def _native(value):
    """An attribute as the Python value the writer was given: format 2 stores
    text as fixed-length UTF-8 (bytes here) and lists as arrays."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [_native(item) for item in value]
    return value

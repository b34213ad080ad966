"""Reading pffbench results files: the public API (``read_runs``,
``list_runs``, ``summarize``, ``Run``).  The file format: store/format.py;
appending runs: store/writer.py."""
from __future__ import annotations

import json
from dataclasses import dataclass

import h5py
import numpy as np

from .store.format import FORMAT, FORMAT_VERSION, ResultsError, open_results, section_name  # noqa: F401  (API)


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


def read_runs(path: str, names: list[str] | None = None, section: str = "runs") -> list[Run]:
    """The runs in path (all, or those named), in the order they were appended
    (``section`` "links": the link measurements of pffbench.links instead; none if there are none)."""
    with open_results(path) as f:
        if section_name(section) not in f:
            return []
        runs = f[section]
        missing = [n for n in names or () if n not in runs]
        if missing:
            raise ResultsError(f"{path}: no run named {', '.join(missing)}")
        found = [_read_run(name, runs[name]) for name in (runs if names is None else names)]
    return sorted(found, key=lambda run: run.attrs["index"])


def list_runs(path: str) -> list[str]:
    """Names of the runs in path, in the order they were appended."""
    with open_results(path) as f:
        runs = f["runs"]
        return sorted(runs, key=lambda name: runs[name].attrs["index"])


def summarize(values) -> dict:
    """min, q1, median, q3, max, iqr (numpy's default linear percentiles) and n of a 1-D sample."""
    sample = np.asarray(values, dtype=float)
    if sample.ndim != 1 or sample.size == 0:
        raise ValueError(f"summarize() needs a non-empty 1-D sample, got shape {sample.shape}")
    q1, median, q3 = np.percentile(sample, [25, 50, 75])
    return {"min": float(sample.min()), "q1": float(q1), "median": float(median), "q3": float(q3),
            "max": float(sample.max()), "iqr": float(q3 - q1), "n": int(sample.size)}


def _read_run(name: str, group: h5py.Group) -> Run:
    json_keys = set(json.loads(group.attrs.get("json_attrs", "[]")))
    attrs = {key: json.loads(value) if key in json_keys else _native(value)
             for key, value in group.attrs.items() if key != "json_attrs"}
    arrays = {}

    def collect(key, obj):
        if isinstance(obj, h5py.Dataset):
            arrays[key] = np.asarray(obj[()])

    group.visititems(collect)
    return Run(name=name, attrs=attrs, arrays=arrays)


def _native(value):
    return value.item() if isinstance(value, np.generic) else value

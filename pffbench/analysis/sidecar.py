"""Which results files each figure in a plot folder was drawn from, so that
`python -m pffbench.plot` never silently overwrites another study's figures
and never leaves stale ones beside fresh ones.

The record is ``DIR/.pffbench-plots.json``: {figure file name: {"sources":
[absolute paths of the results files], "time": unix seconds}}.  A figure is

- *foreign* when the record names other sources for it: plot warns before
  overwriting it (or refuses without --force, see plot.main);
- *stale* when the record names the same sources but this plot did not draw
  it (e.g. the traced run is gone): plot removes it and says so.
Figures the record does not know (drawn by hand, or by an older pffbench) are
left alone, named when they would be overwritten.
"""
from __future__ import annotations

import json
import os
import time

from ..store.atomic import atomic_write

RECORD = ".pffbench-plots.json"


def sources_of(paths) -> list[str]:
    return sorted(os.path.abspath(p) for p in paths)


def load(directory: str) -> dict:
    try:
        with open(os.path.join(directory, RECORD)) as f:
            record = json.load(f)
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def conflicts(directory: str, names, sources: list[str]) -> list[tuple[str, list[str] | None]]:
    """(figure file, its recorded sources or None if unknown) for each of
    ``names`` that exists in ``directory`` and was not drawn from ``sources``."""
    record = load(directory)
    out = []
    for name in names:
        if not os.path.exists(os.path.join(directory, name)):
            continue
        theirs = record.get(name, {}).get("sources")
        if theirs != sources:
            out.append((name, theirs))
    return out


def stale(directory: str, drawn, sources: list[str]) -> list[str]:
    """Figure files recorded as drawn from ``sources`` that this plot did not draw."""
    return sorted(name for name, entry in load(directory).items()
                  if entry.get("sources") == sources and name not in set(drawn)
                  and os.path.exists(os.path.join(directory, name)))


def update(directory: str, drawn, removed, sources: list[str]) -> None:
    """Record ``drawn`` as from ``sources``; forget ``removed``."""
    record = load(directory)
    for name in removed:
        record.pop(name, None)
    now = time.time()
    for name in drawn:
        record[name] = {"sources": sources, "time": now}
    atomic_write(os.path.join(directory, RECORD), lambda f: f.write(json.dumps(record, indent=1).encode()))

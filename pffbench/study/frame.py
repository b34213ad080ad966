"""One row per run with the report's figures: what ``pffbench.results.to_dataframe`` returns."""
from __future__ import annotations

import math

from .. import results
from . import analysis

PROVENANCE = ("git_sha", "torch", "mpi4py", "numpy", "h5py", "python", "hostname", "cpu_model", "host_cores")


def run_rows(runs: list[results.Run], pool: bool = False, files: list[str] | None = None) -> list[dict]:
    """A dict per run, in the order given: its case (the report's row it
    belongs to, None for a run the report leaves out: not complete, no
    timing) with that row's speedup and efficiency; the run's own training
    seconds (s), final test accuracy (0..1), status; the settings that
    tell its case from others (analysis.settings_of: layers, epochs,
    batch_size, lr, neg, classifier, splits, partition, ..., one column
    each, "" where a run's version lacks one); its provenance; the host's
    1-minute load at start and end and whether the host was busy.
    ``files``: the file of each run (a column), if given."""
    columns = list(dict.fromkeys(k for run in runs for k in analysis.settings_of(run)))
    case_of = {}
    for row in analysis.table(runs, pool):
        for run in row.case.runs:
            case_of[id(run)] = row
    rows = []
    for i, run in enumerate(runs):
        row, a = case_of.get(id(run)), run.attrs
        load = lambda key: (a.get(key) or [math.nan])[0] if isinstance(a.get(key), list) else math.nan  # noqa: E731
        rows.append({
            "file": files[i] if files else "", "run": run.name, "status": a.get("status", "complete"),
            "variant": a.get("variant", ""), "dataset": a.get("dataset", ""),
            "ranks": a.get("world_size"), "threads_per_rank": analysis.threads_per_rank(run),
            "training_s": analysis.training_seconds(run) if "timing/wall" in run.arrays else math.nan,
            "final_test_accuracy": a.get("final_test_accuracy", math.nan), "wall_time_s": a.get("wall_time", math.nan),
            "case": row.case.name if row else None,
            "case_median_s": row.stats["median"] if row else math.nan,
            "speedup": row.speedup if row else math.nan, "efficiency": row.efficiency if row else math.nan,
            "speedup_vs_1xall": row.speedup_best if row else math.nan,
            "notes": row.case.notes if row else "",
            **{key: analysis.settings_of(run).get(key, "") for key in columns},
            **{key: a.get(key, "") for key in PROVENANCE},
            "load_avg_start": load("load_avg_start"), "load_avg_end": load("load_avg_end"),
            "busy_host": analysis.busy_host(run), "created": a.get("created", ""),
        })
    return rows

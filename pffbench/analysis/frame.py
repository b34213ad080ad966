"""One row per run with the report's figures: what ``pffbench.results.to_dataframe`` returns."""
from __future__ import annotations

import math

from ..store import reader as results
from . import analysis

PROVENANCE = ("git_sha", "torch", "mpi4py", "numpy", "h5py", "python", "hostname", "cpu_model", "host_cores")


def run_rows(runs: list[results.Run], pool: bool = False, files: list[str] | None = None) -> list[dict]:
    """A dict per run, in the order given: its case (the report's row it
    belongs to, None for a run the report leaves out: not complete, no
    timing) with that row's speedup and efficiency; the run's own training
    seconds (s), final test accuracy (0..1), status; its provenance; the
    host's 1-minute load at start and end and whether the host was busy.
    ``files``: the file of each run (a column), if given."""
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
            **{key: a.get(key, "") for key in PROVENANCE},
            "load_avg_start": load("load_avg_start"), "load_avg_end": load("load_avg_end"),
            "busy_host": analysis.busy_host(run), "created": a.get("created", ""),
        })
    return rows


def to_dataframe(path, pool: bool = False, on_damaged=None):
    """A pandas DataFrame with one row per run in ``path`` (a results file, or
    a list of them): run, status, variant, dataset, ranks, threads_per_rank,
    training_s (seconds: the slowest rank's epochs, evaluation excluded),
    final_test_accuracy (0..1), the run's case and that case's median
    seconds, speedup, efficiency and speedup_vs_1xall, as
    ``python -m pffbench.report`` computes them (``pool``: as report --pool),
    its notes, the provenance (git_sha, versions, hostname, cpu_model,
    host_cores), the 1-minute load average at start and end (NaN where not
    recorded) and busy_host.  Damaged runs are skipped as in read_runs.
    Needs pandas (``pip install 'pffbench[table]'``)."""
    try:
        import pandas
    except ImportError:
        raise ImportError("to_dataframe needs pandas: pip install 'pffbench[table]' (or pandas)") from None
    runs, files = [], []
    for one in [path] if isinstance(path, str) else list(path):
        found = results.read_runs(one, on_damaged=on_damaged)
        runs += found
        files += [one] * len(found)
    return pandas.DataFrame(run_rows(runs, pool, files))

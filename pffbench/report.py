"""`python -m pffbench.report FILE.h5 [...]`: the scaling table of the runs in
results files, recomputed from their raw timing arrays.

One row per case (same configuration, code, software versions, machine,
ranks and threads per rank; see pffbench.study.analysis); --pool pools runs
that differ only in code, versions or machine, and the notes column says so.
The notes column also flags cases measured on a busy host (load above its
cores).  A run that cannot be read is skipped with one line naming it.  Times are training seconds: the slowest rank's epoch
wall times summed, evaluation excluded.  speedup = median T1 / median Tp with
T1 the same configuration on 1 rank with the same threads per rank;
efficiency = speedup / p; "vs 1xall" is the speedup against 1 rank with the
most threads (the best single process).
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys

from . import results
from .study import analysis

HEADER = ("run", "variant", "dataset", "p", "threads/rank", "n", "median s", "min s", "max s", "speedup",
          "efficiency", "speedup vs 1xall", "accuracy %", "notes")


def row_values(row: analysis.Row) -> tuple:
    c, s = row.case, row.stats
    return (c.name, c.variant, c.dataset, c.ranks, c.threads, s["n"], s["median"], s["min"], s["max"],
            row.speedup, row.efficiency, row.speedup_best, 100 * row.accuracy, c.notes)


def _text(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def format_table(rows: list[analysis.Row], fmt: str = "text") -> str:
    values = [row_values(row) for row in rows]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(HEADER)
        for v in values:
            writer.writerow(["" if isinstance(x, float) and math.isnan(x) else
                             (repr(x) if isinstance(x, float) else x) for x in v])
        return out.getvalue().rstrip("\n")
    cells = [[_text(x, 2 if HEADER[i] == "accuracy %" else 3) for i, x in enumerate(v)] for v in values]
    if fmt == "markdown":
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" if i < 3 or HEADER[i] == "notes" else "---:"
                                                               for i in range(len(HEADER))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    if fmt != "text":
        raise ValueError(f"unknown format {fmt!r}")
    left = lambda i: i < 3 or HEADER[i] == "notes"  # noqa: E731  (text columns)
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(HEADER)]
    lines = ["  ".join(h.ljust(w) if left(i) else h.rjust(w) for i, (h, w) in enumerate(zip(HEADER, widths)))]
    lines += ["  ".join(x.ljust(w) if left(i) else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths)))
              for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pffbench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", metavar="FILE.h5")
    parser.add_argument("--format", choices=("text", "markdown", "csv"), default="text")
    parser.add_argument("--pool", action="store_true", help="pool runs that differ only in git commit, package "
                        "versions or machine into one case (the notes column says so)")
    opts = parser.parse_args(argv)
    runs = []
    for path in opts.files:
        try:
            runs += results.read_runs(path, on_damaged=lambda line: print(f"pffbench.report: warning: {line}",
                                                                          file=sys.stderr))
        except results.ResultsError as error:
            print(f"pffbench.report: error: {error}", file=sys.stderr)
            return 2
    print(format_table(analysis.table(runs, opts.pool), opts.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())

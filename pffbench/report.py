"""`python -m pffbench.report FILE.h5 [...]`: the scaling table of the runs in
results files, recomputed from their raw timing arrays.

One row per case (same configuration, machine, ranks and threads per rank;
see pffbench.study.analysis).  Times are training seconds: the slowest rank's epoch
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
          "efficiency", "speedup vs 1xall", "accuracy %")


def row_values(row: analysis.Row) -> tuple:
    c, s = row.case, row.stats
    return (c.name, c.variant, c.dataset, c.ranks, c.threads, s["n"], s["median"], s["min"], s["max"],
            row.speedup, row.efficiency, row.speedup_best, 100 * row.accuracy)


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
    cells = [[_text(x, 2 if i == len(HEADER) - 1 else 3) for i, x in enumerate(v)] for v in values]
    if fmt == "markdown":
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" if i < 3 else "---:"
                                                               for i in range(len(HEADER))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    if fmt != "text":
        raise ValueError(f"unknown format {fmt!r}")
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(HEADER)]
    lines = ["  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(HEADER, widths)))]
    lines += ["  ".join(x.ljust(w) if i < 3 else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths)))
              for row in cells]
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as in run: the usage is for --help
        raise results.ResultsError(message)


def notes(runs) -> list[str]:
    """What the table leaves out: runs not complete, runs whose layers collapsed."""
    lines = []
    stopped = [run for run in runs if run.attrs.get("status", "complete") != "complete"]
    if stopped:
        kinds = sorted({str(run.attrs.get("status")) for run in stopped})
        n = len(stopped)
        lines.append(f"note: {n} {'run' if n == 1 else 'runs'} not complete ({', '.join(kinds)}) left out of "
                     f"the table: {', '.join(run.name for run in stopped)}")
    for run in runs:
        collapsed = run.attrs.get("collapsed_layers")
        if collapsed is not None and len(collapsed):
            layers = ", ".join(str(int(i)) for i in collapsed)
            lines.append(f"warning: run {run.name}: training collapsed (layer {layers} silent: "
                         f"every unit dead, or nearly): its accuracy is at chance")
    return lines


def main(argv=None) -> int:
    parser = _Parser(prog="python -m pffbench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", metavar="FILE.h5")
    parser.add_argument("--format", choices=("text", "markdown", "csv"), default="text")
    try:
        opts = parser.parse_args(argv)
        runs = [run for path in opts.files for run in results.read_runs(path)]
    except results.ResultsError as error:
        print(f"pffbench.report: error: {error}", file=sys.stderr)
        return 2
    rows = analysis.table(runs)
    if runs and not rows:
        print(f"pffbench.report: no complete run to tabulate: {notes(runs)[0][len('note: '):]}", file=sys.stderr)
        return 1
    print(format_table(rows, opts.format))
    for line in notes(runs):
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m pffbench.report FILE.h5 [...]`: the scaling table of the runs in
results files, recomputed from their raw timing arrays.

One row per case (same configuration, code, software versions, machine,
ranks and threads per rank; see pffbench.analysis.analysis); --pool pools runs
that differ only in code, versions or machine, and the notes column says so.
The notes column also flags cases measured on a busy host (a load above
the cores, or the run's own threads, by more than one: other jobs' load,
not the run's own) and repetitions far from their case's median.  A run that cannot be read is skipped with one line naming it.  Times are training seconds: the slowest rank's epoch
wall times summed, evaluation excluded.  speedup = median T1 / median Tp with
T1 the same configuration on 1 rank with the same threads per rank;
efficiency = speedup / p; "vs 1xall" is the speedup against 1 rank with the
most threads (the best single process).  With --target A (or for runs made
with --target-accuracy): "to A% s" is the median training time to the first
evaluation at test accuracy >= A over the repetitions that reached it, and
"reached" how many did (pffbench/instrument/target.py).

Rows that would read alike are told apart: text and markdown add a
"settings" column with what differs between the rows (e.g. partition=iid
against partition=label-skew), csv and json end every row with every
setting of its case.

Link measurements of ``python -m pffbench.links`` in the same files: a table
of their own, per message size and link kind, latency min/median/max [us]
and median bandwidth [MB/s], from the raw repetitions; after the runs' in
text and markdown, and only with --links in csv and json (one table per
output, so that a csv reader never reads link rows as runs).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys

import numpy as np

from . import results
from .launch.command import command
from .analysis import analysis, race
from .core.words import plural

HEADER = ("run", "variant", "dataset", "p", "threads/rank", "n", "median s", "min s", "max s", "speedup",
          "efficiency", "speedup vs 1xall", "accuracy %")
# then: "vs VARIANT" (--versus), per target accuracy the median time to it and the repetitions that reached it,
# and last the notes (busy host, pooled runs, collapsed layers)


ACCURACY = HEADER.index("accuracy %")  # printed with 2 decimals, the rest with 3
TEXT_COLUMNS = ("settings", "notes")  # left-aligned, as the first three


def target_header(targets: list[float]) -> tuple:
    return tuple(h for a in targets for h in (f"to {100 * a:g}% s", f"reached {100 * a:g}%"))


def row_values(row: analysis.Row, targets: list[float] = (), versus: tuple = ()) -> tuple:
    c, s = row.case, row.stats
    reached = [] if not versus else [versus[1].stats["median"] / s["median"] if versus[1] else float("nan")]
    for accuracy in targets:
        seconds, hits = c.time_to_target(accuracy)
        reached += [seconds, f"{hits}/{s['n']}"]
    return (c.name, c.variant, c.dataset, c.ranks, c.threads, s["n"], s["median"], s["min"], s["max"],
            row.speedup, row.efficiency, row.speedup_best, 100 * row.accuracy, *reached, c.notes)


def _plain(value):
    """json.dumps's fallback: numpy scalars as Python numbers, anything else as text."""
    return value.item() if hasattr(value, "item") else str(value)


def _text(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def format_table(rows: list[analysis.Row], fmt: str = "text", targets: list[float] = (),
                 versus: str | None = None) -> str:
    """The table; ``versus`` (a variant) adds the speedup over its p = 1 case
    on the same work (analysis.reference_case); ``targets`` (accuracies in
    (0, 1]) add, each, the median training seconds to it over the
    repetitions that reached it and how many did.  So that no two rows
    read alike: csv and json end each row with every setting of its case
    (analysis.settings_of: layers, epochs, batch_size, lr, neg, ...); text
    and markdown add a "settings" column, before the notes, with those
    settings (or commits, machines) that differ between the rows, where any do."""
    header = HEADER + ((f"vs {versus}",) if versus else ()) + target_header(list(targets))
    all_cases = [row.case for row in rows]
    values = [row_values(row, targets, (versus, analysis.reference_case(all_cases, row.case, versus))
                         if versus else ()) for row in rows]
    if fmt in ("csv", "json"):
        keys = list(dict.fromkeys(k for case in all_cases for k in case.settings))
        header += ("notes", *keys)
        values = [(*v, *(case.settings.get(k, "") for k in keys)) for v, case in zip(values, all_cases)]
        if fmt == "json":
            return json.dumps([dict(zip(header, (None if isinstance(x, float) and math.isnan(x) else x
                                                 for x in v))) for v in values], indent=1, default=_plain)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        for v in values:
            writer.writerow(["" if isinstance(x, float) and math.isnan(x) else
                             (repr(x) if isinstance(x, float) else x) for x in v])
        return out.getvalue().rstrip("\n")
    differ = analysis.distinguishing(all_cases)
    if differ:
        header += ("settings",)
        values = [(*v[:-1], case.differing(differ), v[-1]) for v, case in zip(values, all_cases)]
    header += ("notes",)
    cells = [[_text(x, 2 if i == ACCURACY else 3) for i, x in enumerate(v)] for v in values]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i < 3 or header[i] in TEXT_COLUMNS else "---:"
                                for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    if fmt != "text":
        raise ValueError(f"unknown format {fmt!r}")
    left = lambda i: i < 3 or header[i] in TEXT_COLUMNS  # noqa: E731  (text columns)
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) if left(i) else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines += ["  ".join(x.ljust(w) if left(i) else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths)))
              for row in cells]
    return "\n".join(line.rstrip() for line in lines)


LINK_HEADER = ("record", "link", "message", "hosts", "size[B]", "lat_min[us]", "lat_med[us]", "lat_max[us]",
               "bw_med[MB/s]")


def link_rows(records: list[results.Run]) -> list[tuple]:
    """One row per message size and link kind of ``python -m pffbench.links`` records, recomputed from the raw
    repetitions: latency min/median/max in us, median bandwidth in MB/s (1e6 bytes)."""
    rows = []
    for record in records:
        a, hosts = record.arrays, "->".join(record.attrs.get("hostnames", []))
        for i, size in enumerate(a["size"]):
            lat = a["latency"][i] * 1e6
            bandwidth = float(np.median(a["window"][i] * size / a["window_seconds"][i])) / 1e6
            rows.append((record.name, record.attrs["link_kinds"][i], record.attrs["what"][i], hosts, int(size),
                         float(lat.min()), float(np.median(lat)), float(lat.max()), bandwidth))
    return rows


def format_links(rows: list[tuple], fmt: str = "text") -> str:
    cells = [[str(x) if not isinstance(x, float) else f"{x:.{1 if i == 8 else 2}f}" for i, x in enumerate(row)]
             for row in rows]
    if fmt == "csv":
        return "\n".join(",".join(line) for line in [list(LINK_HEADER), *([str(x) for x in row] for row in rows)])
    if fmt == "json":
        return json.dumps([dict(zip(LINK_HEADER, row)) for row in rows], indent=1, default=_plain)
    if fmt == "markdown":
        lines = ["| " + " | ".join(LINK_HEADER) + " |", "|" + "|".join("---" if i < 4 else "---:"
                                                                    for i in range(len(LINK_HEADER))) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(LINK_HEADER)]
    return "\n".join("  ".join(x.ljust(w) if i < 4 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths)))
                     for line in [list(LINK_HEADER), *cells])


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
                         f"every unit dead, or nearly); final test accuracy "
                         f"{100 * float(run.attrs.get('final_test_accuracy', float('nan'))):.2f}%")
    return lines


@command("pffbench.report")
def main(argv=None) -> int:
    parser = _Parser(prog="python -m pffbench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", metavar="FILE.h5")
    parser.add_argument("--format", choices=("text", "markdown", "csv", "json"), default="text",
                        help="csv and json: one table per output, each row with every setting of its case "
                             "(default: %(default)s)")
    parser.add_argument("--links", action="store_true",
                        help="the table of pffbench.links measurements in the files, instead of the runs' "
                             "(text and markdown show both when the files hold both)")
    parser.add_argument("--pool", action="store_true", help="pool runs that differ only in git commit, package "
                        "versions or machine into one case (the notes column says so)")
    parser.add_argument("--target", type=float, action="append", default=None, metavar="A",
                        help="add the median training time to test accuracy A (e.g. 0.97) and how many repetitions "
                             "reached it; repeatable (default: the --target-accuracy values the runs were made with)")
    parser.add_argument("--race", action="store_true",
                        help="the race table of python -m pffbench.tune's runs instead (jobs/race.sbatch): per "
                             "target and contender the pick, median time and samples to the target, the speedup "
                             "over the fastest backprop rival, the final accuracy (pffbench/analysis/race.py)")
    parser.add_argument("--versus", default=None, metavar="VARIANT",
                        help="add the speedup over VARIANT on 1 rank with the same threads, data, widths, epochs "
                             "and batch size (e.g. backprop)")
    runs, links = [], []

    def warn(line):
        print(f"pffbench.report: warning: {line}", file=sys.stderr)

    try:
        opts = parser.parse_args(argv)
        if opts.target and not all(0 < a <= 1 for a in opts.target):
            raise results.ResultsError("--target must be in (0, 1]")
        for path in opts.files:
            runs += results.read_runs(path, on_damaged=warn)
            links += results.read_runs(path, on_damaged=warn, section="links")
    except results.ResultsError as error:
        print(f"pffbench.report: error: {error}", file=sys.stderr)
        return 2
    one_table = opts.format in ("csv", "json")  # machine-read: never two tables in one stream
    if opts.race:
        return _race(runs, opts)
    if opts.links and not links:
        print(f"pffbench.report: no link measurements (pffbench.links) in {', '.join(opts.files)}", file=sys.stderr)
        return 1
    if one_table and not opts.links and links and not runs:
        print(f"pffbench.report: {', '.join(opts.files)} hold{'s' if len(opts.files) == 1 else ''} only link "
              f"measurements: add --links for their table", file=sys.stderr)
        return 1
    if not opts.links and (runs or not links):
        rows = analysis.table(runs, opts.pool)
        if runs and not rows:
            why = (notes(runs) or ["note: none of the runs is complete"])[0][len("note: "):]
            print(f"pffbench.report: no complete run to tabulate: {why}", file=sys.stderr)
            return 1
        targets = opts.target or analysis.recorded_targets(runs)
        print(format_table(rows, opts.format, targets, opts.versus))
        for line in notes(runs) + ([] if opts.pool else [f"note: {line}" for line in analysis.unpaired(runs)]):
            print(line, file=sys.stderr)
    if opts.links and one_table:
        print(format_links(link_rows(links), opts.format))
    elif links and (opts.links or not one_table):  # text, markdown: a table of their own after the runs'
        title = {"text": "link measurements (python -m pffbench.links)\n",
                 "markdown": "**link measurements**\n\n"}[opts.format]
        print(("\n" if runs and not opts.links else "") + title + format_links(link_rows(links), opts.format))
    elif links:
        print(f"note: {plural(len(links), 'link measurement')} in the files left out of the {opts.format} "
              f"table (one table per output): add --links for theirs", file=sys.stderr)
    return 0


def _race(runs: list, opts) -> int:
    contenders = [c for c in race.contenders(runs) if c.trials and c.repeats]  # one cut off in its trials: none yet
    if not contenders:
        print(f"pffbench.report: error: no runs of python -m pffbench.tune in {', '.join(opts.files)}", file=sys.stderr)
        return 1
    targets = opts.target or analysis.recorded_targets(runs)
    if not targets:
        print("pffbench.report: error: --race needs --target A (the runs name none)", file=sys.stderr)
        return 2
    rows = race.race_rows(contenders, sorted(targets))
    if opts.format == "json":
        print(json.dumps(race.without_nan(rows), indent=1, allow_nan=False))
    elif opts.format == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        cell = lambda v: ";".join(map(str, v)) if isinstance(v, list) else (  # noqa: E731
            "" if isinstance(v, float) and math.isnan(v) else v)
        writer.writerows({k: cell(v) for k, v in r.items()} for r in rows)
        print(out.getvalue().rstrip("\n"))
    else:
        print(race.race_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

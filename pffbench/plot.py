"""`python -m pffbench.plot FILE.h5 [...] -o plots/`: figures from results
files, PNG and PDF, headless (matplotlib Agg).

- speedup.png: speedup S(p) = T1/Tp per configuration, median with IQR error
  bars over repetitions, ideal S = p and (for the pipeline) the bound
  p*m/(m+p-1), log2 axes; an efficiency E = S/p panel; base case and
  absolute T1 written on the figure;
- timeline.png: per-rank Gantt chart of one traced run (--trace): compute,
  data, send/receive wait, sync, eval; gaps are idle.  The whole run plus
  zooms on the pipeline's fill and on the drain at the end of epoch 1;
- accuracy_time.png: test accuracy against training time, one line per
  case (variant, ranks, threads), target accuracies dotted, a star where a
  case first reached one;
- variants_speedup.png: every variant's speedup on one chart, FF variants
  against data-parallel backprop.

Each figure is built by a plain function returning a matplotlib Figure.
"""
from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from . import results  # noqa: E402
from .instrument.timer import CATEGORIES  # noqa: E402
from .study import analysis  # noqa: E402

COLORS = {"compute": "#1f77b4", "data": "#9ecae1", "send_wait": "#ff7f0e", "recv_wait": "#d62728",
          "sync": "#9467bd", "eval": "#7f7f7f"}
LABELS = {"compute": "compute", "data": "data (rank 0)", "send_wait": "send wait", "recv_wait": "receive wait",
          "sync": "sync / allreduce", "eval": "evaluation"}
IDLE_COLOR = "#f0f0f0"


def _log2_axis(ax, values, axis: str = "x") -> None:
    ticks = sorted({float(v) for v in values if v > 0})
    getattr(ax, f"set_{axis}scale")("log", base=2)
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(ticks))
    target.set_minor_locator(NullLocator())
    target.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))


def _speedup_points(rows: list[analysis.Row]):
    """p, median speedup, and IQR error bars: T1 median over Tp's quartiles."""
    rows = [r for r in rows if r.base is not None]
    p = np.array([r.case.ranks for r in rows])
    t1 = np.array([r.base.stats["median"] for r in rows])
    s = t1 / np.array([r.stats["median"] for r in rows])
    lo = s - t1 / np.array([r.stats["q3"] for r in rows])
    hi = t1 / np.array([r.stats["q1"] for r in rows]) - s
    return p, s, np.vstack((lo, hi)), rows


def _series_rows(runs) -> list[list[analysis.Row]]:
    """Rows grouped by configuration and threads per rank, each sorted by p."""
    groups: dict[tuple, list[analysis.Row]] = {}
    for row in analysis.table(runs):
        groups.setdefault((row.case.signature, row.case.threads), []).append(row)
    return [sorted(g, key=lambda r: r.case.ranks) for g in groups.values()]


def _machine(runs) -> str:
    hosts = sorted({run.attrs.get("hostname", "?") for run in runs})
    return ", ".join(hosts)


def speedup_figure(runs: list[results.Run], title: str | None = None) -> plt.Figure | None:
    """Speedup and efficiency against ranks, one series per configuration
    with more than one rank count; None when there is none."""
    series = [rows for rows in _series_rows(runs) if len({r.case.ranks for r in rows}) > 1 and rows[0].base]
    if not series:
        return None
    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(11, 4.8), constrained_layout=True)
    all_p = sorted({r.case.ranks for rows in series for r in rows})
    ax_s.plot(all_p, all_p, "k:", label="ideal S = p")
    notes, top_s, top_e = [], max(all_p) * 1.2, 1.15  # raised below for points above them: none is cut off
    for i, rows in enumerate(series):
        color = f"C{i}"
        p, s, err, rows = _speedup_points(rows)
        top_s, top_e = max(top_s, 1.1 * float(np.max(s + err[1]))), max(top_e, 1.1 * float(np.max((s + err[1]) / p)))
        case = rows[0].case
        label = f"{case.label}, {case.threads} thread(s)/rank"
        ax_s.errorbar(p, s, yerr=err, fmt="o-", color=color, capsize=4, label=label)
        ax_e.errorbar(p, s / p, yerr=err / p, fmt="o-", color=color, capsize=4, label=label)
        if case.variant == "pipeline" and case.minibatches:
            fine = np.array(all_p, dtype=float)
            bound = [analysis.pipeline_bound(q, case.minibatches) for q in fine]
            ax_s.plot(fine, bound, "--", color=color, alpha=0.6,
                      label=f"pipeline bound p·m/(m+p−1), m = {case.minibatches}")
            ax_e.plot(fine, np.array(bound) / fine, "--", color=color, alpha=0.6)
        base = rows[0].base
        note = (f"{case.variant}: base = 1 rank × {base.threads} thread(s), T1 = {base.stats['median']:.2f} s "
                f"(median of {base.stats['n']})")
        best = rows[0].best_single
        if best is not None:
            note += f"; 1 rank × {best.threads} threads: {best.stats['median']:.2f} s"
        notes.append(note)
    _log2_axis(ax_s, all_p, "x")
    _log2_axis(ax_s, [2.0 ** k for k in range(-3, 8)], "y")
    ax_s.set_ylim(min(0.9, ax_s.get_ylim()[0]), top_s)
    ax_s.set_xlabel("MPI ranks p")
    ax_s.set_ylabel("speedup S(p) = T1 / Tp")
    ax_s.set_title("Speedup (median, IQR error bars)")
    ax_s.grid(True, which="major", alpha=0.3)
    ax_s.legend(fontsize=8, loc="upper left")
    ax_e.axhline(1.0, color="k", linestyle=":", label="ideal E = 1")
    _log2_axis(ax_e, all_p, "x")
    ax_e.set_ylim(0, top_e)
    ax_e.set_xlabel("MPI ranks p")
    ax_e.set_ylabel("efficiency E = S / p")
    ax_e.set_title("Parallel efficiency")
    ax_e.grid(True, alpha=0.3)
    ax_e.legend(fontsize=8, loc="lower left")
    fig.suptitle(title or f"Training-time scaling on {_machine(runs)}")
    fig.text(0.01, -0.01, "\n".join(notes) + "\nT = slowest rank's training time (evaluation excluded)",
             fontsize=8, va="top")
    return fig


def variants_figure(runs: list[results.Run]) -> plt.Figure | None:
    """Every variant's speedup on one chart: FF variants solid, backprop
    baselines dashed.  None unless some variant has several rank counts."""
    series = [rows for rows in _series_rows(runs) if len({r.case.ranks for r in rows}) > 1 and rows[0].base]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.8), constrained_layout=True)
    all_p = sorted({r.case.ranks for rows in series for r in rows})
    ax.plot(all_p, all_p, "k:", label="ideal S = p")
    top = max(all_p) * 1.2
    for i, rows in enumerate(series):
        p, s, err, rows = _speedup_points(rows)
        top = max(top, 1.1 * float(np.max(s + err[1])))
        case = rows[0].case
        style = "s--" if case.variant in analysis.BASELINES else "o-"
        ax.errorbar(p, s, yerr=err, fmt=style, color=f"C{i}", capsize=4,
                    label=f"{case.label} (T1 = {rows[0].base.stats['median']:.1f} s)")
    _log2_axis(ax, all_p, "x")
    _log2_axis(ax, [2.0 ** k for k in range(-3, 8)], "y")
    ax.set_ylim(min(0.9, ax.get_ylim()[0]), top)
    ax.set_xlabel("MPI ranks p")
    ax.set_ylabel("speedup S(p) = T1 / Tp (each against its own 1-rank run)")
    ax.set_title(f"FF variants vs data-parallel backprop\n{_machine(runs)}", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def accuracy_figure(runs: list[results.Run], targets: list[float] = ()) -> plt.Figure | None:
    """Test accuracy against training time, one line per case (its first
    repetition); a dotted line at each target accuracy (``targets`` and the
    runs' --target-accuracy), with a marker where each case first reached it."""
    curves = []
    for case in analysis.cases(runs):
        seconds, accuracy = analysis.accuracy_curve(case.runs[0])
        if len(seconds):
            curves.append((case, seconds, accuracy))
    if not curves:
        return None
    marked = sorted(set(targets) | set(analysis.recorded_targets(runs)))
    fig, ax = plt.subplots(figsize=(7, 4.8), constrained_layout=True)
    for i, (case, seconds, accuracy) in enumerate(curves):
        style = "s--" if case.variant in analysis.BASELINES else "o-"
        ax.plot(seconds, 100 * accuracy, style, color=f"C{i % 10}", markersize=3 if len(seconds) > 20 else 6,
                label=f"{case.label}, p = {case.ranks} × {case.threads} thread(s)")
        for goal in marked:
            hit = np.flatnonzero(accuracy >= goal)
            if hit.size:
                ax.plot(seconds[hit[0]], 100 * accuracy[hit[0]], "*", color=f"C{i % 10}", markersize=12)
    for goal in marked:
        ax.axhline(100 * goal, color="black", linestyle=":", linewidth=1)
        ax.annotate(f"target {100 * goal:g} %", (0, 100 * goal), xycoords=("axes fraction", "data"),
                    xytext=(4, 2), textcoords="offset points", fontsize=8)
    ax.set_xlabel("training time (s, evaluation excluded)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Test accuracy against wall-clock training time\n{_machine(runs)}", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def traced_runs(runs: list[results.Run]) -> list[results.Run]:
    return [run for run in runs if "trace/events" in run.arrays and run.arrays["trace/events"].size]


def _fill_drain_windows(events: np.ndarray, ranks: int) -> list[tuple[str, float, float]]:
    """(title, start, end) of the zooms: the pipeline filling at the start of
    epoch 1, and its drain into the end-of-epoch reduction."""
    compute = CATEGORIES.index("compute")
    sync = CATEGORIES.index("sync")
    last = events[(events[:, 0] == ranks - 1) & (events[:, 1] == compute)]
    first = events[(events[:, 0] == 0) & (events[:, 1] == compute)]
    if not len(last) or not len(first):
        return []
    step = float(np.median(first[:, 3] - first[:, 2])) or 1e-3
    fill_end = last[min(len(last) - 1, 2 * ranks + 4), 3]
    fill_start = max(0.0, first[0, 2] - 2 * step)
    windows = [("fill: start of epoch 1", fill_start, fill_end)]
    syncs = events[events[:, 1] == sync]
    if len(syncs):
        # the first epoch's end-of-epoch reduction on every rank
        end = max(syncs[syncs[:, 0] == r][0, 3] for r in range(ranks) if (syncs[:, 0] == r).any())
        width = fill_end - fill_start
        windows.append(("drain: end of epoch 1", max(0.0, end - width), end + 0.05 * width))
    return windows


def _gantt(ax, events: np.ndarray, ranks: int, start: float, end: float, unit: float) -> None:
    ax.set_facecolor(IDLE_COLOR)
    inside = events[(events[:, 3] >= start) & (events[:, 2] <= end)]
    for index, category in enumerate(CATEGORIES):
        for rank in range(ranks):
            mine = inside[(inside[:, 0] == rank) & (inside[:, 1] == index)]
            if len(mine):
                spans = [((s - start) / unit, (e - s) / unit) for s, e in mine[:, 2:4]]
                ax.broken_barh(spans, (rank - 0.4, 0.8), facecolors=COLORS[category], linewidth=0)
    ax.set_xlim(0, (end - start) / unit)
    ax.set_ylim(ranks - 0.5, -0.5)
    ax.set_yticks(range(ranks))
    ax.set_yticklabels([f"rank {r}" for r in range(ranks)])


def timeline_figure(run: results.Run) -> plt.Figure:
    """Per-rank Gantt chart of a traced run."""
    events = np.asarray(run.arrays["trace/events"], dtype=float)
    ranks = int(run.attrs["world_size"])
    windows = _fill_drain_windows(events, ranks) if run.attrs.get("variant") == "pipeline" else []
    fig, axes = plt.subplots(1 + len(windows), 1, figsize=(11, 1.2 + 1.1 * ranks * (1 + len(windows)) + 0.6),
                             constrained_layout=True, squeeze=False)
    axes = axes[:, 0]
    total = float(events[:, 3].max())
    _gantt(axes[0], events, ranks, 0.0, total, 1.0)
    axes[0].set_xlabel("time since the start of training (s)")
    axes[0].set_title("whole run")
    for ax, (title, start, end) in zip(axes[1:], windows):
        _gantt(ax, events, ranks, start, end, 1e-3)
        ax.set_xlabel(f"time (ms) from t = {start:.3f} s")
        ax.set_title(title)
    present = sorted({int(c) for c in events[:, 1]})
    handles = [Patch(color=COLORS[CATEGORIES[c]], label=LABELS[CATEGORIES[c]]) for c in present]
    handles.append(Patch(facecolor=IDLE_COLOR, edgecolor="#bbbbbb", label="idle"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9)
    config = run.config
    layers = ",".join(map(str, config.get("layers", ())))
    fig.suptitle(f"Where each rank's time goes: {run.attrs.get('variant')} [{layers}] on {run.attrs.get('dataset')}, "
                 f"p = {ranks}, batch {config.get('batch_size')} (run {run.name}, {run.attrs.get('hostname', '?')})",
                 fontsize=11)
    return fig


def save(fig: plt.Figure, directory: str, stem: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = os.path.join(directory, f"{stem}.{ext}")
        fig.savefig(path, dpi=130, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def make_all(runs: list[results.Run], directory: str, timeline_run: str | None = None,
             prefix: str = "", targets: list[float] = ()) -> list[str]:
    """Every figure the runs support, saved under directory; the paths written."""
    written = []
    for stem, fig in (("speedup", speedup_figure(runs)), ("variants_speedup", variants_figure(runs)),
                      ("accuracy_time", accuracy_figure(runs, targets))):
        if fig is not None:
            written += save(fig, directory, prefix + stem)
    traced = traced_runs(runs)
    if timeline_run is not None:
        traced = [run for run in traced if run.name == timeline_run]
        if not traced:
            raise results.ResultsError(f"no traced run named {timeline_run} (record one with --trace)")
    if traced:
        # the most parallel traced run: that is where fill and drain show
        run = max(traced, key=lambda r: (r.attrs["world_size"], -r.attrs["index"]))
        written += save(timeline_figure(run), directory, prefix + "timeline")
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pffbench.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", metavar="FILE.h5")
    parser.add_argument("-o", "--output", default="plots", metavar="DIR", help="directory (default: %(default)s)")
    parser.add_argument("--timeline-run", default=None, metavar="NAME",
                        help="run to draw the timeline of (default: the traced run with the most ranks)")
    parser.add_argument("--prefix", default="", help="prefix of the file names")
    parser.add_argument("--target", type=float, action="append", default=[], metavar="A",
                        help="mark test accuracy A on accuracy_time.png (besides the runs' --target-accuracy); "
                             "repeatable")
    opts = parser.parse_args(argv)
    try:
        skipped = lambda line: print(f"pffbench.plot: warning: {line}", file=sys.stderr)  # noqa: E731
        runs = [run for path in opts.files for run in results.read_runs(path, on_damaged=skipped)]
        written = make_all(runs, opts.output, opts.timeline_run, opts.prefix, opts.target)
    except results.ResultsError as error:
        print(f"pffbench.plot: error: {error}", file=sys.stderr)
        return 2
    if not written:
        print("pffbench.plot: nothing to plot (no complete runs)", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

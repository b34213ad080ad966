"""`python -m pffbench.plot FILE.h5 [...] -o plots/`: figures from results
files, PNG (and PDF with --pdf), headless (matplotlib Agg).

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
- variants_speedup.png: every variant's speedup on one chart (FF variants
  against data-parallel backprop when the files hold backprop runs);
- race.png: the runs of python -m pffbench.tune (jobs/race.sbatch), test
  accuracy against training time for every contender at its pick, one panel
  per rank count, stars at the median time to each target.

Series are styled by analysis/style.py: colour by variant and rule, marker by
ranks, dashed for backprop, hollow markers for runs from a busy host.

PNG only unless --pdf.  The folder keeps a record of which results files
each figure came from (analysis/sidecar.py): plot warns before overwriting
another file's figures, removes its own stale ones, and says why a figure was
not drawn.

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
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from . import results  # noqa: E402
from .launch.command import command  # noqa: E402
from .analysis import analysis, race, sidecar  # noqa: E402
from .analysis.style import Styles, legend_marks  # noqa: E402
from .analysis.timeline import COLORS, IDLE_COLOR, LABELS, save, timeline_figure, traced_runs  # noqa: E402,F401
from .store.atomic import WriteFailed, describe  # noqa: E402

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


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _label(case, keys: list[str] = ()) -> str:
    """variant, the full net (input width first: [784, 784, 544]) and data set, then the values of ``keys``
    (``_telling``): what tells this series from another that would read the same."""
    dims = case.runs[0].attrs.get("dims")
    net = f"[{', '.join(map(str, dims))}]" if dims is not None and len(dims) else case.label.split(" ")[1]
    return f"{case.variant} {net} {case.dataset}" + (f" ({case.differing(keys)})" if keys else "")


def _telling(cases, *shown: str) -> list[str]:
    """The settings that tell apart ``cases`` whose legend would otherwise read the same: variant, net,
    data set and the case attributes ``shown`` ("ranks", "threads") the legend also names."""
    return analysis.distinguishing(cases, lambda c: (c.variant, c.dataset, c.value("layers"),
                                                     *(getattr(c, name) for name in shown)))


def _style(styles: Styles, case) -> dict:
    """The case's series style (analysis/style.py): colour by variant and rule, marker by p, hollow if busy."""
    return styles.of(case.variant, case.ranks, case.value("objective"), busy=case.busy > 0)


def _busy(case) -> str:
    return f", busy host ({case.busy} of {len(case.runs)})" if case.busy else ""


def _machine(runs) -> str:
    """The runs' hosts, each with its CPU model where recorded: "vm (Intel(R) Xeon(R) Processor)"."""
    cpus = {}
    for run in runs:
        cpus.setdefault(_text(run.attrs.get("hostname") or "?"), set()).add(_text(run.attrs.get("cpu_model") or ""))
    return ", ".join(f"{host} ({', '.join(sorted(c for c in cpu if c))})" if any(cpu) else host
                     for host, cpu in sorted(cpus.items()))


def _text(value) -> str:
    """An attribute as text (older files stored text as bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _workload(run: results.Run, rival: bool) -> str:
    """A run's data and net for a title: "mnist, [784, 784, 544]" (the recorded widths, input first; the
    hidden widths alone where a run recorded none) or "imagefolder cifar10-jpeg, --conv 20,80,160,320" (an
    image folder named by its folder; a conv net by its blocks, then its dense layers)."""
    config = run.config
    data = config["dataset"]
    if data == "imagefolder" and config.get("data_dir"):
        data += " " + os.path.basename(os.path.normpath(config["data_dir"]))
    if config.get("conv"):
        net = "--conv " + ",".join(map(str, config["conv"]))
        return f"{data}, {net}" + (f" + dense {','.join(map(str, config['layers']))}" if config.get("layers") else "")
    if run.attrs.get("dims") is None:
        dims = list(config["layers"])
    else:  # the recorded widths, input first; a baseline's end with its head
        dims = list(run.attrs["dims"])[:-1] if rival else list(run.attrs["dims"])
    return f"{data}, [{', '.join(map(str, dims))}]"


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
    keys = _telling([rows[0].case for rows in series], "threads")
    styles, any_busy = Styles(), False
    for rows in series:
        p, s, err, rows = _speedup_points(rows)
        top_s, top_e = max(top_s, 1.1 * float(np.max(s + err[1]))), max(top_e, 1.1 * float(np.max((s + err[1]) / p)))
        case = rows[0].case
        busy = sum(r.case.busy for r in rows)
        any_busy |= busy > 0
        look = styles.of(case.variant, 1, case.value("objective"), busy=busy > 0)  # one series over p
        color = look["color"]
        label = f"{_label(case, keys)}, {_plural(case.threads, 'thread')}/rank" + (
            f", busy host ({busy} runs)" if busy else "")
        ax_s.errorbar(p, s, yerr=err, capsize=4, label=label, **look)
        ax_e.errorbar(p, s / p, yerr=err / p, capsize=4, label=label, **look)
        if case.variant == "pipeline" and case.minibatches:
            fine = np.array(all_p, dtype=float)
            bound = [analysis.pipeline_bound(q, case.minibatches) for q in fine]
            ax_s.plot(fine, bound, "--", color=color, alpha=0.6,
                      label=f"pipeline bound p·m/(m+p−1), m = {case.minibatches}")
            ax_e.plot(fine, np.array(bound) / fine, "--", color=color, alpha=0.6)
        base = rows[0].base
        note = (f"{case.variant}: base = 1 rank × {_plural(base.threads, 'thread')}, T1 = {base.stats['median']:.2f} s "
                f"(median of {base.stats['n']})")
        best = rows[0].best_single
        if best is not None:
            note += f"; 1 rank × {_plural(best.threads, 'thread')}: {best.stats['median']:.2f} s"
        notes.append(note)
    _log2_axis(ax_s, all_p, "x")
    _log2_axis(ax_s, [2.0 ** k for k in range(-3, 8)], "y")
    ax_s.set_ylim(min(0.9, ax_s.get_ylim()[0]), top_s)
    ax_s.set_xlabel("MPI ranks p")
    ax_s.set_ylabel("speedup S(p) = T1 / Tp")
    ax_s.set_title("Speedup (median, IQR error bars)")
    ax_s.grid(True, which="major", alpha=0.3)
    legend_marks(ax_s, busy=any_busy, fontsize=8, loc="upper left")
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
    keys = _telling([rows[0].case for rows in series])
    styles, any_busy = Styles(), False
    for rows in series:
        p, s, err, rows = _speedup_points(rows)
        top = max(top, 1.1 * float(np.max(s + err[1])))
        case = rows[0].case
        busy = sum(r.case.busy for r in rows)
        any_busy |= busy > 0
        ax.errorbar(p, s, yerr=err, capsize=4, **styles.of(case.variant, 1, case.value("objective"), busy=busy > 0),
                    label=f"{_label(case, keys)} (T1 = {rows[0].base.stats['median']:.1f} s)"
                          + (f", busy host ({busy} runs)" if busy else ""))
    _log2_axis(ax, all_p, "x")
    _log2_axis(ax, [2.0 ** k for k in range(-3, 8)], "y")
    ax.set_ylim(min(0.9, ax.get_ylim()[0]), top)
    ax.set_xlabel("MPI ranks p")
    ax.set_ylabel("speedup S(p) = T1 / Tp (each against its own 1-rank run)")
    has_backprop = any(rows[0].case.variant in analysis.BASELINES for rows in series)
    what = "FF variants vs backprop" if has_backprop else "Speedup of each variant (no backprop runs in the files)"
    ax.set_title(f"{what}\n{_machine(runs)}", fontsize=11)
    ax.grid(True, alpha=0.3)
    legend_marks(ax, busy=any_busy, fontsize=8, loc="upper left")
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
    keys = _telling([case for case, _, _ in curves], "ranks", "threads")
    styles, starred = Styles(), False
    for case, seconds, accuracy in curves:
        look = _style(styles, case)
        ax.plot(seconds, 100 * accuracy, markersize=3 if len(seconds) > 20 else 6, **look,
                label=f"{_label(case, keys)}, p = {case.ranks} × {_plural(case.threads, 'thread')}{_busy(case)}")
        for goal in marked:
            hit = np.flatnonzero(accuracy >= goal)
            if hit.size:
                starred = True
                ax.plot(seconds[hit[0]], 100 * accuracy[hit[0]], "*", color=look["color"], markersize=12,
                        markeredgecolor="black", markeredgewidth=0.5)
    for goal in marked:
        ax.axhline(100 * goal, color="black", linestyle=":", linewidth=1)
        ax.annotate(f"target {100 * goal:g} %", (0, 100 * goal), xycoords=("axes fraction", "data"),
                    xytext=(4, 2), textcoords="offset points", fontsize=8)
    ax.set_xlabel("training time (s, evaluation excluded)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Test accuracy against wall-clock training time\n{_machine(runs)}", fontsize=11)
    ax.grid(True, alpha=0.3)
    legend_marks(ax, star=starred, busy=any(case.busy for case, _, _ in curves), fontsize=8, loc="best")
    return fig


def race_figure(runs: list[results.Run], targets: list[float] = ()) -> plt.Figure | None:
    """The race (``python -m pffbench.tune`` runs, jobs/race.sbatch): test accuracy against training time
    for every contender at its pick for the highest target whose pick it repeated, one panel per rank count p,
    the curve of its first repetition, a star at each target's median time over the repetitions (analysis/race.py);
    the y axis starts 5 points below the lowest target.  None without tune runs with repetitions."""
    contenders = [c for c in race.contenders(runs) if c.trials and c.repeats]
    goals = sorted(set(targets) | set(analysis.recorded_targets([r for c in contenders for r in c.trials.values()])))
    if not contenders or not goals:
        return None
    rows = race.race_rows(contenders, goals)
    ranks = sorted({c.ranks for c in contenders})
    fig, axes = plt.subplots(1, len(ranks), figsize=(6.2 * len(ranks), 5.2), squeeze=False, sharex=True, sharey=True,
                             constrained_layout=True)
    styles = Styles()
    for ax, p in zip(axes[0], ranks):
        for contender in (c for c in contenders if c.ranks == p):
            # its pick for the highest target whose pick was repeated (a contender that never reached the top
            # target in its trials has no repetitions of that pick)
            picks = (race.pick_for(contender, goal)[0] for goal in reversed(goals))
            lr = next((lr for lr in picks if contender.repeats.get(lr)), None)
            if lr is None:
                continue
            repeats = contender.repeats[lr]
            busy = any(analysis.busy_host(run) for run in repeats)
            look = styles.of(contender.variant, p, contender.objective, busy=busy)
            table = race.evaluations(repeats[0])
            ax.plot(table[:, 2], 100 * table[:, 3], markersize=3, markevery=max(1, len(table) // 12), **look,
                    label=f"{contender.label}, lr {lr:g}" + (", busy host" if busy else ""))
            for row in rows:
                if row["contender"] == contender.label and row["lr"] == lr and np.isfinite(row["seconds"]):
                    ax.plot(row["seconds"], 100 * row["target"], "*", color=look["color"], markersize=13,
                            markeredgecolor="black", markeredgewidth=0.5)
        for goal in goals:
            ax.axhline(100 * goal, color="black", linestyle=":", linewidth=1)
        ax.set_ylim(100 * goals[0] - 5, 100)
        ax.set_xlabel("training time (s, evaluation excluded)")
        ax.set_title(f"p = {p} rank{'s' if p > 1 else ''}", fontsize=10)
        ax.grid(True, alpha=0.3)
        legend_marks(ax, star="median time to a target (repetitions)", busy=any("busy host" in t for t in ax.get_legend_handles_labels()[1]),
                     fontsize=7.5, loc="best")
    axes[0][0].set_ylabel("test accuracy (%), first repetition")
    some = contenders[0].trials[next(iter(contenders[0].trials))]
    fig.suptitle(f"The race to {', '.join(f'{100 * g:g}' for g in goals)} % ({_workload(some, contenders[0].rival)}, "
                 f"batch {some.config['batch_size']}; star: median of the repetitions)\n{_machine(runs)}",
                 fontsize=10)
    return fig


def figures(runs: list[results.Run], timeline_run: str | None = None,
            targets: list[float] = ()) -> tuple[dict, list[str]]:
    """({stem: Figure} of every figure the runs support, [why each other one was not drawn]);
    ``targets``: accuracies marked on accuracy_time.png besides the runs' --target-accuracy."""
    drawn, skipped = {}, []
    tuned = [run for run in runs if run.name.startswith("tune-")]
    if tuned:  # the race has a figure of its own; its trials would crowd the others
        drawn["race"] = race_figure(tuned, targets)
        if drawn["race"] is None:
            del drawn["race"]
            skipped.append("race: no contender with repetitions on the test set")
        runs = [run for run in runs if not run.name.startswith("tune-")]
    several = "no configuration has runs on more than one rank count with a 1-rank run to compare against"
    unpaired = analysis.unpaired(runs)
    if unpaired:  # a 1-rank run there is, of other code or on another machine: say so
        several += f" ({unpaired[0]}{'; ...' if len(unpaired) > 1 else ''})"
    for stem, fig, why in (("speedup", speedup_figure(runs), several),
                           ("variants_speedup", variants_figure(runs), several),
                           ("accuracy_time", accuracy_figure(runs, targets), "no complete run has a test accuracy")):
        if fig is None:
            skipped.append(f"{stem}: {why}")
        else:
            drawn[stem] = fig
    traced = traced_runs(runs)
    if timeline_run is not None:
        traced = [run for run in traced if run.name == timeline_run]
        if not traced:
            raise results.ResultsError(f"no traced run named {timeline_run} (record one with --trace)")
    if traced:
        # the most parallel traced run: that is where fill and drain show
        run = max(traced, key=lambda r: (r.attrs["world_size"], -r.attrs["index"]))
        drawn["timeline"] = timeline_figure(run)
    else:
        skipped.append("timeline: no traced run (record one with python -m pffbench.run --trace)")
    return drawn, skipped


def make_all(runs: list[results.Run], directory: str, timeline_run: str | None = None,
             prefix: str = "", formats=("png",), targets: list[float] = ()) -> list[str]:
    """Every figure the runs support, saved under directory; the paths written."""
    drawn, _ = figures(runs, timeline_run, targets)
    return [path for stem, fig in drawn.items() for path in save(fig, directory, prefix + stem, formats)]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as in run: the usage is for --help
        raise results.ResultsError(message)


@command("pffbench.plot")
def main(argv=None) -> int:
    parser = _Parser(prog="python -m pffbench.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", metavar="FILE.h5")
    parser.add_argument("-o", "--output", default=sidecar.DEFAULT_FOLDER, metavar="DIR",
                        help="folder the figures go in, created if missing (default: %(default)s, which git "
                             "ignores; the README's figures in plots/ come from `make figures`)")
    parser.add_argument("--timeline-run", default=None, metavar="NAME",
                        help="run to draw the timeline of (default: the traced run with the most ranks)")
    parser.add_argument("--prefix", default="", help="prefix of the file names")
    parser.add_argument("--target", type=float, action="append", default=[], metavar="A",
                        help="mark test accuracy A on accuracy_time.png (besides the runs' --target-accuracy); "
                             "repeatable")
    parser.add_argument("--pdf", action="store_true", help="also write each figure as PDF (default: PNG only)")
    try:
        opts = parser.parse_args(argv)
        damaged = lambda line: print(f"pffbench.plot: warning: {line}", file=sys.stderr)  # noqa: E731
        runs = [run for path in opts.files for run in results.read_runs(path, on_damaged=damaged)]
        drawn, skipped = figures(runs, opts.timeline_run, opts.target)
    except results.ResultsError as error:
        print(f"pffbench.plot: error: {error}", file=sys.stderr)
        return 2
    for why in skipped:
        print(f"pffbench.plot: not drawn: {why}", file=sys.stderr)
    if not drawn:
        print("pffbench.plot: nothing to plot (no complete runs)", file=sys.stderr)
        return 1
    formats = ("png", "pdf") if opts.pdf else ("png",)
    try:
        written = write(drawn, opts.output, opts.prefix, formats, sidecar.sources_of(opts.files))
    except OSError as error:  # a full disk, a read-only folder: the OS's reason, in one line
        where = error.filename or opts.output
        print(f"pffbench.plot: error: {error if isinstance(error, WriteFailed) else describe(where, error)}",
              file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def write(drawn: dict, directory: str, prefix: str, formats, sources: list[str]) -> list[str]:
    """Save the figures; warn about those that replace another results file's
    figures, remove this source's figures not drawn now (analysis/sidecar.py)."""
    names = [f"{prefix}{stem}.{ext}" for stem in drawn for ext in formats]
    for name, theirs in sidecar.conflicts(directory, names, sources):
        origin = f"drawn from {', '.join(theirs)}" if theirs else "of unknown origin"
        print(f"pffbench.plot: warning: overwriting {os.path.join(directory, name)} ({origin})", file=sys.stderr)
    written = [path for stem, fig in drawn.items() for path in save(fig, directory, prefix + stem, formats)]
    removed = sidecar.stale(directory, names, sources)
    for name in removed:
        os.remove(os.path.join(directory, name))
        print(f"pffbench.plot: removed {os.path.join(directory, name)}: drawn from the same files before, "
              f"not drawable now", file=sys.stderr)
    sidecar.update(directory, names, removed, sources)
    return written


if __name__ == "__main__":
    sys.exit(main())

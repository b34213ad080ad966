"""The per-rank timeline (Gantt chart) of a traced run, for
`python -m pffbench.plot` (timeline.png): compute, data, send/receive wait,
sync and evaluation per rank, gaps idle; for the pipeline, zooms on its fill
and on its drain at the end of epoch 1."""
from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from ..store import reader as results
from ..instrument.timer import CATEGORIES

COLORS = {"compute": "#1f77b4", "data": "#9ecae1", "send_wait": "#ff7f0e", "recv_wait": "#d62728",
          "sync": "#9467bd", "eval": "#7f7f7f"}
LABELS = {"compute": "compute", "data": "data (rank 0)", "send_wait": "send wait", "recv_wait": "receive wait",
          "sync": "sync / allreduce", "eval": "evaluation"}
IDLE_COLOR = "#f0f0f0"


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
    layers = ", ".join(map(str, run.attrs.get("dims") or config.get("layers", ())))
    fig.suptitle(f"Where each rank's time goes: {run.attrs.get('variant')} [{layers}] on {run.attrs.get('dataset')}, "
                 f"p = {ranks}, batch {config.get('batch_size')} (run {run.name}, {run.attrs.get('hostname', '?')})",
                 fontsize=11)
    return fig


def save(fig: plt.Figure, directory: str, stem: str, formats=("png",)) -> list[str]:
    """Write ``fig`` as ``directory/stem.<format>`` for each format (130 dpi) and close it; the paths written.
    Shared by python -m pffbench.plot and the model's figures."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for ext in formats:
        path = os.path.join(directory, f"{stem}.{ext}")
        fig.savefig(path, dpi=130, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths

"""The model's figures: predicted speedup against p, one panel per network
kind, measured points overlaid; and a predicted per-rank timeline drawn by
pffbench.plot's own Gantt code (``analysis.timeline.timeline_figure``)."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..analysis import timeline  # noqa: E402
from ..analysis.style import Styles  # noqa: E402
from ..store import reader as results  # noqa: E402
from .predict import Prediction  # noqa: E402

def speedup_figure(panels: list[dict]) -> plt.Figure:
    """``panels``: [{"title", "curves": {variant: [(p, speedup)]},
    "measured": {variant: [(p, median, low, high)]}, "note"}]."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 6.2), squeeze=False, constrained_layout=True)
    for ax, panel in zip(axes[0], panels):
        top, styles = 1, Styles()  # analysis/style.py: a variant's colour as in pffbench.plot's figures
        for label, points in panel["curves"].items():
            variant = label.split()[0]  # a label is a variant, optionally followed by its net
            look = styles.of(variant)  # a second net of the same variant: another line style
            color, marker = look["color"], look["marker"]
            ps, ss = zip(*points)
            ax.plot(ps, ss, markersize=4, **look, label=f"{label} (model)")
            top = max(top, max(ps))
            if label in panel.get("measured", {}):
                ps, med, low, high = (np.array(v, dtype=float) for v in zip(*panel["measured"][label]))
                ax.errorbar(ps * 1.03, med, yerr=[med - low, high - med], fmt=marker, color=color, markersize=8,
                            markeredgecolor="black", capsize=3, label=f"{label} (measured)")
        ideal = [1, top]
        ax.plot(ideal, ideal, ":", color="grey", label="ideal S = p")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ticks = [2 ** k for k in range(int(np.log2(top)) + 1)]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        yticks = [0.5] + ticks if ax.get_ylim()[0] < 1 else ticks
        ax.set_yticks(yticks, [str(t) for t in yticks])
        ax.set_xlabel("ranks p")
        ax.set_ylabel("speedup over 1 rank")
        ax.set_title(panel["title"], fontsize=8.5)
        if panel.get("note"):
            ax.text(0.02, 0.98, panel["note"], transform=ax.transAxes, va="top", fontsize=7.5, color="#444444")
        ax.grid(True, which="major", alpha=0.3)
        if panel.get("measured"):  # many series: the legend goes under the panel
            ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        else:
            ax.legend(fontsize=6.5, loc="lower right")
    return fig


def race_figure(panels: list[dict], target: float) -> plt.Figure:
    """Predicted time to ``target`` against p, a line per contender (perfmodel/race.py's rows), the
    race's measured medians as stars; ``panels``: [{"title", "rows", "notes"}], one per network."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 5.6), squeeze=False, sharey=True,
                             constrained_layout=True)
    for ax, panel in zip(axes[0], panels):
        styles, series = Styles(), {}
        for row in panel["rows"]:
            series.setdefault((row["variant"], row["objective"]), []).append(row)
        for (variant, objective), rows in series.items():
            rows = [r for r in rows if np.isfinite(r["seconds"])]
            if not rows:
                continue
            look = styles.of(variant, 1, objective)
            name = variant + (f" x {objective}" if objective else "")
            ax.plot([r["p"] for r in rows], [r["seconds"] for r in rows], markersize=5, **look,
                    label=f"{name} (model)")
            hits = [r for r in rows if np.isfinite(r["measured"])]
            if hits:
                ax.plot([r["p"] for r in hits], [r["measured"] for r in hits], "*", color=look["color"],
                        markersize=13, markeredgecolor="black", markeredgewidth=0.5)
        ax.plot([], [], "*", color="grey", markersize=11, label="measured: the race, one 2-core node (median)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = [1, 2, 4, 8, 16, 32, 64]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("ranks p")
        ax.set_ylabel(f"training seconds to {100 * target:g} % test accuracy")
        ax.set_title(panel["title"], fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
        if panel["notes"]:
            ax.text(0.0, -0.12, "\n".join(panel["notes"]), transform=ax.transAxes, fontsize=6.5, color="#444444",
                    va="top")  # under the axes: the curves stay clear
    fig.suptitle("The race, predicted: model epoch seconds x measured samples to target", fontsize=10)
    return fig


def timeline_figure(pred: Prediction, config: dict, title_run: str = "model", dims=None) -> plt.Figure:
    """The predicted per-rank timeline of ``pred`` (simulated with trace=True),
    in the layout of a traced run, drawn by timeline.timeline_figure; ``dims``: the
    whole net, input width first (the title's, as for a measured run)."""
    events = pred.timeline.events
    attrs = {"world_size": pred.p, "variant": pred.variant, "dataset": config.get("dataset", "mnist"),
             "config": json.dumps(config), "hostname": "model"}
    if dims is not None:
        attrs["dims"] = list(dims)
    return timeline.timeline_figure(results.Run(title_run, attrs, {"trace/events": events}))

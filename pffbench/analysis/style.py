"""One look for every figure (``python -m pffbench.plot``, ``model plot``): what a series is decides how
it is drawn, so a kind keeps its colour in every figure and no two series of one figure look alike,
whatever their count.

- colour: what is trained, the variant with its local rule (``KIND_COLORS``: fixed colours from the
  Okabe-Ito and tab20 palettes, told apart also in grey print by the markers); a kind not listed takes
  the first colour no series of the figure uses;
- marker: the ranks p (``RANK_MARKERS``), so p = 1 and p = 2 of one kind share a colour and differ in
  shape;
- line: solid for local learning, dashed for the backprop baselines; further series of the same kind
  and p (another setting: threads, a learning rate, a partition) take dash-dot, then dotted, then
  thinner lines;
- a hollow marker: the series holds a run measured on a busy host (analysis.busy_host), and its legend
  entry says "busy host";
- a star: where a curve first reached a target accuracy (``legend_marks`` adds the entries that
  explain the star and the hollow marker to a legend).
"""
from __future__ import annotations

from matplotlib.lines import Line2D

from ..core.variants import BASELINES

# kind -> colour; a kind is "variant" or "variant x rule" (core/variants.py, learn/rules)
KIND_COLORS = {
    "pipeline": "#0072B2", "pipeline x ff": "#0072B2", "pipeline x local-softmax": "#009E73",
    "pipeline x scff": "#56B4E9", "all-layers": "#CC79A7", "all-layers x local-softmax": "#882255",
    "single-layer": "#E69F00", "federated": "#8c564b", "all-layers x scff": "#c5b0d5",
    "backprop": "#000000", "dp-backprop": "#D55E00", "ddp": "#F0E442", "gpipe": "#7f7f7f", "1f1b": "#bcbd22",
}
SPARE_COLORS = ("#17becf", "#9467bd", "#ff9896", "#98df8a", "#aec7e8", "#c49c94", "#f7b6d2", "#dbdb8d")
RANK_MARKERS = {1: "o", 2: "s", 4: "^", 8: "D", 16: "v", 32: "P", 64: "X", 128: "h"}
SPARE_MARKERS = ("<", ">", "p", "*", "d", "H", "8")
LINES = ("-", "-.", ":", (0, (1, 3)))


def kind_of(variant: str, objective: str | None = None) -> str:
    """The kind a series is coloured by: the variant, with its rule where one was chosen (perf-opt is
    All-Layers x local-softmax, and coloured as such)."""
    if variant == "perf-opt":
        return "all-layers x local-softmax"
    return f"{variant} x {objective}" if objective else variant


class Styles:
    """The styles of one figure's series, handed out in drawing order (``of``)."""

    def __init__(self):
        self.colors: dict[str, str] = {}
        self.used: set = set()

    def color(self, kind: str) -> str:
        if kind not in self.colors:
            taken = set(self.colors.values())
            fixed = KIND_COLORS.get(kind)
            free = [c for c in SPARE_COLORS if c not in taken]
            self.colors[kind] = fixed if fixed and fixed not in taken else (free[0] if free else "#333333")
        return self.colors[kind]

    def of(self, variant: str, ranks: int = 1, objective: str | None = None, busy: bool = False) -> dict:
        """matplotlib keyword arguments (color, marker, linestyle, linewidth, marker faces) for one series;
        different from every earlier series' of this figure, up to 12 series of one kind and p."""
        color = self.color(kind_of(variant, objective))
        marker = RANK_MARKERS.get(ranks) or SPARE_MARKERS[hash(ranks) % len(SPARE_MARKERS)]
        dashed = variant in BASELINES
        for n in range(len(LINES) * 3):
            line = LINES[n % len(LINES)]
            line = ("--" if line == "-" else (0, (3, 1, 1, 1, 1, 1)) if line == "-." else line) if dashed else line
            width = 1.6 / (1 + n // len(LINES))
            key = (color, marker, str(line), width)
            if key not in self.used:
                break
        self.used.add(key)
        return {"color": color, "marker": marker, "linestyle": line, "linewidth": width,
                "markerfacecolor": "white" if busy else color, "markeredgecolor": color}


def legend_marks(ax, star: bool | str = False, busy: bool = False, **legend) -> None:
    """The axes' legend, with entries explaining the marks that are not series: the star (first reached
    a target accuracy, or what ``star`` says) and the hollow marker (a run measured on a busy host)."""
    handles, labels = ax.get_legend_handles_labels()
    if star:
        handles.append(Line2D([], [], marker="*", color="grey", linestyle="none", markersize=11))
        labels.append(star if isinstance(star, str) else "first evaluation at a target")
    if busy:
        handles.append(Line2D([], [], marker="o", color="grey", markerfacecolor="white", linestyle="none"))
        labels.append("hollow: measured on a busy host")
    ax.legend(handles, labels, **legend)

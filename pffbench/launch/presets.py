"""`--preset NAME`: the settings of each row of the paper's Tables 1-5
(Aktemur et al., arXiv 2404.08573v2), with the paper's figures beside them.

Common setup: [784 or 3072, 2000, 2000, 2000, 2000], ReLU, batch 64, 100
epochs in 100 splits, Adam 0.01 for the FF layers and 1e-4 for the softmax
head, cooldown after epoch 50, Goodness scored on every layer but the first,
threshold 0.01.  The Goodness and Softmax rows feed each FF layer its input
at unit length (``--norm length``, as Hinton's paper and
pytorch_forward_forward do; pffbench's default is unit RMS, under which Adam
0.01 silences every layer) and use sharpness 2000, so that sharpness x
threshold is 20 as in pffbench's defaults (the paper does not state its loss's
slope); docs/paper.md, "What makes the paper's settings learn", has the
measurements.  Performance-Optimized trains by backprop and keeps the
defaults.  "sequential" rows are the variant run on 1 rank.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PAPER = dict(layers=(2000, 2000, 2000, 2000), batch_size=64, epochs=100, splits=100, lr=0.01, softmax_lr=1e-4,
             cooldown=0.5, score_layers=(1, 2, 3))
GOODNESS_LOSS = dict(norm="length", threshold=0.01, sharpness=2000.0)  # the FF rows (not Performance-Optimized)
SCHEDULES = {"sequential": ("all-layers", 1), "single-layer": ("single-layer", 4), "all-layers": ("all-layers", 4)}


@dataclass
class Preset:
    settings: dict
    ranks: int
    paper_seconds: float | None
    paper_accuracy: str  # percent, as printed in the paper ("98.30 / 98.38" = last head / all heads)
    table: str
    extra: dict = field(default_factory=dict)
    measured: str = ""  # what a run of it took with pffbench, where one was measured (docs/measurements.md)


def _row(dataset, classifier, neg, schedule, seconds, accuracy, table, variant=None):
    variant_name, ranks = SCHEDULES.get(schedule, (variant, 4))
    settings = dict(PAPER, dataset=dataset, classifier=classifier, neg=neg, variant=variant_name)
    if variant_name != "perf-opt":
        settings.update(GOODNESS_LOSS)
    return Preset(settings, ranks, seconds, accuracy, table)


def _table() -> dict[str, Preset]:
    rows = {}
    goodness = {"adaptive": [(11190.72, "98.52"), (5254.87, "98.43"), (2980.76, "98.51")],
                "random": [(7178.71, "98.33"), (1974.10, "98.26"), (2008.25, "98.17")],
                "fixed": [(7143.28, "97.95"), (1920.80, "97.94"), (1978.21, "97.89")]}
    softmax = {"adaptive": [(8365.96, "98.38"), (2471.27, "98.31"), (1886.42, "98.30")],
               "random": [(8104.96, "98.48"), (1891.86, "98.31"), (1786.30, "98.33")]}
    for classifier, table, figures in (("goodness", "MNIST, Goodness", goodness),
                                       ("softmax", "MNIST, Softmax", softmax)):
        for neg, per_schedule in figures.items():
            for schedule, (seconds, accuracy) in zip(SCHEDULES, per_schedule):
                rows[f"mnist-{classifier}-{neg}-{schedule}"] = _row("mnist", classifier, neg, schedule, seconds,
                                                                    accuracy, table)
    rows["mnist-perf-opt"] = _row("mnist", "goodness", "random", "perf-opt", 4219.97, "98.30 / 98.38",
                                  "MNIST, Performance-Optimized (last head / all heads)", variant="perf-opt")
    rows["mnist-goodness-random-federated"] = _row("mnist", "goodness", "random", "federated", None, "",
                                                   "not in the paper (Federated PFF has no published results)",
                                                   variant="federated")
    cifar = "CIFAR-10 (schedule not stated per row: All-Layers on 4 ranks)"
    rows["cifar10-perf-opt"] = _row("cifar10", "goodness", "random", "perf-opt", 4920.97, "53.11 / 53.50", cifar,
                                    variant="perf-opt")
    rows["cifar10-softmax-fixed"] = _row("cifar10", "softmax", "fixed", "all-layers", None, "50.89", cifar)
    rows["cifar10-softmax-random"] = _row("cifar10", "softmax", "random", "all-layers", None, "52.18", cifar)
    rows["cifar10-goodness-adaptive"] = _row("cifar10", "goodness", "adaptive", "all-layers", None, "11.10", cifar)
    # not a paper row: the core activation pipeline on the paper's net, the longer schedule that
    # reached 98.10 % (2 ranks on the shared 2-core VM, 4111 s); the figure column shows pffbench's own
    rows["paper-net"] = Preset(dict(layers=PAPER["layers"], batch_size=64, epochs=20, lr=1e-3, eval_every=2,
                                    variant="pipeline"), 4, None, "(98.10)",
                               "pffbench: the activation pipeline on the paper's net, 20 epochs (measured here)",
                               measured="4111 s on 2 ranks")
    return rows


PRESETS = _table()


INPUT_WIDTHS = {"mnist": 784, "cifar10": 3 * 32 * 32}


def net_text(p: Preset) -> str:
    """The preset's net as widths, input first: "[784, 2000 x 4]"."""
    layers = list(p.settings["layers"])
    hidden = f"{layers[0]} x {len(layers)}" if len(set(layers)) == 1 else ", ".join(map(str, layers))
    return f"[{INPUT_WIDTHS[p.settings.get('dataset', 'mnist')]}, {hidden}]"


# the full-length rows pffbench ran (docs/paper.md): each a results file of the repository's
FULL_ROWS = Path(__file__).resolve().parents[2] / "results"
FULL_ROWS_GLOB = "paper-full-*.h5"


def full_rows(folder: Path = FULL_ROWS) -> dict[str, str]:
    """Each preset's complete full-length run (its preset's epochs; the last one in the files' name order) in
    ``folder``'s paper-full-*.h5:
    "98.43 %, 9,976 s, 2 ranks, Intel Xeon" (test accuracy, wall time, ranks, the CPU); none where the folder
    is not there (an installed copy) or a file cannot be read."""
    from ..store.reader import read_runs
    found = {}
    for path in sorted(folder.glob(FULL_ROWS_GLOB)):
        try:
            runs = read_runs(str(path))
        except Exception:  # noqa: BLE001 -- a listing never fails on a results file; the row shows '-'
            continue
        for run in runs:  # in the order written: a later run of a preset replaces an earlier one
            name = run.config.get("preset")
            if name in PRESETS and run.attrs.get("status") == "complete" and \
                    run.config.get("epochs") == PRESETS[name].settings["epochs"]:
                cpu = str(run.attrs.get("cpu_model", "")).replace("(R)", "").replace(" Processor", "").strip()
                try:
                    found[name] = (f"{100 * run.attrs['final_test_accuracy']:.2f} %, {run.attrs['wall_time']:,.0f} "
                                   f"s, {run.attrs['world_size']} ranks{', ' + cpu if cpu else ''}")
                except (KeyError, TypeError, ValueError):  # a run without its figures: the row shows '-'
                    continue
    return found


def listing() -> str:
    """--list-presets: each preset's ranks, net, epochs, the paper's time and accuracy, and pffbench's own
    figures where one was measured: a full-length row in results/ (full_rows), else a shorter run's duration
    (``Preset.measured``, docs/measurements.md)."""
    measured = {name: p.measured for name, p in PRESETS.items() if p.measured} | full_rows()
    width = max([31, *(len(text) for text in measured.values())])
    lines = [f"{'preset':<37} {'ranks':>5}  {'net':<16} {'epochs':>6}  {'paper time (s)':>14}  {'paper acc %':>13}  "
             f"{'measured here':<{width}}  table"]
    for name, p in PRESETS.items():
        seconds = f"{p.paper_seconds:,.2f}" if p.paper_seconds else "-"
        lines.append(f"{name:<37} {p.ranks:>5}  {net_text(p):<16} {p.settings['epochs']:>6}  {seconds:>14}  "
                     f"{p.paper_accuracy or '-':>13}  {measured.get(name, '-'):<{width}}  {p.table}")
    lines += ["paper time: the paper's own hardware, on the ranks shown; measured here: pffbench on a 2-vCPU VM "
              "shared with other jobs: full-length rows (test accuracy, wall time, ranks, CPU) from results/"
              f"{FULL_ROWS_GLOB}, shorter runs' durations from docs/measurements.md; '-': not measured",
              "run one as: mpiexec -n RANKS pffbench run --preset NAME [flags to override]"]
    return "\n".join(lines)

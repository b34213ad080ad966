"""The paper's headline setup predicted (Aktemur et al. 2024: [784, 2000 x 4],
batch 64, 100 epochs in 100 chapters, 4 nodes; All-Layers/Adaptive 3.75x),
then deeper nets, batch sizes and more ranks."""
from __future__ import annotations

from ..store import reader as results
from ..core.partition import layer_costs
from . import calibrate, links
from .pff import _chapter_costs, wavefront_bound
from . import predict as model
from .study import deepen_backprop, planned_seconds

PAPER = model.Settings(60000, 100, 100)
PAPER_DIMS = [784, 2000, 2000, 2000, 2000]


def _base_costs(args, variant: str, dims, batch: int):
    """From a 1-rank pipeline run of the paper net (``--calibrate``), else the
    microbenchmarks; retargeted to ``dims`` and ``batch``."""
    if getattr(args, "calibrate", None):
        runs = [r for r in results.read_runs(args.calibrate) if int(r.attrs.get("world_size", 0)) == 1
                and r.attrs.get("variant", "pipeline") == "pipeline"]
        if runs:
            return calibrate.retarget(calibrate.from_run(runs[0]), dims, batch)
    return calibrate.measured(variant, dims, batch, 1)


def headline(args) -> None:
    costs = _base_costs(args, "pipeline", PAPER_DIMS, 64)
    print(f"calibration: {costs.source}; steps per minibatch (s): {[round(s, 5) for s in costs.step]}")
    print("\nThe paper's setup: [784, 2000 x 4], batch 64, 100 epochs in 100 chapters, 4 nodes x 1 rank")
    print("| network | Single-Layer | All-Layers | pipeline | All-Layers wavefront bound (these costs, free links) "
          "| (weight counts) |")
    print("|---|---:|---:|---:|---:|---:|")
    # the bound of the costs the model simulates (training steps on each layer's chain of chapters, the
    # recomputation between layers on the rank's own time): no prediction exceeds it
    train, forward, inputs, _ = _chapter_costs(costs, PAPER.num_train, 1)
    bound = wavefront_bound("all-layers", train, 100, 4, forward, inputs)
    weights = wavefront_bound("all-layers", layer_costs(PAPER_DIMS), 100, 4)
    for network in args.networks.split(","):
        cluster = links.Cluster(1, 1, 1, inter=links.link(network.strip()))
        cells = []
        for variant in ("single-layer", "all-layers", "pipeline"):
            t1 = model.predict(variant, costs, cluster, 1, PAPER).seconds
            t4 = model.predict(variant, costs, cluster, 4, PAPER)
            cells.append(f"{t1 / t4.seconds:.2f}x ({t4.seconds / 3600:.2f} h)")
        print(f"| {network} | " + " | ".join(cells) + f" | {bound:.2f}x | {weights:.2f}x |")


def deeper(args) -> None:
    depths = (8, 32) if args.quick else (8, 16, 32)
    batches = (64, 1024) if args.quick else (32, 64, 256, 1024)
    ranks = (8, 16, 32, 64)
    print("\nDeeper nets [784, 2000 x L], 100 epochs in 100 chapters, 1 rank per node; speedup over 1 rank")
    print("| L | batch | network | variant | " + " | ".join(f"p = {p}" for p in ranks) + " |")
    print("|---:|---:|---|---|" + "---:|" * len(ranks))
    for L in depths:
        dims = [784] + [2000] * L
        for batch in batches:
            ff = _base_costs(args, "pipeline", dims, batch)
            bp = deepen_backprop(calibrate.measured("dp-backprop", dims[:3], batch, 1), L)
            for network in args.networks.split(",")[-2:]:
                cluster = links.Cluster(1, 1, 1, inter=links.link(network.strip()))
                for variant, costs in (("pipeline", ff), ("all-layers", ff), ("single-layer", ff),
                                       ("dp-backprop", bp), ("ddp", bp), ("gpipe", bp)):
                    t1 = planned_seconds(variant, costs, cluster, 1, PAPER)
                    cells = [f"{t1 / planned_seconds(variant, costs, cluster, p, PAPER):.1f}"
                             if model.runs_on(variant, p, L) else "" for p in ranks]
                    print(f"| {L} | {batch} | {network} | {variant} | " + " | ".join(cells) + " |", flush=True)

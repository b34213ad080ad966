"""The model's studies: the planning figure (``plot``), and the pieces the
paper's headline setup with deeper nets (``paper``, headline.py) shares with it."""
from __future__ import annotations

import os
import statistics
from dataclasses import replace

from ..analysis import timeline
from ..core.variants import VARIANTS
from ..store import reader as results
from . import calibrate, figures, links
from . import predict as model
from . import validate as validation

DEEP_SETTINGS = model.Settings(60000, 100, 100)  # the paper's 100 epochs in 100 chapters
CLUSTER_VARIANTS = ("pipeline", "all-layers", "federated", "single-layer", "dp-backprop", "ddp", "gpipe", "1f1b")


def best_microbatches_seconds(variant: str, costs, cluster: links.Cluster, p: int, settings: model.Settings,
                              batch: int) -> tuple[int, float]:
    """(M, predicted seconds) of a p-stage GPipe/1F1B at the best of M = p, 2p, 4p microbatches (and 4,
    pffbench's default, where p <= 4), each of at least one row: more microbatches shrink the bubble,
    (p - 1)/(M + p - 1), but make every matmul smaller and add the library's bookkeeping per
    microbatch (GPipe, Huang et al., NeurIPS 2019, sec. 2.3, finds the bubble negligible from
    M >= 4p), so a planner picks M per p.  Raises ValueError if batch < p (no microbatch per stage)."""
    if batch < p:
        raise ValueError(f"{variant} on {p} stages needs minibatches of at least {p} rows, got {batch}")
    candidates = sorted({min(batch, k * p) for k in (1, 2, 4)} | ({4} if p <= 4 <= batch else set()))
    timed = [(model.predict(variant, replace(costs, microbatches=m), cluster, p, settings).seconds, m)
             for m in candidates if m >= p]
    seconds, m = min(timed)
    return m, seconds


def planned_seconds(variant: str, costs, cluster: links.Cluster, p: int, settings: model.Settings) -> float:
    """Predicted seconds as a planner would run ``variant`` on p ranks: gpipe/1f1b at their best number
    of microbatches (best_microbatches_seconds), every other variant as it is."""
    if VARIANTS[variant].microbatched:
        return best_microbatches_seconds(variant, costs, cluster, p, settings, costs.batch)[1]
    return model.predict(variant, costs, cluster, p, settings).seconds


def measured_panel(path: str, cores: int, intra: links.Link) -> tuple[dict, dict]:
    """The file's series: predicted curves on one node of ``cores`` cores and the
    measured speedups (median, min, max over repetitions); also each variant's
    calibration (costs) for the cluster panels."""
    checks, _ = validation.check(path, cores, links.Cluster(intra=intra))
    runs = {r.name: r for r in results.read_runs(path)}
    groups = {}
    for c in checks:
        groups.setdefault(c.calibration, []).append(c)
    curves, measured, costs_of = {}, {}, {}
    for name, members in groups.items():
        ps = sorted({c.p for c in members})
        if len(ps) < 2:
            continue
        calibration = runs[name]
        variant = calibration.attrs.get("variant", "pipeline")
        dims = list(calibration.attrs["dims"])
        costs = calibrate.from_run(calibration)
        # the deepest MLP of each variant (a conv net's calibration keeps its own net: not retargeted)
        if getattr(costs, "split", None) is None and len(costs.dims) > len(getattr(costs_of.get(variant), "dims", ())):
            costs_of[variant] = costs
        label = f"{variant} {'x'.join(map(str, dims[1:]))}" if not VARIANTS[variant].baseline \
            else variant
        base_t = statistics.median(c.measured for c in members if c.p == 1)
        settings = model.Settings.from_run(calibration)
        layers = len(dims) - (2 if VARIANTS[variant].baseline else 1)
        curve_ps = [p for p in (1, 2, 4) if model.runs_on(variant, p, layers)]
        t = {p: model.predict(variant, costs, links.Cluster(p, cores, costs.threads, intra), p, settings).seconds
             for p in curve_ps}
        curves[label] = [(p, t[1] / t[p]) for p in curve_ps]
        measured[label] = [(p, statistics.median(s), min(s), max(s)) for p in ps
                           for s in [[base_t / c.measured for c in members if c.p == p]]]
    return {"title": f"this machine: 1 node, {cores} cores, MNIST, 1 thread/rank (markers: measured, min-max)",
            "curves": curves, "measured": measured}, costs_of


def cluster_panel(costs_of: dict, network: str, layers: int) -> dict:
    """Predicted speedups of [784, 2000 x layers] on one rank per node."""
    dims = [784] + [2000] * layers
    curves = {}
    for variant in CLUSTER_VARIANTS:
        backprop = VARIANTS[variant].baseline
        source = costs_of.get(variant) or costs_of.get("backprop" if backprop else "all-layers")
        net = dims[:3] if backprop else dims
        costs = calibrate.retarget(source, net, 64) if source else calibrate.measured(variant, net, 64, 1)
        if backprop:
            costs = deepen_backprop(costs, layers)
        cluster = links.Cluster(1, costs.threads, costs.threads, inter=links.link(network))
        ps = [p for p in (1, 2, 4, 8, 16, 32, 64) if model.runs_on(variant, p, layers)]

        base = planned_seconds(variant, costs, cluster, 1, DEEP_SETTINGS)
        curves[variant] = [(p, base / planned_seconds(variant, costs, cluster, p, DEEP_SETTINGS)) for p in ps]
    lk = links.link(network)
    return {"title": f"[784, 2000 x {layers}], batch 64, 1 rank/node, {network} "
                     f"({lk.alpha * 1e6:.1f} us, {lk.beta / 1e9:.1f} GB/s)", "curves": curves,
            "note": "PFF: 100 epochs in 100 chapters; Single-Layer needs p = L;\nGPipe/1F1B: the best of p, 2p, 4p microbatches"}


def deepen_backprop(costs: calibrate.BackpropCosts, layers: int) -> calibrate.BackpropCosts:
    """Backprop costs of [784, 2000 x layers] from those of [784, 2000, 2000]:
    every cost grows with the weights (profiling a 32-layer net's backward
    at batch 1024 would take minutes)."""
    d = costs.dims
    have = sum(d[i] * d[i + 1] for i in range(len(d) - 1))
    want = d[0] * d[1] + (layers - 1) * d[1] * d[1]
    k = want / have
    return replace(costs, fb0=costs.fb0 * k, fb1=costs.fb1 * k, adam=costs.adam * k,
                   gradient_floats=int(costs.gradient_floats * k), dims=[d[0]] + [d[1]] * layers)


def cmd_plot(args) -> int:
    if args.race:
        return _race_plot(args)
    cores = args.cores_per_node or os.cpu_count() or 1
    first, costs_of = measured_panel(args.results_file, cores, links.link(args.intra))
    panels = [first] + [cluster_panel(costs_of, n.strip(), args.deep_layers) for n in args.networks.split(",")]
    written = timeline.save(figures.speedup_figure(panels), args.out_dir, "model_speedup")
    written += _timelines(args, cores, costs_of)
    print("\n".join(written))
    return 0


def _race_plot(args) -> int:
    """model_race.png: perfmodel/race.py's predictions, a panel per network of --networks."""
    from . import race
    runs = results.read_runs(args.results_file)
    panels = []
    for network in (n.strip() for n in args.networks.split(",")):
        cluster = links.Cluster(1, 1, 1, inter=links.link(network))
        rows, notes = race.predict_race(runs, args.target, [1, 2, 4, 8, 16, 32, 64], cluster)
        if not rows:
            raise ValueError(f"{args.results_file} holds no race runs (python -m pffbench.tune)")
        lk = links.link(network)
        panels.append({"title": f"1 rank/node, {network} ({lk.alpha * 1e6:.1f} us, {lk.beta / 1e9:.1f} GB/s)",
                       "rows": rows, "notes": notes})
    written = timeline.save(figures.race_figure(panels, args.target), args.out_dir, "model_race")
    print("\n".join(written))
    return 0


def _timelines(args, cores: int, costs_of: dict) -> list[str]:
    """model_timeline.png: the predicted timeline of the file's traced
    pipeline run with most ranks (and model_timeline_measured.png, that run
    as measured, for comparison by eye), else of the deepest pipeline net on
    ``--timeline-ranks`` ranks."""
    runs = results.read_runs(args.results_file)
    traced = [r for r in timeline.traced_runs(runs) if r.attrs.get("variant", "pipeline") == "pipeline"]
    written = []
    if traced:
        run = max(traced, key=lambda r: int(r.attrs["world_size"]))
        checks, _ = validation.check(args.results_file, cores, links.Cluster(intra=links.link(args.intra)))
        calibration = next((c.calibration for c in checks if c.run == run.name), None)
        if calibration is not None:
            costs = calibrate.from_run({r.name: r for r in runs}[calibration])
            p, settings = int(run.attrs["world_size"]), model.Settings.from_run(run)
            cluster = validation.cluster_of(run, cores, links.Cluster(intra=links.link(args.intra)))
            pred = model.predict("pipeline", costs, cluster, p, replace(settings, epochs=1), trace=True)
            written += timeline.save(figures.timeline_figure(pred, run.config, f"model of {run.name}", costs.dims), args.out_dir,
                                 "model_timeline")
            written += timeline.save(timeline.timeline_figure(run), args.out_dir, "model_timeline_measured")
            return written
    pipeline = costs_of.get("pipeline")
    if pipeline is not None:
        p = min(args.timeline_ranks, len(pipeline.dims) - 1)
        pred = model.predict("pipeline", pipeline, links.Cluster(p, cores, pipeline.threads), p,
                             model.Settings(60000, 1), trace=True)
        config = {"layers": pipeline.dims[1:], "batch_size": pipeline.batch}
        written += timeline.save(figures.timeline_figure(pred, config, f"predicted, {cores} cores",
                                                                 pipeline.dims), args.out_dir,
                             "model_timeline")
    return written

"""Validation: predict every run of a results file from its own recorded
settings and a calibration from a 1-rank run of the same configuration in
the same file, and compare with what was measured.

Runs are grouped as ``analysis`` groups them (the same settings apart from
output, tracing and evaluation frequency, on the same machine) and by threads
per rank.  A group's calibration is its 1-rank run with the median training
time; every run of the group is predicted from it (the calibrating runs too,
which shows the 1-rank runs' own spread; they are left out of the error
statistics).  The cluster a run ran on is read from its ``hostnames`` (ranks
per node) and ``threads_per_rank``; cores per node are not recorded, so
they are given (default: this machine's).
"""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, replace

from ..store import reader as results
from ..analysis import analysis
from .calibrate import from_run, run_threads, scaled
from .links import Cluster
from .predict import Settings, predict


@dataclass
class Check:
    run: str
    variant: str
    p: int
    threads: int
    nodes: int
    measured: float
    predicted: float
    calibration: str
    breakdown: dict
    schedule_only: float = float("nan")  # predicted with the work rescaled to the run's own measured work
    # (NaN where ranks share cores)

    @property
    def schedule_error(self) -> float:
        """The error left once the host's speed during the run is taken from
        the run itself (its ranks' summed compute and data): what the
        schedule model (dependencies, links, sharing) gets wrong."""
        return (self.schedule_only - self.measured) / self.measured

    @property
    def error(self) -> float:
        """(predicted - measured) / measured."""
        return (self.predicted - self.measured) / self.measured

    @property
    def calibrating(self) -> bool:
        return self.p == 1


def _key(run: results.Run) -> str:
    """A configuration as analysis groups runs into cases, with its threads per rank."""
    return json.dumps({"case": analysis.signature(run), "threads": run_threads(run)}, sort_keys=True)


def cluster_of(run: results.Run, cores_per_node: int, base: Cluster) -> Cluster:
    hosts = list(run.attrs.get("hostnames") or [run.attrs.get("hostname", "")])
    per_node = max(hosts.count(h) for h in set(hosts)) if hosts else 1
    return replace(base, ranks_per_node=per_node, cores_per_node=cores_per_node, threads=run_threads(run))


def check(path: str, cores_per_node: int | None = None, base: Cluster | None = None,
          names: list[str] | None = None) -> tuple[list[Check], list[str]]:
    """(one Check per predictable run, lines about runs that could not be predicted)."""
    cores = cores_per_node or os.cpu_count() or 1
    base = base or Cluster()
    runs = [r for r in results.read_runs(path, names) if r.attrs.get("status", "complete") == "complete"]
    groups = {}
    for run in runs:
        groups.setdefault(_key(run), []).append(run)
    checks, skipped = [], []
    for members in groups.values():
        if members[0].config.get("augment") and not members[0].config.get("conv"):  # crops and flips: data time the model does not count
            skipped += [f"{r.name}: augmented (--augment): the model does not count that" for r in members]
            continue
        ones = sorted((r for r in members if int(r.attrs["world_size"]) == 1), key=analysis.training_seconds)
        if not ones:
            skipped += [f"{r.name}: no 1-rank run of its configuration to calibrate from" for r in members]
            continue
        calibration = ones[(len(ones) - 1) // 2]
        try:
            costs = from_run(calibration)
        except ValueError as error:  # a conv net in a PFF chapter schedule: said per run
            skipped += [f"{r.name}: {error}" for r in members]
            continue
        for run in members:
            p = int(run.attrs["world_size"])
            cluster = cluster_of(run, cores, base)
            variant, settings = run.attrs.get("variant", "pipeline"), Settings.from_run(run)
            run_costs = costs
            if run.config.get("layer_costs"):  # its own split (a group's runs may split differently)
                run_costs = replace(costs, split=list(run.config["layer_costs"]))
            try:
                pred = predict(variant, run_costs, cluster, p, settings)
            except ValueError as error:
                skipped.append(f"{run.name}: {error}")
                continue
            rescaled = float("nan")
            if cluster.ranks_per_node * cluster.threads <= cluster.cores_per_node:
                # with cores shared the measured work is stretched by however the OS interleaved the ranks
                # (a pipeline's ranks mostly take turns), not as the model's fair share stretches it
                busy = float((run.arrays["timing/compute"] + run.arrays["timing/data"]).sum())
                k = busy / (pred.breakdown["mean work"] * p) if pred.breakdown["mean work"] > 0 else 1.0
                rescaled = predict(variant, scaled(run_costs, k), cluster, p, settings).seconds
            checks.append(Check(run.name, variant, p, cluster.threads, cluster.nodes(p),
                                analysis.training_seconds(run), pred.seconds, calibration.name, pred.breakdown,
                                rescaled))
    checks.sort(key=lambda c: (c.variant, analysis.stem(c.run), c.p, c.run))
    return checks, skipped


def case_errors(checks: list[Check]) -> list[tuple[str, int, int, float, float]]:
    """Per case (a configuration at one p, its repetitions together): (its
    first run's stem, p, repetitions, median measured s, predicted s), p > 1."""
    cases = {}
    for c in checks:
        if not c.calibrating:
            cases.setdefault((c.calibration, c.p), []).append(c)
    return [(analysis.stem(members[0].run), p, len(members), statistics.median(m.measured for m in members),
             members[0].predicted) for (_, p), members in sorted(cases.items(), key=lambda kv: kv[1][0].run)]


def case_table(checks: list[Check], markdown: bool = False) -> str:
    """One row per case: median measured vs predicted, and the calibration."""
    head = ["case", "p", "runs", "median measured s", "predicted s", "error %"]
    rows = [[stem, str(p), str(n), f"{measured:.2f}", f"{predicted:.2f}",
             f"{100 * (predicted - measured) / measured:+.1f}"]
            for stem, p, n, measured, predicted in case_errors(checks)]
    return _format(head, rows, markdown)


def summary(checks: list[Check]) -> dict:
    """Median and worst absolute error over the predicted (p > 1) runs."""
    predicted = [c for c in checks if not c.calibrating]
    if not predicted:
        return {"runs": 0}
    errors = [abs(c.error) for c in predicted]
    schedule = [abs(c.schedule_error) for c in predicted if c.schedule_error == c.schedule_error] or [float("nan")]
    medians = [abs(predicted_s - measured) / measured for _, _, _, measured, predicted_s in case_errors(checks)]
    return {"runs": len(errors), "median_abs_error": statistics.median(errors), "worst_abs_error": max(errors),
            "median_abs_schedule_error": statistics.median(schedule), "worst_abs_schedule_error": max(schedule),
            "cases": len(medians), "median_abs_case_error": statistics.median(medians),
            "worst_abs_case_error": max(medians)}


def by_variant(checks: list[Check]) -> dict[str, dict]:
    """summary() per variant, over its predicted (p > 1) runs."""
    variants = sorted({c.variant for c in checks if not c.calibrating})
    return {v: summary([c for c in checks if c.variant == v]) for v in variants}


def table(checks: list[Check], markdown: bool = False) -> str:
    head = ["run", "variant", "p", "threads", "measured s", "predicted s", "error %", "schedule-only error %",
            "calibrated on"]
    rows = [[c.run, c.variant, str(c.p), str(c.threads), f"{c.measured:.2f}", f"{c.predicted:.2f}",
             f"{100 * c.error:+.1f}" + (" (cal.)" if c.calibrating else ""),
             f"{100 * c.schedule_error:+.1f}" if c.schedule_error == c.schedule_error else "n/a (shared cores)",
             c.calibration] for c in checks]
    return _format(head, rows, markdown)


def _format(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in [head] + rows)

"""From raw runs to scaling numbers: what plot, report, sweep and bench share.

Nothing here is stored: every statistic is recomputed from the raw per-rank,
per-epoch timing arrays of the runs in a results file.

Runs are grouped into *cases*: the same configuration (the settings that
change what is computed or how long it takes, core/config.py, but
threads), the same code and software (git commit; torch, mpi4py, numpy,
h5py and Python versions), on the same machine (rank 0's hostname and CPU
model), with the same number of ranks p and threads per rank.  Runs that
differ only in code, software or machine are pooled into one case only when
asked (``pool=True``, report --pool), and such a case says so (``pooled``).
A case's repetitions are its sample.  The cases of one configuration
at different p form a *series*; its base case is p = 1 with the same threads
per rank (speedup S = T1 / Tp, efficiency E = S / p), and its best single
process is p = 1 with the most threads (a second speedup, against the best a
user gets without MPI).
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

import numpy as np

from ..store import reader as results
from ..core.config import Config, case_settings
from ..core.variants import BASELINES  # noqa: F401  (plot draws them dashed)
from ..instrument import target, timer
from ..instrument.progress import plural


def pipeline_bound(p: int, m: int) -> float:
    """Best speedup of a p-stage pipeline over m minibatches: fill and drain
    cost p-1 stage-times out of m+p-1."""
    return p * m / (m + p - 1)


def training_seconds(run: results.Run) -> float:
    """The run's training time (pffbench/instrument/timer.py): the slowest
    rank's epochs, evaluation excluded, which is not what is being sped up."""
    return timer.training_seconds(run.arrays["timing/wall"], run.arrays["timing/eval"])


def comm_wait_share(run: results.Run) -> float:
    """Largest share of a rank's training time spent waiting on communication
    (send, receive, and the synchronizing collectives)."""
    a = run.arrays
    waits = (a["timing/send_wait"] + a["timing/recv_wait"] + a["timing/sync"]).sum(axis=1)
    return float((waits / timer.training_time(a["timing/wall"], a["timing/eval"]).sum(axis=1)).max())


def busy_imbalance(run: results.Run) -> float:
    """How much longer the busiest rank computed and made data than the least
    busy one, as a share of the training time: in a pipeline the others wait
    at least that long whatever the transport, so a comm wait close to it is
    a difference in the ranks' speed, not the cost of communicating."""
    a = run.arrays
    busy = (a["timing/compute"] + a["timing/data"]).sum(axis=1)
    return float((busy.max() - busy.min()) / training_seconds(run))


def threads_per_rank(run: results.Run) -> int:
    threads = run.attrs.get("threads_per_rank", 0)
    return int(max(threads)) if isinstance(threads, (list, tuple)) else int(threads)


# what else than the configuration makes two runs' timings incomparable (store/provenance.py)
MACHINE = ("hostname", "cpu_model")
SOFTWARE = ("git_sha", "torch", "mpi4py", "numpy", "h5py", "python")


def signature(run: results.Run, pool: bool = False) -> str:
    """What a run's case is made of: its configuration, and unless ``pool`` its machine and software.
    Not --layer-costs: it changes no weight, only which rank holds which layer, so a p = 2 run split by
    measured costs has its 1-rank run (where one block holds every layer) in its series; the split a run
    used is a case's key of its own (``cases``: the recorded layer_blocks)."""
    config = {k: v for k, v in case_settings(run.config).items() if k != "layer_costs"}
    origin = {} if pool else {key: run.attrs.get(key, "") for key in MACHINE + SOFTWARE}
    return json.dumps({"config": config, **origin}, sort_keys=True)


# a repetition this many times slower (or faster) than its case's median is named in the notes: a noisy
# host, not the schedule (the spread of quiet repeats measured here stays well under it: README tables)
OUTLIER = 1.5

# the settings already shown in every table and legend, in columns of their own
SHOWN = ("variant", "dataset")
_ORDER = {f.name: i for i, f in enumerate(dataclasses.fields(Config))}


def cell(value):
    """A setting's value as one table cell: a sequence as "500,500", None as ""."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return value


def settings_of(run: results.Run) -> dict:
    """The settings that make a run's case (core/config.py's case_settings: what is computed, and what
    changes the times but threads), except variant and data set, in Config's order, then any a stored
    config has that this version's Config has not (a later version's setting, e.g. an objective), each
    a table cell (``cell``)."""
    settings = case_settings(run.config)
    keys = sorted((k for k in settings if k not in SHOWN), key=lambda k: (_ORDER.get(k, len(_ORDER)), k))
    return {k: cell(settings[k]) for k in keys}


def distinguishing(all_cases: list["Case"], shown=lambda case: (case.variant, case.dataset, case.ranks,
                                                                 case.threads, case.value("layers"))) -> list[str]:
    """The settings, and machine or software keys, that tell apart cases a table or legend would otherwise
    show alike: those whose values differ among cases with the same ``shown(case)`` (by default what a
    report row or a legend shows: variant, data set, ranks, threads, widths), e.g. federated IID against
    label-skew, two learning rates, two commits.  In settings_of's order, then MACHINE + SOFTWARE."""
    alike: dict = {}
    for case in all_cases:
        alike.setdefault(shown(case), []).append(case)
    keys = list(dict.fromkeys(k for case in all_cases for k in case.settings))
    keys += [k for k in MACHINE + SOFTWARE if k not in keys]
    return [k for k in keys if any(len({str(case.value(k)) for case in group}) > 1 for group in alike.values())]


def own_threads(run: results.Run) -> int:
    """The compute threads the run itself starts on rank 0's host (where the load is read): threads per rank
    of the ranks on that host (all ranks where hostnames were not recorded)."""
    threads = run.attrs.get("threads_per_rank") or []
    threads = list(threads) if isinstance(threads, (list, tuple)) else [int(threads)] * int(run.attrs.get(
        "world_size", 1) or 1)
    hosts = run.attrs.get("hostnames") or []
    if len(hosts) == len(threads):
        threads = [t for t, host in zip(threads, hosts) if host == hosts[0]]
    return int(sum(threads))


def busy_host(run: results.Run) -> bool:
    """Whether the run was measured on a busy host: a 1-minute load average, at
    its start or end (store/provenance.py), above what the host's cores, or
    the run's own threads where it starts more (own_threads), account for,
    by more than one: the run's own load (its ranks, and communication
    threads such as gloo's) is not a busy host, other jobs' is.  False for
    runs that did not record it."""
    cores = run.attrs.get("host_cores") or 0
    allowed = max(cores, own_threads(run)) + 1
    loads = [run.attrs.get(key) for key in ("load_avg_start", "load_avg_end")]
    return bool(cores) and any(isinstance(load, list) and load and load[0] > allowed for load in loads)


def stem(name: str) -> str:
    """A run name without its repetition suffix: sweep-p2-t1-r0 -> sweep-p2-t1."""
    return re.sub(r"-r\d+(-\d+)?$", "", name)


def accuracy_curve(run: results.Run) -> tuple[np.ndarray, np.ndarray]:
    """(training seconds at each evaluation, test accuracy): the recorded
    evaluations of the backprop baselines (every --eval-every-steps steps),
    else the evaluated epochs (see instrument/target.py)."""
    table = target.evaluations_of(run.arrays, int(run.attrs.get("minibatches_per_epoch", 0)))
    return table[:, 2], table[:, 3]


def recorded_targets(runs: list[results.Run]) -> list[float]:
    """The distinct --target-accuracy values the runs were made with, ascending."""
    values = {float(run.attrs["target_accuracy"]) for run in runs if run.attrs.get("target_accuracy") is not None}
    return sorted(v for v in values if np.isfinite(v))


@dataclass
class Case:
    signature: str
    variant: str
    dataset: str
    ranks: int
    threads: int
    runs: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return stem(self.runs[0].name)

    @property
    def seconds(self) -> np.ndarray:
        return np.array([training_seconds(run) for run in self.runs])

    @property
    def stats(self) -> dict:
        return results.summarize(self.seconds)

    @property
    def accuracy(self) -> float:
        return float(np.median([run.attrs.get("final_test_accuracy", np.nan) for run in self.runs]))

    def time_to_target(self, accuracy: float) -> tuple[float, int]:
        """(median training seconds to test accuracy >= ``accuracy`` over the
        repetitions that reached it, NaN if none; how many reached it)."""
        times = [target.time_to_accuracy(run.arrays, int(run.attrs.get("minibatches_per_epoch", 0)), accuracy)
                 for run in self.runs]
        reached = [t for t in times if np.isfinite(t)]
        return (float(np.median(reached)) if reached else float("nan")), len(reached)

    @property
    def minibatches(self) -> int:
        return int(self.runs[0].attrs.get("minibatches_per_epoch", 0))

    @property
    def pooled(self) -> str:
        """"" if the case's runs share machine and software, else what differs (e.g. "2 git_sha, 2 hostname")."""
        differ = []
        for key in SOFTWARE + MACHINE:
            values = {str(run.attrs.get(key, "")) for run in self.runs}
            if len(values) > 1:
                differ.append(f"{len(values)} {key}")
        return ", ".join(differ)

    @property
    def busy(self) -> int:
        """How many of the case's runs were measured on a busy host (busy_host)."""
        return sum(busy_host(run) for run in self.runs)

    @property
    def outliers(self) -> list[tuple[str, float]]:
        """Repetitions whose training time is more than OUTLIER times the
        case's median, or under it by that factor: (run name, its time / the
        median).  Needs 3 repetitions (with 2 the median is their mean)."""
        seconds = self.seconds
        if len(seconds) < 3:
            return []
        median = float(np.median(seconds))
        return [(run.name, s / median) for run, s in zip(self.runs, seconds)
                if s > OUTLIER * median or s * OUTLIER < median]

    @property
    def notes(self) -> str:
        """What a reader of the case's figures must know: pooled runs, a busy host, outlying repetitions."""
        notes = [f"pooled: {self.pooled}"] if self.pooled else []
        if self.busy:
            notes.append(f"busy host: {self.busy} of {plural(len(self.runs), 'run')}")
        if self.outliers:
            notes.append("outlier: " + ", ".join(f"{name} {ratio:.2f}x the median" for name, ratio in self.outliers))
        return "; ".join(notes)

    @property
    def settings(self) -> dict:
        """settings_of its first run (every run of a case shares them)."""
        return settings_of(self.runs[0])

    def value(self, key: str):
        """A setting's value (settings_of), else a machine or software attribute's; "" where absent."""
        settings = self.settings
        return settings[key] if key in settings else cell(self.runs[0].attrs.get(key, ""))

    def differing(self, keys: list[str]) -> str:
        """"partition=label-skew, lr=0.001": this case's values of ``keys`` (see distinguishing)."""
        return ", ".join(f"{k}={self.value(k) if self.value(k) != '' else '-'}" for k in keys)

    @property
    def label(self) -> str:
        config = self.runs[0].config
        layers = ",".join(map(str, config.get("layers", ())))
        return f"{self.variant} [{layers}] {self.dataset}"


def cases(runs: list[results.Run], pool: bool = False) -> list[Case]:
    """Runs grouped into cases, in order of first appearance (``pool``: see signature)."""
    found: dict[tuple, Case] = {}
    for run in runs:
        if run.attrs.get("status", "complete") != "complete" or "timing/wall" not in run.arrays:
            continue
        key = (signature(run, pool), int(run.attrs["world_size"]), threads_per_rank(run),
               json.dumps(np.asarray(run.attrs.get("layer_blocks", [])).tolist()))
        if key not in found:
            found[key] = Case(key[0], run.attrs.get("variant", "pipeline"), run.attrs.get("dataset", ""),
                              key[1], key[2])
        found[key].runs.append(run)
    return list(found.values())


@dataclass
class Row:
    case: Case
    stats: dict
    base: Case | None            # p = 1, same threads per rank
    best_single: Case | None     # p = 1, the most threads (None when that is the base itself)
    speedup: float               # median T1 / median Tp (NaN without a base)
    efficiency: float            # speedup / p
    speedup_best: float          # against the best single process (NaN: no 1-rank run with more threads)

    @property
    def accuracy(self) -> float:
        return self.case.accuracy


def series(all_cases: list[Case]) -> dict[str, list[Case]]:
    """Cases by configuration, each list in order of (threads, ranks)."""
    out: dict[str, list[Case]] = {}
    for case in all_cases:
        out.setdefault(case.signature, []).append(case)
    return {key: sorted(group, key=lambda c: (c.threads, c.ranks)) for key, group in out.items()}


SAME_WORK = ("dataset", "layers", "epochs", "batch_size")  # what a case must share with its reference variant


def reference_case(all_cases: list[Case], case: Case, variant: str) -> Case | None:
    """The p = 1 case of ``variant`` with ``case``'s threads per rank, data
    set, widths, epochs and batch size (e.g. single-process backprop as the
    yardstick of every variant), or None."""
    mine = case.runs[0].config
    for other in all_cases:
        theirs = other.runs[0].config
        if other.variant == variant and other.ranks == 1 and other.threads == case.threads \
                and all(mine.get(k) == theirs.get(k) for k in SAME_WORK):
            return other
    return None


def unpaired(runs: list[results.Run]) -> list[str]:
    """Why a multi-rank case has no speedup: lines for each one whose 1-rank run exists but differs only in
    machine or software (another commit, torch, host), so only ``--pool`` pairs them; [] if none."""
    pooled = {row.case.runs[0].name: row for row in table(runs, pool=True)}
    lines = []
    for row in table(runs):
        other = pooled.get(row.case.runs[0].name)
        if row.case.ranks == 1 or row.base is not None or other is None or other.base is None:
            continue
        differ = [key for key in MACHINE + SOFTWARE
                  if {str(r.attrs.get(key, "")) for r in row.case.runs}
                  != {str(r.attrs.get(key, "")) for r in other.base.runs}]
        lines.append(f"{row.case.runs[0].name} ({row.case.ranks} ranks): its 1-rank run differs in "
                     f"{', '.join(differ) or 'machine or software'} (report --pool compares them)")
    return lines


def table(runs: list[results.Run], pool: bool = False) -> list[Row]:
    """One Row per case of the complete runs (``pool``: see signature)."""
    rows = []
    for group in series(cases(runs, pool)).values():
        singles = [c for c in group if c.ranks == 1]
        best = max(singles, key=lambda c: c.threads, default=None)
        # "vs 1xall" needs a 1-rank run with more threads than some case of the series (sweep's all-cores
        # run); where every run has the same threads there is none, and the column says "-", not 1.000
        if best is not None and not any(c.threads < best.threads for c in group):
            best = None
        for case in group:
            stats = case.stats
            base = next((c for c in singles if c.threads == case.threads), None)
            speedup = base.stats["median"] / stats["median"] if base else float("nan")
            best_single = best if best is not None and best is not base else None
            speedup_best = best.stats["median"] / stats["median"] if best else float("nan")
            rows.append(Row(case, stats, base, best_single, speedup, speedup / case.ranks, speedup_best))
    return rows

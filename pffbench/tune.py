"""Tune one contender fairly, then measure it: ``python -m pffbench.tune``.

The protocol (docs/tuning.md):

1. Search space, declared and the same for every contender: the learning
   rate on a log grid of ``--grid`` values (default 5) from ``--lr-min`` to
   ``--lr-max``; everything else (epochs, batch, cooldown, layers, ranks,
   threads) is the run flags given, one schedule shape for all.
2. Each trial is one ``python -m pffbench.run`` (under mpiexec for
   ``--ranks`` > 1) with ``--validation N``: N training rows held out (the
   same seeded rows for every trial), trained on the rest, evaluated on
   them every ``--eval-every-steps`` steps, stopped at the target
   (``--stop-at-target``).  The test set is never read.
3. The pick, per target of ``--target-accuracy`` (one or several, e.g.
   0.97,0.98: the trials stop at the highest and pass the lower ones on
   the way): the shortest time to it on validation (training seconds,
   evaluation excluded); ties to the higher final accuracy; if no trial
   reaches it, the highest final accuracy (said so).
4. Each distinct pick runs ``--repeats`` times (default 3; seeds --seed, --seed + 1,
   ...) on the whole training set, evaluated on the test set every
   ``--eval-every-steps`` steps to the end of its epochs; its time to target
   is the median of the repeats (MLPerf's clock: from the first minibatch to
   the evaluation that first reaches the target, evaluation excluded;
   instrument/target.py), the evaluation time reported beside it.
   ``--repeats-stop-at-target`` ends each repeat at the highest target its
   pick serves instead (MLPerf's time-to-train run): for a contender whose
   twin (below) measures the final accuracy it would reach; the race then
   gives it no final accuracy of its own.

Contenders that compute the same weights (to round-off) from the same
learning rate share one search (``--trials-of TAG``: the trials another
contender ran into --out, TAG its runs' name stem): the backprop family
at any p (backprop, dp-backprop, ddp, gpipe, 1f1b: tests/mpi), and a
local rule's pipeline at p = 1 and p = 2 (bit for bit).  Their trials
would differ only by the contender's speed and the host's noise, so each
gets the pick its twin's search made, and only its test repeats run.

Every trial and repeat is appended to ``--out`` (named tune-...), the
summary printed, and written as JSON to ``--summary`` if given.  Usage
errors: one line, exit 2; a trial that fails is recorded as not reaching
the target and the search goes on.  A tune cut short (a session's end, a
requeued job) resumes run by run: run again, it keeps each trial and repeat
it finished in ``--out`` with the same settings on the same kind of CPU, and
runs the rest (``--fresh`` runs everything again).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np

from .launch.cli import parse_config
from .core.config import Config, UsageError, one_line
from .launch.command import command
from .analysis import race
from .store.provenance import cpu_model
from .analysis.race import pick  # noqa: F401  (the protocol's rule; tests name it here)

# flags the protocol sets itself: a user's would be overridden, so they are refused
OWNED = ("--lr", "--validation", "--target-accuracy", "--eval-every-steps", "--stop-at-target", "--out", "--name",
         "--seed", "--eval-every")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(one_line(message))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m pffbench.tune", allow_abbrev=False,
                description="Pick a contender's learning rate by time to a target accuracy on a validation split "
                            "held out of the training set, then run the pick on the test set. Flags not listed "
                            "here go to every run (python -m pffbench.run: --variant, --objective, --dataset, "
                            "--layers, --epochs, --batch-size, --threads, ...).")
    p.add_argument("--target-accuracy", required=True, metavar="A[,A...]",
                   help="a target test accuracy, or several (e.g. 0.97,0.98): trials stop at the highest, and "
                        "each target gets its own pick from the same trials")
    p.add_argument("--ranks", type=int, default=1, help="MPI ranks per run (default: %(default)s)")
    p.add_argument("--lr-min", type=float, default=1e-4, help="smallest learning rate (default: %(default)s)")
    p.add_argument("--lr-max", type=float, default=1e-2, help="largest learning rate (default: %(default)s)")
    p.add_argument("--grid", type=int, default=5, help="learning rates, log-spaced (default: %(default)s)")
    p.add_argument("--validation", type=int, default=10000, metavar="N",
                   help="training rows held out to pick on (default: %(default)s)")
    p.add_argument("--eval-every-steps", type=int, default=100, metavar="K",
                   help="evaluate every K steps, trials and repeats (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="runs of the pick on the test set (default: %(default)s)")
    p.add_argument("--repeats-stop-at-target", action="store_true",
                   help="end each repeat at the highest target its learning rate was picked for, not at the end of "
                        "its epochs (its final accuracy is then not measured): for a contender whose twin "
                        "(--trials-of) runs to the end, e.g. the p = 1 runs of a strong-scaling pair")
    p.add_argument("--seed", type=int, default=0, help="seed of the trials and of the first repeat")
    p.add_argument("--out", default="results/tune.h5", metavar="FILE.h5", help="results file (default: %(default)s)")
    p.add_argument("--summary", default=None, metavar="FILE.json", help="also write the summary here")
    p.add_argument("--trials-of", default=None, metavar="TAG",
                   help="no search: take the validation trials of the contender whose runs in --out are named "
                        "TAG-lr...-validation and pick from them; for a contender that computes the same weights "
                        "from a learning rate (the backprop family at any p; a rule's pipeline at p = 1 and 2), "
                        "so its trials would differ only in speed")
    p.add_argument("--fresh", action="store_true",
                   help="run every trial and repeat, even those an earlier, interrupted tune of this contender "
                        "finished in --out (by default those are kept: a tune resumes run by run)")
    p.add_argument("--run-timeout", type=float, default=6 * 3600.0, metavar="SECONDS",
                   help="a run still going after this long is ended and counted as failed (default: %(default)s)")
    return p


def learning_rates(low: float, high: float, count: int) -> list[float]:
    """``count`` learning rates, log-spaced from ``low`` to ``high`` (3 significant digits)."""
    return [float(f"{lr:.3g}") for lr in np.geomspace(low, high, count)]


def targets_of(text: str) -> list[float]:
    """--target-accuracy's accuracies, ascending; UsageError unless each is in (0, 1]."""
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UsageError(f"--target-accuracy: expected accuracies such as 0.97,0.98, got {text!r}") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise UsageError(f"--target-accuracy must be in (0, 1], got {text}")
    return values


def _check(args, targets: list[float], passthrough: list[str]) -> None:
    owned = [flag for flag in passthrough if flag.split("=")[0] in OWNED]
    if owned:
        raise UsageError(f"{', '.join(owned)}: set by the tuning protocol itself (see --help)")
    if args.ranks < 1 or args.repeats < 1 or args.grid < 2 or args.eval_every_steps < 1:
        raise UsageError("--ranks, --repeats and --eval-every-steps must be >= 1, --grid >= 2")
    if not 0 < args.lr_min < args.lr_max or not all(map(math.isfinite, (args.lr_min, args.lr_max))):
        raise UsageError(f"need 0 < --lr-min < --lr-max, got {args.lr_min}, {args.lr_max}")
    config = parse_config([*passthrough, *_common(args), "--target-accuracy", f"{max(targets):g}", "--lr",
                           str(args.lr_min), "--validation", str(args.validation), "--stop-at-target"])
    # what a trial will be: refused now, not later
    from .core.variants import VARIANTS
    if VARIANTS[config.variant].pff:
        raise UsageError(f"{config.variant} evaluates only at the end of its run: tune the pipeline or a baseline")


def _common(args) -> list[str]:
    return ["--eval-every-steps", str(args.eval_every_steps), "--out", args.out, "--quiet"]


def _launcher(ranks: int) -> list[str]:
    run = [sys.executable, "-m", "pffbench.run"]
    if ranks == 1:
        return run
    mpiexec = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return [mpiexec, "-n", str(ranks), *run]


def _record(out: str, name: str):
    """The newest run named ``name`` in ``out``, or None: a run appended under a name the file already
    holds is stored as NAME-2, NAME-3, ... (store.writer.append_run), so those count as ``name`` too."""
    from .results import read_runs
    from .store.format import ResultsError
    again = re.compile(re.escape(name) + r"(-\d+)?")
    try:
        return next((r for r in reversed(read_runs(out)) if again.fullmatch(r.name)), None)
    except ResultsError:
        return None


# settings that leave a run's work and clock unchanged: a kept run may differ in them (the data's folder is
# compared: an image folder is the data set)
UNTIMED = ("out", "name", "quiet", "download", "trace", "peer_timeout", "checkpoint_dir", "resume", "model_out")


def _kept(args, flags: list[str], name: str):
    """The run ``name`` an earlier, interrupted tune of this contender finished in --out, if it is this
    run: complete, on as many ranks, on this kind of CPU with as many cores (its seconds are this
    machine's; a CPU that cannot be named keeps nothing), with the same torch, every
    setting but UNTIMED the same.  None otherwise (then it runs again).  Its commit may differ (each run
    records its own git_sha): a resumed race goes on across commits, as one run in two sittings would."""
    run = None if args.fresh else _record(args.out, name)
    if run is None or run.attrs.get("status") != "complete" or run.attrs.get("world_size") != args.ranks:
        return None
    # not the MPI library's name: asking mpi4py would start MPI in this process, which launches mpiexec
    here = {"cpu_model": cpu_model(), "host_cores": os.cpu_count() or 0, "torch": importlib.metadata.version("torch")}
    if not here["cpu_model"] or any(run.attrs.get(key) != value for key, value in here.items()):
        return None
    ours, theirs = dataclasses.asdict(parse_config(flags)), run.config
    default = {f.name: f.default for f in dataclasses.fields(Config)}  # a setting added since: its default then
    if any(_plain(theirs.get(key, default.get(key))) != _plain(value) for key, value in ours.items()
           if key not in UNTIMED):
        return None
    return run


def _launch(args, passthrough: list[str], name: str, extra: list[str]):
    """One run, recorded in --out: its Run, or None if it failed (said in one line on stderr; it counts
    as reaching no target).  A run an interrupted tune already finished is kept, not run again (_kept).
    UsageError if the run refused its flags (the same for every run)."""
    flags = [*passthrough, *_common(args), "--name", name, *extra]
    kept = _kept(args, flags, name)
    if kept is not None:
        print(f"{name}: kept from an earlier tune ({kept.attrs.get('end_utc', 'time unknown')}, git "
              f"{str(kept.attrs.get('git_sha', 'unknown'))[:7]}; --fresh runs it again)", flush=True)
        return kept
    command = [*_launcher(args.ranks), *flags]
    try:
        done = subprocess.run(command, timeout=args.run_timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        code, error = done.returncode, done.stderr.strip().splitlines()
    except subprocess.TimeoutExpired:
        code, error = None, [f"still running after {args.run_timeout:g} s: ended"]
    if code == 2:
        raise UsageError(error[-1].removeprefix("pffbench: error: ") if error else f"{name}: usage error")
    record = _record(args.out, name) if code == 0 else None
    if record is None:
        print(f"pffbench.tune: {name} failed ({error[-1] if error else f'exit {code}'}): counted as not reaching "
              "the target", file=sys.stderr, flush=True)
    return record


def _figures(run, targets: list[float]) -> dict:
    """A trial's figures for the summary: final accuracy, and per target the training seconds and
    samples to it (NaN if not reached or failed)."""
    if run is None:
        return {"name": None, "accuracy": math.nan,
                "to_target": {f"{a:g}": {"seconds": math.nan, "samples": math.nan} for a in targets}}
    return {"name": run.name, "accuracy": race.final_accuracy(run),
            "to_target": {f"{a:g}": dict(zip(("seconds", "samples"), race.reaching(run, a))) for a in targets}}


def tag_of(config, ranks: int) -> str:
    """The runs' name stem: tune-VARIANT-OBJECTIVE-pP, with -tT where --threads was given."""
    threads = f"-t{config.threads}" if config.threads else ""
    return f"tune-{config.variant}-{config.objective or 'default'}-p{ranks}{threads}"


# what a shared search must have in common with this contender's runs (besides the learning rate)
SHARED = ("dataset", "conv", "layers", "epochs", "batch_size", "seed", "validation", "target_accuracy", "augment",
          "cooldown", "eval_every_steps")


def _shared(args, passthrough, targets, contender) -> list[dict]:
    """--trials-of: the twin's trials, one per learning rate of the grid, read from --out (a trial the twin
    recorded as failed, or never recorded, counts as reaching nothing, as in its own search); UsageError if
    it has none, or if its runs trained other work than this contender's would (SHARED)."""
    ours = dataclasses.asdict(parse_config([*passthrough, "--validation", str(args.validation), "--seed",
                                            str(args.seed), "--target-accuracy", f"{max(targets):g}",
                                            *_common(args)]))
    trials = []
    for lr in learning_rates(args.lr_min, args.lr_max, args.grid):
        run = _record(args.out, f"{args.trials_of}-lr{lr:g}-validation")
        if run is not None:
            differ = [key for key in SHARED if _plain(run.config.get(key)) != _plain(ours.get(key))]
            if differ:
                raise UsageError(f"--trials-of {args.trials_of}: its trials trained other work ({', '.join(differ)} "
                                 f"differ); share a search only between contenders of one workload")
            contender.trials[lr] = run
        trials.append({"lr": lr, **_figures(run, targets)})
    if not contender.trials:
        raise UsageError(f"--trials-of {args.trials_of}: no trial of it in {args.out}; tune that contender first")
    contender.trials_of = args.trials_of
    print(f"trials: those of {args.trials_of} (the same weights), {len(trials)} learning rates", flush=True)
    return trials


def _plain(value):
    """A setting as a results file gives it back (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def _search(args, passthrough, targets, tag, contender) -> list[dict]:
    """The trials, one per learning rate, on validation; each stops at the highest target."""
    if args.trials_of:
        return _shared(args, passthrough, targets, contender)
    trials = []
    for lr in learning_rates(args.lr_min, args.lr_max, args.grid):
        run = _launch(args, passthrough, f"{tag}-lr{lr:g}-validation",
                      ["--target-accuracy", f"{max(targets):g}", "--lr", repr(lr), "--validation",
                       str(args.validation), "--stop-at-target", "--seed", str(args.seed)])
        trials.append({"lr": lr, **_figures(run, targets)})
        if run is not None:
            contender.trials[lr] = run
        print(f"trial lr {lr:g}: validation " + ", ".join(
            f"to {a:g} " + _seconds(trials[-1]['to_target'][f'{a:g}']['seconds']) for a in targets)
            + f"; final accuracy {trials[-1]['accuracy']:.4f}", flush=True)
    return trials


def _seconds(seconds: float) -> str:
    return "not reached" if math.isnan(seconds) else f"{seconds:.2f} s"


def _measure(args, passthrough, targets, tag, contender) -> dict:
    """Each distinct pick (per target, race.pick_for) runs --repeats times on the test set, to the end of
    its epochs (--repeats-stop-at-target: to the highest target it serves); the picks, by target."""
    if not contender.trials:
        raise UsageError("every trial failed (see the lines above)")
    picks = {a: race.pick_for(contender, a) for a in targets}
    if any(math.isnan(lr) for lr, _ in picks.values()):  # the twin's trials (--trials-of) all failed
        raise UsageError("every trial failed: nothing to pick")
    for lr in dict.fromkeys(lr for lr, _ in picks.values()):
        served = [a for a, (p, _) in picks.items() if p == lr]
        print(f"pick: lr {lr:g} for " + ", ".join(f"{a:g} ({picks[a][1]})" for a in served)
              + (f"; its repeats stop at {max(served):g}" if args.repeats_stop_at_target else ""), flush=True)
        end = ["--target-accuracy", f"{max(served):g}", "--stop-at-target"] if args.repeats_stop_at_target \
            else ["--target-accuracy", f"{max(targets):g}"]
        for i in range(args.repeats):
            run = _launch(args, passthrough, f"{tag}-lr{lr:g}-test-seed{args.seed + i}",
                          [*end, "--lr", repr(lr), "--seed", str(args.seed + i)])
            if run is not None:
                contender.repeats.setdefault(lr, []).append(run)
    return picks


@command("pffbench.tune")
def main(argv: list[str] | None = None) -> int:
    try:
        args, passthrough = build_parser().parse_known_args(argv)
        targets = targets_of(args.target_accuracy)
        _check(args, targets, passthrough)
        config = parse_config(passthrough)
        tag = tag_of(config, args.ranks)
        contender = race.Contender(config.variant, config.objective, args.ranks, config.threads)
        trials = _search(args, passthrough, targets, tag, contender)
        _measure(args, passthrough, targets, tag, contender)
    except UsageError as error:
        print(f"pffbench.tune: error: {error}", file=sys.stderr)
        return 2
    own = [run for runs in contender.repeats.values() for run in runs] or list(contender.trials.values())
    if own:  # the threads this contender's runs had (0 asks for the default; shared trials are the twin's)
        contender.threads = race._threads(own[0])
    rows = race.race_rows([contender], targets, planned=args.repeats)
    keep = ("lr", "picked_by", "seconds", "seconds_each", "reached", "repeats", "samples", "accuracy", "stopped",
            "stopped_at", "eval_seconds")
    summary = {"targets": targets, "ranks": args.ranks, "variant": config.variant, "objective": config.objective,
               "threads": config.threads, "learning_rates": [t["lr"] for t in trials],
               "validation_rows": args.validation, "trials": trials, "trials_of": args.trials_of, "out": args.out,
               "picks": {f"{r['target']:g}": {k: r[k] for k in keep} for r in rows}}
    for r in rows:
        end = f"repeats stopped at {r['stopped_at']:g}: no final accuracy" if r["stopped"] else \
            f"final accuracy median {r['accuracy']:.4f}"
        print(f"{tag}: to {r['target']:g}: lr {r['lr']:g} ({r['picked_by']}); test time median {_seconds(r['seconds'])} "
              f"({r['reached']} of {r['repeats']} reached it), {r['samples']:.0f} samples, evaluation "
              f"{r['eval_seconds']:.2f} s apart; {end}", flush=True)
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(race.without_nan(summary), f, indent=1, allow_nan=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
3. The pick: the shortest time to ``--target-accuracy`` on validation
   (training seconds, evaluation excluded); ties to the higher final
   accuracy; if no trial reaches the target, the highest final accuracy
   (said so).
4. The pick runs ``--repeats`` times (default 3; seeds --seed, --seed + 1,
   ...) on the whole training set, evaluated on the test set every
   ``--eval-every-steps`` steps to the end of its epochs; its time to target
   is the median of the repeats (MLPerf's clock: from the first minibatch to
   the evaluation that first reaches the target, evaluation excluded;
   instrument/target.py), the evaluation time reported beside it.

Every trial and repeat is appended to ``--out`` (named tune-...), the
summary printed, and written as JSON to ``--summary`` if given.  Usage
errors: one line, exit 2; a trial that fails is recorded as not reaching
the target and the search goes on.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys

import numpy as np

from .launch.cli import parse_config
from .core.config import UsageError, one_line
from .launch.command import command

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
    p.add_argument("--target-accuracy", type=float, required=True, metavar="A", help="e.g. 0.97")
    p.add_argument("--ranks", type=int, default=1, help="MPI ranks per run (default: %(default)s)")
    p.add_argument("--lr-min", type=float, default=1e-4, help="smallest learning rate (default: %(default)s)")
    p.add_argument("--lr-max", type=float, default=1e-2, help="largest learning rate (default: %(default)s)")
    p.add_argument("--grid", type=int, default=5, help="learning rates, log-spaced (default: %(default)s)")
    p.add_argument("--validation", type=int, default=10000, metavar="N",
                   help="training rows held out to pick on (default: %(default)s)")
    p.add_argument("--eval-every-steps", type=int, default=100, metavar="K",
                   help="evaluate every K steps, trials and repeats (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="runs of the pick on the test set (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the trials and of the first repeat")
    p.add_argument("--out", default="results/tune.h5", metavar="FILE.h5", help="results file (default: %(default)s)")
    p.add_argument("--summary", default=None, metavar="FILE.json", help="also write the summary here")
    p.add_argument("--run-timeout", type=float, default=6 * 3600.0, metavar="SECONDS",
                   help="a run still going after this long is ended and counted as failed (default: %(default)s)")
    return p


def learning_rates(low: float, high: float, count: int) -> list[float]:
    """``count`` learning rates, log-spaced from ``low`` to ``high`` (3 significant digits)."""
    return [float(f"{lr:.3g}") for lr in np.geomspace(low, high, count)]


def _check(args, passthrough: list[str]) -> None:
    owned = [flag for flag in passthrough if flag.split("=")[0] in OWNED]
    if owned:
        raise UsageError(f"{', '.join(owned)}: set by the tuning protocol itself (see --help)")
    if not 0 < args.target_accuracy <= 1:
        raise UsageError(f"--target-accuracy must be in (0, 1], got {args.target_accuracy}")
    if args.ranks < 1 or args.repeats < 1 or args.grid < 2 or args.eval_every_steps < 1:
        raise UsageError("--ranks, --repeats and --eval-every-steps must be >= 1, --grid >= 2")
    if not 0 < args.lr_min < args.lr_max or not all(map(math.isfinite, (args.lr_min, args.lr_max))):
        raise UsageError(f"need 0 < --lr-min < --lr-max, got {args.lr_min}, {args.lr_max}")
    config = parse_config([*passthrough, *_common(args), "--lr", str(args.lr_min), "--validation",
                           str(args.validation), "--stop-at-target"])  # what a trial will be: refused now, not later
    from .core.variants import VARIANTS
    if VARIANTS[config.variant].pff:
        raise UsageError(f"{config.variant} evaluates only at the end of its run: tune the pipeline or a baseline")


def _common(args) -> list[str]:
    return ["--target-accuracy", str(args.target_accuracy), "--eval-every-steps", str(args.eval_every_steps),
            "--out", args.out, "--quiet"]


def _launcher(ranks: int) -> list[str]:
    run = [sys.executable, "-m", "pffbench.run"]
    if ranks == 1:
        return run
    mpiexec = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return [mpiexec, "-n", str(ranks), *run]


def _run(args, passthrough: list[str], name: str, extra: list[str]) -> dict:
    """One run; its record's figures (time to target NaN if it failed or did not reach it)."""
    command = [*_launcher(args.ranks), *passthrough, *_common(args), "--name", name, *extra]
    try:
        done = subprocess.run(command, timeout=args.run_timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        code, error = done.returncode, done.stderr.strip().splitlines()
    except subprocess.TimeoutExpired:
        code, error = None, [f"still running after {args.run_timeout:g} s: ended"]
    if code == 2:  # the same argv for every run: a usage error ends the search
        raise UsageError(error[-1].removeprefix("pffbench: error: ") if error else f"{name}: usage error")
    record = _record(args.out, name) if code == 0 else None
    if record is None:
        print(f"pffbench.tune: {name} failed ({error[-1] if error else f'exit {code}'}): counted as not reaching "
              "the target", file=sys.stderr, flush=True)
        return {"name": name, "time_to_target": math.nan, "accuracy": math.nan, "eval_seconds": math.nan,
                "reached_step": -1}
    return record


def _record(out: str, name: str) -> dict | None:
    from .results import read_runs
    from .store.format import ResultsError
    try:
        run = next((r for r in reversed(read_runs(out)) if r.name == name), None)
    except ResultsError:
        return None
    if run is None:
        return None
    eval_seconds = np.nansum(run.arrays["timing/eval"], axis=1).max()  # the slowest rank's
    return {"name": name, "time_to_target": float(run.attrs.get("time_to_target", math.nan)),
            "accuracy": float(run.attrs["final_test_accuracy"]), "eval_seconds": float(eval_seconds),
            "reached_step": int(run.attrs.get("target_reached_step", -1))}


def pick(trials: list[dict]) -> tuple[dict, str]:
    """The trial with the shortest time to target (ties: higher accuracy), or, if none
    reached it, the most accurate; and how it was picked."""
    reached = [t for t in trials if math.isfinite(t["time_to_target"])]
    if reached:
        return min(reached, key=lambda t: (t["time_to_target"], -t["accuracy"])), "shortest time to target"
    finite = [t for t in trials if math.isfinite(t["accuracy"])]
    if not finite:
        raise RuntimeError("every trial failed")
    return max(finite, key=lambda t: t["accuracy"]), "no trial reached the target: the most accurate"


@command("pffbench.tune")
def main(argv: list[str] | None = None) -> int:
    try:
        args, passthrough = build_parser().parse_known_args(argv)
        _check(args, passthrough)
        config = parse_config(passthrough)
        tag = f"tune-{config.variant}-{config.objective or 'default'}-p{args.ranks}"
        trials = []
        for lr in learning_rates(args.lr_min, args.lr_max, args.grid):
            trial = _run(args, passthrough, f"{tag}-lr{lr:g}-validation",
                         ["--lr", repr(lr), "--validation", str(args.validation), "--stop-at-target",
                          "--seed", str(args.seed)])
            trials.append({"lr": lr, **trial})
            print(f"trial lr {lr:g}: validation time to {args.target_accuracy:g} "
                  f"{trial['time_to_target']:.2f} s, accuracy {trial['accuracy']:.4f}", flush=True)
        chosen, how = pick(trials)
        print(f"pick: lr {chosen['lr']:g} ({how})", flush=True)
        repeats = [_run(args, passthrough, f"{tag}-lr{chosen['lr']:g}-test-seed{args.seed + i}",
                        ["--lr", repr(chosen["lr"]), "--seed", str(args.seed + i)]) for i in range(args.repeats)]
    except UsageError as error:
        print(f"pffbench: error: {error}", file=sys.stderr)
        return 2
    times = [r["time_to_target"] for r in repeats]
    reached = [t for t in times if math.isfinite(t)]
    summary = {"target_accuracy": args.target_accuracy, "ranks": args.ranks, "variant": config.variant,
               "objective": config.objective, "learning_rates": [t["lr"] for t in trials],
               "validation_rows": args.validation, "trials": trials, "picked_lr": chosen["lr"], "picked_by": how,
               "repeats": repeats,
               # every repeat must reach the target for a median time to it
               "median_time_to_target": statistics.median(times) if len(reached) == len(times) else math.nan,
               "repeats_reaching_target": len(reached),
               "median_eval_seconds": statistics.median(r["eval_seconds"] for r in repeats),
               "median_accuracy": statistics.median(r["accuracy"] for r in repeats), "out": args.out}
    print(f"{tag}: lr {chosen['lr']:g}; test time to {args.target_accuracy:g}: median "
          f"{summary['median_time_to_target']:.2f} s of {args.repeats} ({len(reached)} reached it), "
          f"evaluation {summary['median_eval_seconds']:.2f} s apart; final accuracy median "
          f"{summary['median_accuracy']:.4f}", flush=True)
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())

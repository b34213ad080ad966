"""`python -m pffbench.sweep`: one configuration at several rank counts,
every repetition's raw timings appended to one HDF5 file.

    python -m pffbench.sweep --ranks 1,2,4 --repeats 3 --out results/sweep.h5 -- --layers 784,784,784,784 --epochs 1

Everything after the sweep's own flags is passed to `python -m pffbench.run`
unchanged.  Each run is launched as users launch it (`mpiexec -n p python -m
pffbench.run ...`, or `--launcher "srun --mpi=pmi2"` inside a Slurm
allocation) and appends itself to --out through run.py's normal path.  The
cases:

- p = each of --ranks with the same torch threads per rank
  (--threads-per-rank; default: cores // the largest p, so the largest p
  fills the machine without oversubscribing it).  p = 1 is the base case:
  the same code on one rank with the same threads per rank.
- the best single process: 1 rank using all cores (skipped with
  --no-single-best, or when that is the base case already).

One untimed warm-up run (the first case, into a scratch file) precedes the
repetitions; the repetitions interleave the cases (p1 p2 p4 p1 p2 p4 ...) so
drift in machine load hits every case alike.  Statistics are computed when
read (pffbench.report, pffbench.plot), never stored.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile

from . import results
from .launch.cli import parse_config
from .core.config import UsageError, one_line
from .core.cpu_quota import usable_cores
from .launch.validate import validate
from .instrument.progress import plural
from .store import checks, writer
from .analysis import analysis


def default_launcher() -> list[str]:
    return [shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or "mpiexec"]


def available_cores() -> int:
    return usable_cores()  # a CPU quota (container limit) caps the affinity mask's cores


def plan(ranks: list[int], cores: int, threads_per_rank: int = 0, single_best: bool = True) -> list[tuple[int, int]]:
    """The (ranks, threads per rank) cases of a sweep, base case first."""
    threads = threads_per_rank or max(1, cores // max(ranks))
    cases = [(p, threads) for p in sorted(set(ranks) | {1})]
    if single_best and (1, cores) not in cases:
        cases.append((1, cores))
    return cases


def launch(launcher: list[str], ranks: int, threads: int, args: list[str], out: str, name: str,
           timeout: float = 3600) -> None:
    """One `LAUNCHER -n RANKS python -m pffbench.run ARGS --threads T --out OUT --name NAME`."""
    placement = ["-n", str(ranks)]
    if os.path.basename(launcher[0]) == "srun":
        placement += ["--cpus-per-task", str(threads)]  # one Slurm step per case, cores for every thread
    command = [*launcher, *placement, sys.executable, "-m", "pffbench.run", *args,
               "--threads", str(threads), "--out", out, "--name", name]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    code, stderr = _supervised(command, env, timeout)
    if code in (130, 143) and STOP.signum:
        raise SweepStopped(f"run {name} ({plural(ranks, 'rank')}) stopped: {_last_line(stderr)}")
    if code != 0:
        raise RuntimeError(f"run {name} ({plural(ranks, 'rank')} x {plural(threads, 'thread')}) failed with exit "
                           f"code {code}: "
                           f"{_last_line(stderr)} (command: {shlex.join(command[:3])} ...)")


class SweepStopped(Exception):
    """A signal stopped the sweep; the message says how far it got."""


class _Stop:
    """The sweep's answer to SIGINT/SIGTERM.  Each run is launched in a
    session of its own, so a terminal's Ctrl-C reaches the sweep only; the
    sweep passes each signal on to the launcher as SIGTERM (mpiexec forwards
    SIGTERM every time, whereas its second SIGINT kills the job), so the run
    stops at its next boundary and is recorded "interrupted", and a second
    signal aborts it at once (nothing more recorded)."""

    def __init__(self):
        self.signum, self.count, self.child = 0, 0, None

    def handle(self, signum, frame) -> None:
        self.count += 1
        self.signum = self.signum or signum
        name = signal.Signals(signum).name
        if self.count == 1:
            print(f"sweep: {name} received: the current run stops at its next epoch or chapter boundary and is "
                  f"recorded as interrupted; the sweep then ends. Send it again to abort the run at once",
                  file=sys.stderr, flush=True)
        elif self.count == 2:
            print(f"sweep: {name} again: aborting the current run (not recorded)", file=sys.stderr, flush=True)
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM if self.count <= 2 else signal.SIGKILL)

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.handle)


STOP = _Stop()


def _supervised(command: list[str], env: dict, timeout: float) -> tuple[int, str]:
    """Run ``command`` in its own session (STOP passes signals on); (exit code, stderr)."""
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
        STOP.child = child
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise RuntimeError(f"a run took more than --timeout {timeout:g} s; it was killed") from None
        finally:
            STOP.child = None
        err.seek(0)
        return child.returncode, err.read()


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    mine = [line for line in lines if line.startswith("pffbench")]
    return (mine or lines or ["(no output)"])[-1].strip()


def sweep(args: list[str], cases: list[tuple[int, int]], repeats: int, out: str, launcher: list[str] | None = None,
          warmup: bool = True, label: str = "sweep", timeout: float = 3600,
          log=None) -> dict[tuple[int, int], list[str]]:
    """Run every case `repeats` times after one untimed warm-up; returns the
    names of the runs appended to `out`, keyed by case.  Names are
    "<label>-p<ranks>-t<threads>-r<repeat>", the label suffixed "-2", "-3", ...
    if `out` already holds runs of that label (a results file collects runs,
    and append_run would otherwise rename ours behind our back)."""
    launcher = launcher or default_launcher()
    label = unused_label(out, label)
    if warmup:
        ranks, threads = cases[0]
        with tempfile.TemporaryDirectory() as scratch:
            launch(launcher, ranks, threads, args, os.path.join(scratch, "warmup.h5"), "warmup", timeout)
    names: dict[tuple[int, int], list[str]] = {case: [] for case in cases}
    for repeat in range(repeats):
        for ranks, threads in cases:
            if STOP.signum:
                raise SweepStopped("stopped before the next run")
            name = f"{label}-p{ranks}-t{threads}-r{repeat}"
            launch(launcher, ranks, threads, args, out, name, timeout)
            names[(ranks, threads)].append(name)
            if log:
                log(f"{name} done")
    return names


def unused_label(out: str, label: str) -> str:
    """``label``, or the first of ``label``-2, -3, ... that starts no run name in ``out``."""
    taken = results.list_runs(out) if os.path.exists(out) else []
    candidate, suffix = label, 1
    while any(name.startswith(candidate + "-p") for name in taken):
        suffix += 1
        candidate = f"{label}-{suffix}"
    return candidate


def already_held(out: str) -> str | None:
    """One line if ``out`` already holds runs: this sweep's are added to them, and report keeps apart
    (unless --pool) those of another commit, package versions or machine."""
    try:
        taken = results.list_runs(out, on_damaged=lambda line: None) if os.path.exists(out) else []
    except results.ResultsError:
        return None
    if not taken:
        return None
    return (f"sweep: {out} already holds {len(taken)} run{'s' if len(taken) != 1 else ''}; this sweep's are "
            f"added to them (report pools runs of another commit, versions or machine only with --pool)")


def _ranks(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated rank counts, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"rank counts must be >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m pffbench.sweep", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False,
                                epilog="Arguments after the sweep's own (or after --) go to python -m pffbench.run.")
    p.add_argument("--ranks", type=_ranks, default=[1, 2], help="rank counts, e.g. 1,2,4 (default: 1,2)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions per case (default: %(default)s)")
    p.add_argument("--threads-per-rank", type=int, default=0,
                   help="torch threads per rank in every case; 0 = cores // largest p (default)")
    p.add_argument("--cores", type=int, default=0, help="cores of the machine or allocation (default: the cores "
                   "this process may run on)")
    p.add_argument("--no-single-best", action="store_true", help="skip the 1 rank x all cores case")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run")
    p.add_argument("--launcher", default=None, help="how to start p ranks; `-n p` is appended (default: the "
                   "mpiexec next to this python; inside Slurm e.g. \"srun --mpi=pmi2\")")
    p.add_argument("--label", default="sweep", help="run names are LABEL-p<ranks>-t<threads>-r<repeat>")
    p.add_argument("--out", default="results/sweep.h5", help="HDF5 file the runs are appended to")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one run may take (default: %(default)s)")
    return p


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as in run: the usage is for --help
        raise UsageError(message)


def main(argv=None) -> int:
    try:
        return _main(argv)
    except UsageError as error:
        print(f"pffbench.sweep: error: {one_line(error)}", file=sys.stderr)
        return 2


def _main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:  # explicit: the sweep's flags, then pffbench.run's
        split = argv.index("--")
        opts, run_args = parser.parse_args(argv[:split]), argv[split + 1:]
    else:
        opts, run_args = parser.parse_known_args(argv)
    owned = [flag for flag in ("--threads", "--out", "--name") if flag in run_args]
    if owned:
        parser.error(f"{', '.join(owned)}: set by the sweep (see --threads-per-rank, --out, --label)")
    if opts.repeats < 1:
        parser.error("--repeats must be >= 1")
    cores = opts.cores or available_cores()
    cases = plan(opts.ranks, cores, opts.threads_per_rank, not opts.no_single_best)
    try:
        config = parse_config(run_args)
        for ranks, _ in cases:
            validate(config, ranks)
    except UsageError as error:
        parser.error(str(error))
    # before any run: what every run will write (--out, --model-out, --checkpoint-dir), as run.py checks it
    problem = checks.output_problem(dataclasses.replace(config, out=opts.out), max(p for p, _ in cases))
    if problem:
        parser.error(problem)
    held = already_held(opts.out)
    if held:
        print(held, flush=True)
    launcher = shlex.split(opts.launcher) if opts.launcher else None
    print(f"sweep: {config.variant} on {config.dataset}, cases (ranks x threads) "
          f"{' '.join(f'{p}x{t}' for p, t in cases)}, {opts.repeats} repeats -> {opts.out}", flush=True)
    folder = writer.missing_folder(opts.out)
    if folder:
        print(f"sweep: --out {opts.out}: the folder {folder} does not exist; it will be created", flush=True)
    STOP.install()
    try:
        sweep(run_args, cases, opts.repeats, opts.out, launcher, warmup=not opts.no_warmup, label=opts.label,
              timeout=opts.timeout, log=lambda line: print(line, flush=True))
    except SweepStopped as stop:
        print(f"pffbench.sweep: stopped by {signal.Signals(STOP.signum).name}: {stop}; the runs done so far "
              f"are in {opts.out}", file=sys.stderr)
        return 128 + int(STOP.signum)
    except (RuntimeError, subprocess.TimeoutExpired, results.ResultsError) as error:
        print(f"pffbench.sweep: error: {one_line(error)}", file=sys.stderr)
        return 1
    from .report import format_table
    try:
        runs = results.read_runs(opts.out, on_damaged=lambda line: print(f"pffbench.sweep: warning: {line}",
                                                                          file=sys.stderr))
    except results.ResultsError as error:
        print(f"pffbench.sweep: error: {error}", file=sys.stderr)
        return 1
    print(format_table(analysis.table(runs), "text"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

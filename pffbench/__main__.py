"""`pffbench COMMAND [ARGS...]` (or `python -m pffbench COMMAND ...`): one entry
point for every pffbench command, as git, pip and conda have.

    pffbench run --layers 784,784,544          # = python -m pffbench.run --layers 784,784,544
    mpiexec -n 4 pffbench run                  # the launcher starts `pffbench run` on each rank
    pffbench report results/sweep.h5 --format markdown

Each command is its module's ``main(argv)``, given the arguments after the
command's name unchanged; `python -m pffbench.X` keeps working.  Modules are
imported only when their command runs, so `pffbench --help` starts no MPI.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys

from . import __version__

EXIT_USAGE = 2

# command -> (module under pffbench, one line for --help); in the order a user meets them
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "train one configuration over the MPI ranks of its launcher; append the run to a results file"),
    "sweep": ("sweep", "one configuration at several rank counts, repeated, each run a real mpiexec"),
    "report": ("report", "the scaling table of results files (text, markdown, csv, json)"),
    "plot": ("plot", "figures from results files: speedup, timeline, accuracy against time"),
    "model": ("model", "the performance model: predict, validate, plot, paper, links"),
    "links": ("links", "latency and bandwidth of one pipeline link (2 ranks under mpiexec)"),
    "data": ("data", "download or verify the data sets"),
    "bench": ("bench", "the pipeline on 1 vs 2 ranks and the FF step's FLOP rate (make bench)"),
    "paper_bench": ("paper_bench", "the paper's PFF variants, short, at 1 rank and in parallel"),
}
# commands whose module another part of the project may add; listed only where it is installed
OPTIONAL: dict[str, tuple[str, str]] = {
    "tune": ("tune", "search the training settings of a configuration"),
}


def commands() -> dict[str, tuple[str, str]]:
    """The commands this installation has: COMMANDS, plus each OPTIONAL one
    whose module exists (found without importing it)."""
    found = dict(COMMANDS)
    for name, (module, summary) in OPTIONAL.items():
        if importlib.util.find_spec(f"{__package__}.{module}") is not None:
            found[name] = (module, summary)
    return found


def usage(table: dict[str, tuple[str, str]]) -> str:
    width = max(map(len, table))
    lines = [f"usage: pffbench [--version] [--help] COMMAND [ARGS...]", "",
             "MPI benchmark suite for Pipeline Forward-Forward training.", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in table.items()]
    lines += ["", "`pffbench COMMAND --help` gives a command's flags; `python -m pffbench.COMMAND` is the same."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command's ``main``; its exit code.  Unknown or missing
    command: one line on stderr, exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    table = commands()
    if not argv:
        print(usage(table), file=sys.stderr)
        return EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help", "help") and not rest:
        print(usage(table))
        return 0
    if name == "help" and rest:  # `pffbench help run` = `pffbench run --help`
        name, rest = rest[0], ["--help"]
    if name == "--version":
        print(f"pffbench {__version__}")
        return 0
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f" (commands: {', '.join(table)})"
        print(f"pffbench: error: unknown command '{name}'{hint}", file=sys.stderr)
        return EXIT_USAGE
    if table[name][0] == "run":  # the run entry's checks come before torch and MPI start (launch/preflight.py)
        from .launch import preflight
        preflight.before_libraries()
    module = importlib.import_module(f"{__package__}.{table[name][0]}")
    try:
        return int(module.main(rest) or 0)
    except BrokenPipeError:  # `pffbench report ... | head`: the reader left; no traceback (Python's docs, signal)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except SystemExit as done:  # argparse's --help and usage errors exit; pass their code on
        if done.code is None or isinstance(done.code, int):
            return done.code or 0
        print(done.code, file=sys.stderr)  # sys.exit("message"): as the interpreter would
        return 1


def cli() -> None:
    """The `pffbench` console script (setup.cfg)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()


def run_cli() -> None:
    """The `pffbench-run` console script: `pffbench run ...`, so its checks too run before torch and MPI start."""
    sys.exit(main(["run", *sys.argv[1:]]))

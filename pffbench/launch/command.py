"""The wrapper every `python -m pffbench.X` command's main runs under.

Bad input (a file that is not a pffbench results file, a missing or
unreadable file, a bad option value) is one line, ``<prog>: error: ...``,
and exit 2, whichever module found it; the error types that mean bad input
are listed once here (BAD_INPUT) rather than caught differently by each
command.  A reader that closed the pipe (``report FILE | head``) ends the
command quietly: no BrokenPipeError traceback, exit 141 (128 + SIGPIPE, what
a program killed by that signal gives).  Any other exception is a bug and
keeps its traceback.
"""
from __future__ import annotations

import functools
import os
import sys

from ..core.config import UsageError, one_line
from ..datasets.files import DataError
from ..store.format import ResultsError

EXIT_USAGE = 2
EXIT_CLOSED_PIPE = 141


# The errors that mean bad input: everything else is a bug and keeps its traceback.
BAD_INPUT: tuple[type[BaseException], ...] = (UsageError, ResultsError, DataError, OSError)


def error_line(error: BaseException) -> str:
    """The one line for ``error``: an OSError names its file and the OS's reason."""
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename is not None else ""
        return one_line(f"{where}{error.strerror}")
    return one_line(" ".join(str(error).split()) or type(error).__name__)


def closed_pipe() -> int:
    """The reader went away: send what is still buffered (and whatever Python
    flushes at exit) to /dev/null, so that no second BrokenPipeError is
    printed, and return EXIT_CLOSED_PIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (a test's capture): nothing to flush at exit either
        pass
    return EXIT_CLOSED_PIPE


def command(prog: str):
    """Decorator for a command's ``main(argv=None) -> int``: the same main,
    which returns 2 after one line on bad input and EXIT_CLOSED_PIPE quietly on
    a closed stdout, instead of raising."""
    def wrap(main):
        @functools.wraps(main)
        def guarded(*args, **kwargs) -> int:
            try:
                code = main(*args, **kwargs)
                sys.stdout.flush()  # here, not at exit, where a closed pipe could only be reported
                return code
            except BrokenPipeError:
                return closed_pipe()
            except BAD_INPUT as error:
                try:
                    print(f"{prog}: error: {error_line(error)}", file=sys.stderr, flush=True)
                except BrokenPipeError:
                    pass
                return EXIT_USAGE
        return guarded
    return wrap


class QuietOnClosedPipe:
    """``sys.stdout`` for a command that must finish what it does even when
    the reader of its output has gone (``pffbench.run ... | head``): a write or
    flush into the closed pipe sends stdout to /dev/null from then on instead
    of raising BrokenPipeError.  Everything else is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            closed_pipe()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            closed_pipe()

    def __getattr__(self, name):
        return getattr(self._stream, name)

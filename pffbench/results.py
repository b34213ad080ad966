"""Reading results files: the public face of the reader in pffbench/store/reader.py (``read_runs``,
``list_runs``, ``summarize``, ``Run``, ``ResultsError`` ...), every name of which is reachable here, and of
``to_dataframe`` (pffbench/analysis/frame.py: one row per run, as report computes it)."""
from .analysis.frame import to_dataframe  # noqa: F401
from .store import reader as _reader


def __getattr__(name: str):
    return getattr(_reader, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(dir(_reader)))

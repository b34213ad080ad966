import os
import sys
from pathlib import Path

import pytest

from helpers import ROOT


@pytest.fixture(autouse=True)
def _denormals_back_on():
    """run.prepare flushes denormals to zero (a processor-wide setting) for speed; a test that runs it in this
    process must not leave it on for the next, whose float checks (hypothesis) need IEEE subnormals."""
    yield
    if "torch" in sys.modules:
        sys.modules["torch"].set_flush_denormal(False)


@pytest.fixture(autouse=True)
def _microbenchmark_cache(tmp_path_factory, monkeypatch):
    """The model's commands keep microbenchmarks per machine (probes/profile.py): tests keep theirs in a
    folder of the test session, never in the user's ~/.cache, and a fresh one per test."""
    monkeypatch.setenv("PFFBENCH_CACHE", str(tmp_path_factory.mktemp("cache") / "microbenchmarks.json"))


@pytest.fixture
def mnist_dir():
    """The real MNIST: $PFFBENCH_DATA if it holds it, else the copy bundled in data/."""
    for base in (os.environ.get("PFFBENCH_DATA"), str(ROOT / "data")):
        if base and (Path(base) / "mnist" / "train-images-idx3-ubyte.gz").exists():
            return base
    pytest.skip("MNIST not found in $PFFBENCH_DATA or data/")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    """pytest-mpi's "MPI Information" section once per `make test`, not once per rank of every MPI pass:
    rank 0 only, and not where the Makefile sets PFFBENCH_MPI_INFO=0 (its second pass)."""
    plugin = next((p for p in session.config.pluginmanager.get_plugins() if type(p).__name__ == "MPIPlugin"), None)
    if plugin is None:
        return
    rank = int(os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or 0)
    if rank != 0 or os.environ.get("PFFBENCH_MPI_INFO") == "0":
        session.config.pluginmanager.unregister(plugin)

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = os.environ.get("PFFBENCH_MPIEXEC") or shutil.which("mpiexec", path=str(Path(sys.executable).parent)) \
    or shutil.which("mpiexec")
MPIEXEC_FLAGS = os.environ.get("PFFBENCH_MPIEXEC_FLAGS", "").split()


def mpirun(n: int, *args: str, timeout: float = 120, env: dict | None = None, cwd=None):
    """Run `python -m pffbench...` on n ranks under a hard timeout."""
    if MPIEXEC is None:
        pytest.skip("no mpiexec found")
    command = [MPIEXEC, *MPIEXEC_FLAGS, "-n", str(n), sys.executable, *args]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd or ROOT)


@pytest.fixture(autouse=True)
def _denormals_back_on():
    """run.prepare flushes denormals to zero (a processor-wide setting) for speed; a test that runs it in this
    process must not leave it on for the next, whose float checks (hypothesis) need IEEE subnormals."""
    yield
    if "torch" in sys.modules:
        sys.modules["torch"].set_flush_denormal(False)


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


def assert_same_model(path_a, path_b, parts=("layers", "heads")) -> dict:
    """Two --model-out files hold the same tensors bit for bit (torch.equal: exactly, not approximately),
    module by module in ``parts``; returns the first file's contents."""
    import torch
    a, b = torch.load(path_a), torch.load(path_b)
    compared = 0
    for part in parts:
        for module_a, module_b in zip(a.get(part, []), b.get(part, []), strict=True):
            assert module_a.keys() == module_b.keys(), part
            for key in module_a:
                assert torch.equal(module_a[key], module_b[key]), (part, key)
                compared += 1
    assert compared, f"no tensors in {parts} to compare"
    return a

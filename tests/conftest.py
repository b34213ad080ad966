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


@pytest.fixture
def mnist_dir():
    """The real MNIST: $PFFBENCH_DATA if it holds it, else the copy bundled in data/."""
    for base in (os.environ.get("PFFBENCH_DATA"), str(ROOT / "data")):
        if base and (Path(base) / "mnist" / "train-images-idx3-ubyte.gz").exists():
            return base
    pytest.skip("MNIST not found in $PFFBENCH_DATA or data/")

"""What the tests share besides fixtures (those are in conftest.py files): where the repository is, how to launch
mpiexec jobs, how to compare saved models.  Imported as ``from helpers import ...`` (pytest puts tests/ on sys.path
for tests/conftest.py)."""
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


def write_image_folder(root: Path, classes: int = 4, train: int = 24, test: int = 8) -> Path:
    """An image folder (--dataset imagefolder) of 8x8 RGB PNGs: class k a bright 4x4 patch in quadrant k mod 4
    of channel k mod 3, on noise; ``train`` and ``test`` images per class.  Returns ``root``."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for k in range(classes):
            (root / split / f"class{k}").mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 96, (8, 8, 3), dtype=np.uint8)
                top, left = 4 * (k % 4 // 2), 4 * (k % 2)
                pixels[top:top + 4, left:left + 4, k % 3] = 255
                Image.fromarray(pixels).save(root / split / f"class{k}" / f"{i:03d}.png")
    return root

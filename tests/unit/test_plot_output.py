"""Issue 23 point 4: plot's and model plot's default output never replaces a tracked figure."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pffbench import model, plot
from pffbench.analysis import sidecar

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "sweep-mnist-2core.h5"


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def clone(tmp_path):
    """A repository with this one's .gitignore and a tracked figure where plot used to write by default."""
    if shutil.which("git") is None:
        pytest.skip("no git")
    repo = tmp_path / "repo"
    (repo / "plots").mkdir(parents=True)
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    (repo / "plots" / "speedup.png").write_bytes(b"the README's figure")
    _git("init", "-q", cwd=repo)
    _git("add", ".gitignore", "plots/speedup.png", cwd=repo)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "figure", cwd=repo)
    return repo


def test_plots_default_output_writes_no_tracked_file(clone, monkeypatch, capsys):
    if not RESULTS.is_file():
        pytest.skip("no committed sweep results in this checkout")
    monkeypatch.chdir(clone)
    assert plot.main([str(RESULTS)]) == 0
    written = capsys.readouterr().out.split()
    assert written and all(os.path.abspath(p).startswith(str(clone / sidecar.DEFAULT_FOLDER)) for p in written)
    assert _git("status", "--porcelain", cwd=clone) == ""  # nothing tracked changed, nothing new unignored
    assert (clone / "plots" / "speedup.png").read_bytes() == b"the README's figure"


def test_model_plots_default_output_is_the_same_ignored_folder(clone):
    args = model.build_parser().parse_args(["plot", "runs.h5"])
    assert args.out_dir == sidecar.DEFAULT_FOLDER
    ignored = subprocess.run(["git", "check-ignore", "-q", os.path.join(args.out_dir, "model_speedup.png")],
                             cwd=clone)
    assert ignored.returncode == 0

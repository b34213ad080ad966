"""Where and with what a run was measured: the attrs every run records
beside its timings (versions, git commit, host, CPU model, on a GPU the
GPU's model and CUDA version, host load), so that a reader can tell runs
of different machines, code or load apart (analysis/analysis.py never
pools them unless asked)."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys


def provenance() -> dict:
    """Where and with what this process runs, as attrs for append_run; never raises.

    Versions read from package metadata are "unavailable" when a package is missing;
    git_sha is "unknown" outside a git checkout or without git; Slurm values are ""
    outside Slurm.
    """
    info = {"python": platform.python_version()}
    for package in ("mpi4py", "torch", "numpy", "h5py"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "unavailable"
    info["mpi_library"] = _mpi_library()
    info["git_sha"] = _git_sha()
    for key, var in (("slurm_job_id", "SLURM_JOB_ID"), ("slurm_step_id", "SLURM_STEP_ID"),
                     ("slurm_nodelist", "SLURM_JOB_NODELIST")):
        info[key] = os.environ.get(var, "")
    info["hostname"] = socket.gethostname()
    info["platform"] = platform.platform()
    info["cpu_model"] = cpu_model()
    info["host_cores"] = os.cpu_count() or 0
    info["load_avg_end"] = load_average()
    torch = sys.modules.get("torch")  # imported by every run; not imported here for the readers that need no torch
    if torch is not None and torch.cuda.is_initialized():  # a --device cuda run: which GPU (an H100 is not an H200)
        info["gpu_model"] = torch.cuda.get_device_name()
        info["cuda_version"] = torch.version.cuda or ""
    return info


def load_average() -> list[float]:
    """The host's load average over 1, 5 and 15 minutes (runnable processes;
    above the host's cores, runs wait for a core); NaNs where unknown."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [float("nan")] * 3


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; platform.processor() elsewhere), "" if unknown."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _mpi_library() -> str:
    try:
        from mpi4py import MPI
        # Open MPI ends the string with a NUL byte, which HDF5 string attributes refuse
        return MPI.Get_library_version().replace("\x00", "").splitlines()[0].strip()
    except Exception:  # a broken MPI install must not cost the measurements
        return "unavailable"


def _git_sha() -> str:
    package_dir = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        return subprocess.run(["git", *args], cwd=package_dir, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + "-dirty" if dirty else sha

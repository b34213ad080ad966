"""The run entry's checks before torch and MPI start (pffbench/launch/preflight.py; issue 20, kinds 4 and 5).
The real /dev/shm and the real OpenMP binding are in tests/jobs/test_node_limits_jobs.py."""
import os
import subprocess
import sys

import pytest

from pffbench.launch import preflight

from helpers import ROOT


def test_the_preflight_imports_neither_torch_nor_mpi():
    """It runs before `from mpi4py import MPI`: importing it must not start MPI (or torch's OpenMP)."""
    code = "import sys, pffbench.launch.preflight; print(sorted({'torch', 'mpi4py'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_node_ranks_from_each_launcher():
    assert preflight.node_ranks({"MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "4", "PMI_SIZE": "8"}) == (1, 4)
    assert preflight.node_ranks({"OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}) == (0, 2)
    assert preflight.node_ranks({"PMI_SIZE": "3"}) == (None, 3)
    assert preflight.node_ranks({}) == (None, 1)


def test_mpich_needs_the_measured_segment_sizes():
    assert preflight.mpich_needs(1) == 1061440 and preflight.mpich_needs(2) == 2118784


def fake_node(tmp_path):
    """A /dev/shm stand-in with a held and a stale segment, and a /proc with one process mapping the held one
    and another holding an open descriptor of a third file."""
    shm, proc = tmp_path / "shm", tmp_path / "proc"
    shm.mkdir()
    for name, size in [("mpich_shm_live_0", 4096), ("mpich_shm_dead_0", 3 * 4096), ("psm_open", 4096)]:
        (shm / name).write_bytes(b"x" * size)
    (proc / "100" / "fd").mkdir(parents=True)
    (proc / "100" / "maps").write_text(f"7f00-7f10 rw-s 00000000 00:1a 5  {shm}/mpich_shm_live_0\n"
                                       "7f10-7f20 r-xp 00000000 08:01 7  /usr/lib/libc.so.6\n")
    (proc / "200" / "fd").mkdir(parents=True)
    (proc / "200" / "maps").write_text("")
    os.symlink(shm / "psm_open", proc / "200" / "fd" / "3")
    (proc / "self").mkdir()  # not a process id: skipped
    return shm, proc


def test_stale_segments_are_the_files_no_process_maps_or_holds_open(tmp_path):
    shm, proc = fake_node(tmp_path)
    assert preflight.stale_segments(str(shm), str(proc)) == [(str(shm / "mpich_shm_dead_0"), 3 * 4096)]


def test_shm_problem_names_the_stale_segments_and_the_fix(tmp_path, monkeypatch):
    shm, proc = fake_node(tmp_path)
    monkeypatch.setattr(preflight, "free_bytes", lambda folder: 100 << 10)
    line = preflight.shm_problem({"MPI_LOCALNRANKS": "2"}, str(shm), str(proc))
    assert line.startswith(f"{shm} has 0.1 MiB free but MPI's start-up needs 2.0 MiB for 2 rank(s)")
    assert f"rm {shm}/mpich_shm_dead_0)" in line and "live" not in line and "psm_open" not in line
    monkeypatch.setattr(preflight, "free_bytes", lambda folder: preflight.mpich_needs(2))
    assert preflight.shm_problem({"MPI_LOCALNRANKS": "2"}, str(shm), str(proc)) is None
    monkeypatch.setattr(preflight, "free_bytes", lambda folder: None)  # cannot tell: nothing is decided
    assert preflight.shm_problem({"MPI_LOCALNRANKS": "2"}, str(shm), str(proc)) is None


def test_a_later_rank_counts_its_own_jobs_new_segment_as_free(tmp_path, monkeypatch):
    """The node's first rank may have made this job's segment before a later rank looks: not a shortfall."""
    shm, proc = fake_node(tmp_path)
    monkeypatch.setattr(preflight, "free_bytes", lambda folder: preflight.mpich_needs(2) - 4096)
    assert preflight.shm_problem({"MPI_LOCALNRANKS": "2"}, str(shm), str(proc)) is not None
    started = os.stat(shm / "mpich_shm_live_0").st_ctime
    assert preflight.shm_problem({"MPI_LOCALNRANKS": "2"}, str(shm), str(proc), started=started) is None


def test_affinity_line_names_the_variables_that_are_set():
    env = {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores", "PATH": "/bin"}
    line = preflight.affinity_line([None, [1], [0]], env)
    assert line.startswith("pffbench: warning:") and "rank(s) 1, 2 " in line
    assert "OMP_PROC_BIND=close, OMP_PLACES=cores" in line and "PATH" not in line and "\n" not in line
    assert preflight.affinity_line([None, None], env) is None


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: no mask to narrow")
def test_restore_affinity_puts_back_the_mask_taken_before_the_imports(monkeypatch):
    mask = os.sched_getaffinity(0)
    monkeypatch.setattr(preflight, "_mask_before", mask)
    first = min(mask)
    try:
        os.sched_setaffinity(0, {first})
        assert preflight.restore_affinity() == sorted(mask - {first})
        assert os.sched_getaffinity(0) == mask
        assert preflight.restore_affinity() is None  # nothing lost, nothing said
    finally:
        os.sched_setaffinity(0, mask)

"""What the node gives a job: /dev/shm space for the pipeline's rings, and a
CPU quota for its threads (issue 12, kinds 2 and 6)."""
import os
import shutil
import subprocess
import sys

import pytest

from pffbench import results
from pffbench.comm import shm_space
from pffbench.schedules.pipeline.communications import _Ring

from conftest import MPIEXEC, ROOT

pytestmark = pytest.mark.timeout(300)

PAGE, MARGIN = 4096, 8192


# --- /dev/shm: which rings fit ---------------------------------------------------------------

@pytest.mark.parametrize("needs,free,expected", [
    ([0, 5, 7, 0], None, [False, True, True, False]),  # nothing known: every ring is kept
    # a budget of 5 pages: 3 pages fit (2 left), 1 byte takes a page (1 left), 4097 bytes (2 pages) do not
    ([3 * PAGE, 1, PAGE + 1, 0], MARGIN + 5 * PAGE, [True, True, False, False]),
    ([5 * PAGE, PAGE], MARGIN + 2 * PAGE, [False, True]),  # a later, smaller ring still fits
    ([PAGE], MARGIN + PAGE - 1, [False]),  # one byte short
    ([PAGE, PAGE], MARGIN - 1, [False, False]),  # not even the margin is free
])
def test_rings_that_fit(needs, free, expected):
    assert shm_space.rings_that_fit(needs, free, margin=MARGIN, page=PAGE) == expected


def test_the_issues_ring_does_not_fit_a_64_mib_dev_shm():
    """2 ranks, --layers 4000,100, batch 256: rank 0's ring holds 9 slots of
    [512, 4000] activity plus 512 norms in float32, after 3 cache lines:
    3 x 64 + 9 x 512 x 4001 x 4 = 73,746,624 bytes > 64 MiB = 67,108,864."""
    need = _Ring.nbytes(9, 512, 4000)
    assert need == 73_746_624
    assert shm_space.rings_that_fit([need, 0], 64 << 20) == [False, False]
    assert shm_space.rings_that_fit([need, 0], 128 << 20) == [True, False]


def test_free_bytes_of_a_missing_folder_is_unknown(tmp_path):
    assert shm_space.free_bytes(str(tmp_path / "none")) is None
    assert shm_space.free_bytes(str(tmp_path)) > 0


def can_mount_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or MPIEXEC is None:
        return False
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                              capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not can_mount_namespaces(), reason="needs root and mount namespaces (unshare -m)")
@pytest.mark.parametrize("ranks,layers,transport", [(2, "4000,100", "messages"), (3, "100,4000,10", "mixed")])
def test_a_small_dev_shm_turns_rings_into_messages_not_a_sigbus(tmp_path, ranks, layers, transport):
    """The issue's example for real: a 64 MiB tmpfs on /dev/shm, visible to
    this job only (a private mount namespace).  Before the check rank 0 died
    with SIGBUS in the first epoch.  With 3 ranks only the second ring
    (4000 wide) is too large: the first stays shared."""
    out = tmp_path / "runs.h5"
    command = (f"mount -t tmpfs -o size=64m tmpfs /dev/shm && exec {MPIEXEC} -n {ranks} {sys.executable} "
               f"-m pffbench.run --dataset synthetic --layers {layers} --batch-size 256 --epochs 2 --out {out}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=240,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "/dev/shm has" in warnings[0] and "1 link(s) use MPI messages" in warnings[0]
    run, = results.read_runs(str(out))
    assert run.attrs["transport"] == transport and run.attrs["shm_fallback_links"] == 1

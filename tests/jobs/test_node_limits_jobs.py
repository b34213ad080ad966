"""The node's limits for real (issue 12, kinds 2 and 6): a 64 MiB /dev/shm in
a private mount namespace, and a child cgroup with a 1-CPU quota.  Both need
root (and the kernel features); they skip cleanly otherwise."""
import contextlib
import os
import shutil
import subprocess
import sys

import pytest

from pffbench import results

from helpers import MPIEXEC, ROOT

pytestmark = pytest.mark.timeout(300)


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
    # (a 2-epoch run of this net may also warn that its last layer went silent: not what this test is about)
    warnings = [line for line in done.stderr.splitlines() if "warning" in line and "shared-memory" in line]
    assert len(warnings) == 1 and "/dev/shm has" in warnings[0] and "1 link(s) use MPI messages" in warnings[0]
    run, = results.read_runs(str(out))
    assert run.attrs["transport"] == transport and run.attrs["shm_fallback_links"] == 1


def writable_cpu_hierarchy():
    """(version, folder) of a cgroup hierarchy with the cpu controller in which
    this process may make a child cgroup, else None: cgroup v2 first."""
    from pffbench.core.cpu_quota import _cgroup_folders
    if os.geteuid() != 0:
        return None
    try:
        mounts = open("/proc/self/mountinfo").read().splitlines()
    except OSError:
        return None
    for version in (2, 1):
        folders = _cgroup_folders("/", mounts, version, "/")
        if not folders or not os.access(folders[-1], os.W_OK):
            continue
        top = folders[-1]
        if version == 1 or "cpu" in open(os.path.join(top, "cgroup.controllers")).read().split():
            return version, top
    return None


@contextlib.contextmanager
def one_cpu_cgroup():
    """A child cgroup with a quota of 1 CPU (100 ms per 100 ms), removed
    afterwards; skips the test where the kernel refuses to make one."""
    version, top = writable_cpu_hierarchy()
    cgroup = os.path.join(top, f"pffbench-test-{os.getpid()}")
    control = os.path.join(top, "cgroup.subtree_control")
    enabled_cpu = False
    try:
        try:
            if version == 2 and "cpu" not in open(control).read().split():
                with open(control, "w") as file:
                    file.write("+cpu")
                enabled_cpu = True
            os.mkdir(cgroup)
            limits = {"cpu.max": "100000 100000"} if version == 2 else \
                {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "100000"}
            for name, value in limits.items():
                with open(os.path.join(cgroup, name), "w") as file:
                    file.write(value)
        except OSError as error:
            pytest.skip(f"cannot make a cgroup v{version} child with a CPU quota here: {error}")
        yield cgroup
    finally:
        if os.path.isdir(cgroup):
            os.rmdir(cgroup)  # empty once the run has exited
        if enabled_cpu:
            with contextlib.suppress(OSError), open(control, "w") as file:
                file.write("-cpu")


@pytest.mark.skipif(writable_cpu_hierarchy() is None, reason="needs root and a cgroup hierarchy with the cpu "
                                                             "controller to make a child cgroup in")
def test_a_run_in_a_one_cpu_cgroup_picks_one_thread(tmp_path):
    """A 1-rank run started inside a real child cgroup with a 1-CPU quota
    records threads_per_rank [1] and cpu_quota [1.0].  Before the check it
    picked a thread per core (2 on a 2-core machine).  On a 1-core machine
    the test cannot tell the two apart."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: one thread with or without the quota")
    out = tmp_path / "runs.h5"
    with one_cpu_cgroup() as cgroup:
        command = (f'echo $$ > {cgroup}/cgroup.procs || exit 77; exec {MPIEXEC} -n 1 {sys.executable} '
                   f'-m pffbench.run --dataset synthetic --layers 8 --epochs 1 --out {out}')
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=240, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode == 77:
        pytest.skip(f"cannot move a process into {cgroup}: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr[-3000:]
    run, = results.read_runs(str(out))
    assert run.attrs["threads_per_rank"] == [1] and run.attrs["cpu_quota"] == [1.0]

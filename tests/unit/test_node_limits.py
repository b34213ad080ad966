"""What the node gives a job: /dev/shm space for the pipeline's rings, and a
CPU quota for its threads (issue 12, kinds 2 and 6); the real ones, with a
small /dev/shm and a child cgroup, are in tests/jobs/test_node_limits_jobs.py."""
import os

import pytest

from pffbench.comm import shm_space
from pffbench.schedules.pipeline.communications import _Ring

pytestmark = pytest.mark.timeout(120)

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


# --- CPU quotas: cgroup v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us ---------------------

V2_MOUNT = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"
V1_MOUNT = "31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct"
V1_CPUSET = "32 25 0:28 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset"


def fake_tree(root, cgroup: str, mounts: list[str], files: dict[str, str]):
    """A file system under ``root`` with /proc/self/{cgroup,mountinfo} and the given cgroup files."""
    for path, text in {"proc/self/cgroup": cgroup, "proc/self/mountinfo": "\n".join(mounts) + "\n",
                       **files}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return str(root)


@pytest.mark.parametrize("cgroup,mounts,files,cpus,where", [
    # v2: the process's own cgroup sets 1.5 CPUs, its parent none
    ("0::/user.slice/job\n", [V2_MOUNT], {"sys/fs/cgroup/user.slice/job/cpu.max": "150000 100000\n",
                                          "sys/fs/cgroup/user.slice/cpu.max": "max 100000\n"},
     1.5, "sys/fs/cgroup/user.slice/job"),
    # v2 nested: a child without a limit inside a 0.5-CPU parent inside a 2-CPU grandparent: the parent's holds
    ("0::/a/b/c\n", [V2_MOUNT], {"sys/fs/cgroup/a/b/c/cpu.max": "max 100000\n",
                                 "sys/fs/cgroup/a/b/cpu.max": "50000 100000\n",
                                 "sys/fs/cgroup/a/cpu.max": "200000 100000\n"}, 0.5, "sys/fs/cgroup/a/b"),
    # v2 "max" all the way up: no quota
    ("0::/a\n", [V2_MOUNT], {"sys/fs/cgroup/a/cpu.max": "max 100000\n"}, None, None),
    # v2 under a cgroup namespace: the process sees itself at the top of the mount
    ("0::/\n", [V2_MOUNT], {"sys/fs/cgroup/cpu.max": "300000 100000\n"}, 3.0, "sys/fs/cgroup"),
    # v1, cpu and cpuacct mounted together, another controller beside them; the parent has no limit (-1)
    ("5:cpuset:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n", [V1_CPUSET, V1_MOUNT, V2_MOUNT],
     {"sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
      "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
      "sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_quota_us": "-1\n",
      "sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_period_us": "100000\n"}, 2.0, "sys/fs/cgroup/cpu,cpuacct/docker/abc"),
    # v1 as a container mounts it: the mount shows the container's own cgroup at its top; period 50 ms
    ("4:cpu,cpuacct:/docker/abc\n", ["31 25 0:27 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct"],
     {"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "125000\n", "sys/fs/cgroup/cpu/cpu.cfs_period_us": "50000\n"},
     2.5, "sys/fs/cgroup/cpu"),
    # v1 nested, a tighter limit two levels up; a mount point with a space (escaped as \040 in mountinfo)
    ("4:cpu:/slurm/job1/step0\n", [r"31 25 0:27 / /cg\040v1 rw - cgroup cgroup rw,cpu"],
     {"cg v1/slurm/job1/step0/cpu.cfs_quota_us": "-1\n", "cg v1/slurm/job1/step0/cpu.cfs_period_us": "100000\n",
      "cg v1/slurm/job1/cpu.cfs_quota_us": "400000\n", "cg v1/slurm/job1/cpu.cfs_period_us": "100000\n",
      "cg v1/slurm/cpu.cfs_quota_us": "100000\n", "cg v1/slurm/cpu.cfs_period_us": "100000\n"},
     1.0, "cg v1/slurm"),
    # hybrid: a v1 limit of 3 CPUs and a v2 one of 2: the tighter one holds
    ("4:cpu:/j\n0::/j\n", ["31 25 0:27 / /v1 rw - cgroup cgroup rw,cpu", "30 25 0:26 / /v2 rw - cgroup2 cgroup2 rw"],
     {"v1/j/cpu.cfs_quota_us": "300000\n", "v1/j/cpu.cfs_period_us": "100000\n", "v2/j/cpu.max": "200000 100000\n"},
     2.0, "v2/j"),
    # a cpu controller that is not mounted in this namespace: nothing to read
    ("4:cpu:/j\n", [V1_CPUSET], {}, None, None),
])
def test_cpu_quota_of_a_fake_cgroup_tree(tmp_path, cgroup, mounts, files, cpus, where):
    from pffbench.core.cpu_quota import cpu_quota
    quota = cpu_quota(fake_tree(tmp_path, cgroup, mounts, files))
    if cpus is None:
        assert quota is None
    else:
        assert (quota.cpus, quota.cgroup) == (cpus, str(tmp_path / where))


def test_cpu_quota_without_proc_is_none(tmp_path):
    from pffbench.core.cpu_quota import cpu_quota
    assert cpu_quota(str(tmp_path)) is None


def test_sweeps_and_benches_count_the_cores_a_quota_leaves(monkeypatch):
    """sweep's default 1 x all-cores case and bench's thread counts: 8 cores
    under a 2.5-CPU quota give 2 usable cores; without a quota, 8."""
    from pffbench import sweep
    from pffbench.core import cpu_quota
    from pffbench.core.cpu_quota import Quota
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(cpu_quota, "cpu_quota", lambda root="/": Quota(2.5, "/sys/fs/cgroup/job"))
    assert sweep.available_cores() == 2
    monkeypatch.setattr(cpu_quota, "cpu_quota", lambda root="/": None)
    assert sweep.available_cores() == 8

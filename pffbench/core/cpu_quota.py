"""The CPU-time quota of this process's cgroup, in CPUs.

Container CPU limits (docker --cpus, Kubernetes limits.cpu) and systemd's
CPUQuota= do not shrink the affinity mask: they let the cgroup's processes
run ``quota`` microseconds of CPU time per ``period``, on any core.  A
process that starts a thread per core it may run on then gets throttled
(every thread stalls until the next period), so the default thread count
must see the quota too.  The kernel's files (Documentation/admin-guide/
cgroup-v2.rst, "cpu.max"; cgroup-v1/cfs: "cpu.cfs_quota_us" and
"cpu.cfs_period_us"):

- cgroup v2: ``cpu.max`` holds "$MAX $PERIOD", $MAX "max" for no limit;
- cgroup v1 (cpu controller): ``cpu.cfs_quota_us`` (-1 for no limit) and
  ``cpu.cfs_period_us``.

A cgroup's processes are held to the limit of every ancestor as well, so the
tightest limit from the process's own cgroup up to the hierarchy's root (as
far as it is mounted in this namespace) applies.  Where the process's cgroup
is found: /proc/self/cgroup names it per hierarchy, /proc/self/mountinfo says
where that hierarchy is mounted and which of its cgroups the mount shows.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Quota:
    cpus: float      # quota / period: CPUs' worth of time per period
    cgroup: str      # the folder of the cgroup that sets it (under the root given)

    @property
    def whole_cpus(self) -> int:
        """floor(quota / period), at least 1: the threads it can keep busy."""
        return max(1, int(self.cpus))


def usable_cores() -> int:
    """The cores this process may run on, capped by its CPU quota's whole
    CPUs: what one process can keep busy without being throttled."""
    quota = cpu_quota()
    cores = len(os.sched_getaffinity(0))
    return min(cores, quota.whole_cpus) if quota else cores


def cpu_quota(root: str = "/") -> Quota | None:
    """The tightest CPU quota over this process's cgroup and its ancestors, in
    cgroup v2 and v1 alike, or None if there is none (or none can be read).

    ``root`` prefixes every path read (/proc/self/cgroup, /proc/self/mountinfo
    and the cgroup folders), so that a test can give a fake tree."""
    try:
        memberships = _read(root, "/proc/self/cgroup").splitlines()
        mounts = _read(root, "/proc/self/mountinfo").splitlines()
    except OSError:
        return None
    quotas = []
    for line in memberships:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        version = 2 if hierarchy == "0" and controllers == "" else 1
        if version == 1 and "cpu" not in controllers.split(","):
            continue
        for folder in _cgroup_folders(root, mounts, version, path):
            quota = _limit(folder, version)
            if quota is not None:
                quotas.append(Quota(quota, folder))
    return min(quotas, key=lambda q: q.cpus, default=None)


def _read(root: str, path: str) -> str:
    with open(os.path.join(root, path.lstrip("/"))) as file:
        return file.read()


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _cgroup_folders(root: str, mounts: list[str], version: int, path: str) -> list[str]:
    """The folders of ``path``'s cgroup and its ancestors up to the mount's
    top, innermost first, in the first mount of that hierarchy."""
    for line in mounts:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype, options = tail[0], tail[2].split(",")
        if fstype != ("cgroup2" if version == 2 else "cgroup") or (version == 1 and "cpu" not in options):
            continue
        mount_root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        # the part of path below what the mount shows; a cgroup namespace may show the process at the top
        inside = os.path.relpath(path, mount_root) if _is_under(path, mount_root) else "."
        top = os.path.join(root, mount_point.lstrip("/"))
        folders, current = [], os.path.normpath(os.path.join(top, inside))
        while True:
            folders.append(current)
            if current == os.path.normpath(top):
                return folders
            current = os.path.dirname(current)
    return []


def _is_under(path: str, folder: str) -> bool:
    return folder == "/" or path == folder or path.startswith(folder.rstrip("/") + "/")


def _limit(folder: str, version: int) -> float | None:
    """The folder's quota in CPUs, None for no limit or nothing readable."""
    try:
        if version == 2:
            with open(os.path.join(folder, "cpu.max")) as file:
                quota, period = (file.read().split() + ["100000"])[:2]
            if quota == "max":
                return None
        else:
            with open(os.path.join(folder, "cpu.cfs_quota_us")) as file:
                quota = file.read().strip()
            with open(os.path.join(folder, "cpu.cfs_period_us")) as file:
                period = file.read().strip()
        quota, period = int(quota), int(period)
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None

"""CPU quotas under mpiexec -n 2 / -n 4: the ranks of a node held to one
quota share it (issue 12, kind 6)."""
import os

import pytest

from pffbench.core import world as world_module
from pffbench.core.cpu_quota import Quota

MPI = pytest.importorskip("mpi4py.MPI")
pytestmark = pytest.mark.mpi(min_size=2)


@pytest.mark.parametrize("groups", [1, 2])
def test_ranks_held_to_one_quota_share_it(monkeypatch, tmp_path_factory, groups):
    """64 cores for all, and an 8-CPU quota on each of ``groups`` cgroups,
    rank r in cgroup r mod groups: the quota is shared by the ranks of its
    cgroup only.  By hand: 1 cgroup, 2 ranks: min(64 / 2, 8 / 2) = 4 each,
    4 ranks: min(16, 2) = 2; 2 cgroups: 8 / 1 = 8 and min(16, 8 / 2) = 4."""
    comm = MPI.COMM_WORLD
    folders = comm.bcast([str(tmp_path_factory.mktemp(f"cgroup{g}")) for g in range(groups)]
                         if comm.rank == 0 else None)
    monkeypatch.setattr(world_module, "cpu_quota", lambda: Quota(8.0, folders[comm.rank % groups]))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    world = world_module.World(comm)
    sharing = len(range(comm.rank % groups, comm.size, groups))
    assert (world.cpu_quota, world.quota_sharing) == (8.0, sharing)
    assert world.default_threads() == {(1, 2): 4, (1, 4): 2, (2, 2): 8, (2, 4): 4}[(groups, comm.size)]

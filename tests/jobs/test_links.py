"""python -m pffbench.links: one pipeline link timed as the pipeline uses it, on 2 ranks of one node."""
import numpy as np
import pytest

from pffbench import report, results
from pffbench.probes.link_timing import message_bytes, pipeline_messages, rows_for, window_for
from pffbench.store import writer

from helpers import mpirun


def test_the_measured_messages_are_the_pipelines():
    # [784, 784, 544] on 2 ranks: rank 0 owns the (half-cost) first layer, so its link carries 784 activities
    # and a norm per row, for the 64 positives and 64 negatives of a minibatch
    assert pipeline_messages([784, 784, 544], 64, 2) == [(128, 784)]
    assert message_bytes(128, 784) == 128 * 785 * 4 == 401920
    assert pipeline_messages([784, 500, 500, 500, 500], 64, 4) == [(128, 500)] * 3
    for size in (8, 64, 4096, 1 << 20):
        rows, width = rows_for(size)
        assert abs(message_bytes(rows, width) - size) <= 4 * rows  # within a row's rounding of the power of two
    assert window_for(8) == 64 and window_for(4 << 20) == 18  # 2 x (8 ahead + 1) at least


def test_links_on_one_node_times_the_ring_and_messages_and_report_shows_them(tmp_path):
    out = tmp_path / "r.h5"
    done = mpirun(2, "-m", "pffbench.links", "--layers", "784,544", "--batch-size", "64", "--sweep", "8:64",
                  "--warmup", "2", "--repetitions", "5", "--out", str(out), timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split()[3:] == ["size[B]", "lat_min[us]", "lat_med[us]", "lat_max[us]",
                                                       "bw_med[MB/s]"]
    record, = results.read_runs(str(out), section="links")
    assert results.read_runs(str(out)) == []  # a link measurement is not a run: scaling tables never see it
    cases = ["pipeline link 0->1", "sweep", "sweep", "sweep", "sweep"]
    assert record.attrs["kind"] == "links" and record.attrs["what"] == cases * 2
    assert record.attrs["link_kinds"] == ["shared"] * 5 + ["messages"] * 5  # the ring, then Isend/Irecv
    assert list(record.arrays["size"]) == [401920, 8, 16, 32, 64] * 2
    assert record.arrays["latency"].shape == record.arrays["window_seconds"].shape == (10, 5)  # raw, not summaries
    assert (record.arrays["latency"] > 0).all()
    rows = report.link_rows([record])
    assert [row[4] for row in rows] == [401920, 8, 16, 32, 64] * 2 and all(row[5] <= row[6] <= row[7] for row in rows)
    shown = report.main([str(out)])
    assert shown == 0


def test_links_needs_two_ranks(tmp_path):
    done = mpirun(1, "-m", "pffbench.links", "--out", str(tmp_path / "r.h5"), timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == \
        "pffbench.links: error: run on 2 ranks (mpiexec -n 2 python -m pffbench.links), not 1"
    assert not (tmp_path / "r.h5").exists()


def test_report_prints_runs_as_before_and_link_records_after(tmp_path, capsys):
    path = str(tmp_path / "r.h5")
    timing = {f"timing/{c}": np.full((1, 1), 2.0 if c == "wall" else 1.0 if c == "compute" else 0.0)
              for c in ("compute", "data", "send_wait", "recv_wait", "sync", "eval", "idle", "wall")}
    writer.append_run(path, {**timing, "loss": np.ones((1, 1)), "test_accuracy": np.array([0.5])},
                       {"variant": "pipeline", "dataset": "synthetic", "world_size": 1, "threads_per_rank": [1],
                        "config": {"layers": [4]}, "hostname": "h", "minibatches_per_epoch": 1}, name="a")
    report.main([path])
    runs_only = capsys.readouterr().out
    writer.append_run(path, {"size": np.array([8]), "rows": np.array([1]), "width": np.array([1]),
                              "window": np.array([4]), "latency": np.array([[1e-6, 3e-6, 2e-6]]),
                              "window_seconds": np.array([[1e-6, 2e-6, 4e-6]])},
                       {"kind": "links", "link_kinds": ["messages"], "what": ["sweep"], "hostnames": ["n0", "n1"]},
                       name="l", section="links")
    report.main([path])
    both = capsys.readouterr().out
    assert both.startswith(runs_only)  # the runs' table is unchanged
    line = both.splitlines()[-1].split()
    assert line == ["l", "messages", "sweep", "n0->n1", "8", "1.00", "2.00", "3.00", "16.0"]  # 4 x 8 B / 2 us
    with pytest.raises(ValueError, match="unknown results section"):
        results.read_runs(path, section="nope")

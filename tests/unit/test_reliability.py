"""Reliability pieces in one process: the CLI fuzz, the deadlock guard, the
numerical and signal verdict, checkpoints (issue 5).  The end-to-end checks
under mpiexec are in test_reliability_mpi.py."""
import contextlib
import io
import json
import os
import re
import signal
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mpi4py import MPI

from pffbench.comm import guard
from pffbench.launch.cli import build_parser, parse_config
from pffbench.core.config import Config, UsageError
from pffbench.launch.validate import validate
from pffbench.reliability import agreement, checkpoint, faults

pytestmark = pytest.mark.timeout(120)

# --- 3. input validation: any argv gives a Config or a UsageError ---------------------------

FLAGS = sorted({s for a in build_parser()._actions for s in a.option_strings} - {"-h", "--help", "--list-presets"})
VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "3", "64", "1e3", "nan", "inf", "-inf", "1e309", "-0", "0.5", "",
                     ",", "1,2", "10,0", "a,b", "1:0", "0:1", "5:9", "-1:0", "1:2:3", ":", "mnist", "synthetic",
                     "pipeline", "all-layers", "federated", "single-layer", "perf-opt", "backprop", "adaptive",
                     "softmax", "label-skew", "cuda", "mnist-goodness-adaptive-all-layers", "99999999999999999999",
                     "/nonexistent", "--epochs", "é", "\t"]),
    st.integers(-2**70, 2**70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12))
ARGV = st.lists(st.one_of(st.sampled_from(FLAGS), VALUES, st.sampled_from(FLAGS).flatmap(
    lambda flag: VALUES.map(lambda value: f"{flag}={value}"))), max_size=10)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(argv=ARGV, world_size=st.integers(1, 9))
def test_fuzzed_argv_gives_a_config_or_a_usage_error(argv, world_size):
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            config = parse_config(argv)
        validate(config, world_size)
    except UsageError as error:
        assert "\n" not in str(error) and "\r" not in str(error)
        return
    assert isinstance(config, Config)


@pytest.mark.parametrize("argv,needle", [
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--threshold", "nan"], "--threshold must be a finite number"),
    (["--peer-timeout", "0"], "--peer-timeout must be positive"),
    (["--resume"], "--resume needs --checkpoint-dir"),
    (["--stop-at-target"], "--stop-at-target needs --target-accuracy"),
    (["--target-accuracy", "1.5"], r"--target-accuracy must be in \(0, 1\]"),
    (["--target-accuracy", "nan"], "--target-accuracy must be in"),
    (["--eval-every-steps", "5", "--variant", "all-layers"], "works with the pipeline and the backprop baselines"),
    (["--target-accuracy", "0.9", "--stop-at-target"], "needs evaluations before the end"),
    (["--target-accuracy", "0.9", "--stop-at-target", "--variant", "all-layers"], "evaluates only at the end"),
    (["--microbatches", "3", "--variant", "gpipe"], "must divide --batch-size 64"),
    (["--microbatches", "8", "--variant", "ddp"], "for the gpipe and 1f1b variants, not ddp"),
    (["--inject-fault", "1:9"], "no such rank or epoch"),
    (["--inject-hang", "1"], "RANK:EPOCH"),
    (["--inject-nan", "0:0", "--variant", "dp-backprop"], "dp-backprop has none"),
    (["--seed", str(2 ** 40)], "--seed must be below"),
])
def test_reliability_flags_are_validated(argv, needle):
    with pytest.raises(UsageError, match=needle):
        parse_config(argv)


def test_injected_rank_beyond_the_world_is_a_usage_error():
    with pytest.raises(UsageError, match="no such rank"):
        validate(parse_config(["--inject-fault", "4:0"]), 4)


def test_injection_flags_are_hidden_from_help():
    text = build_parser().format_help()
    assert "--peer-timeout" in text and "--checkpoint-dir" in text and "--resume" in text
    assert "inject" not in text


# --- 2. the deadlock guard ---------------------------------------------------------------------

def test_wait_gives_up_naming_rank_peer_and_operation_without_burning_a_core():
    comm = MPI.COMM_SELF
    buffer = np.empty(4, dtype=np.float32)
    request = comm.Irecv([buffer, MPI.FLOAT], source=0, tag=77)  # nobody ever sends it
    guard.set_peer_timeout(1.0)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        with pytest.raises(guard.PeerTimeout) as info:
            guard.wait(request, 3, "a receive of activations")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        guard.set_peer_timeout(600.0)
        request.Cancel()
        request.Wait()
    message = str(info.value)
    assert re.search(rf"rank {MPI.COMM_WORLD.Get_rank()}( on \S+)? waited", message) and "for rank 3" in message
    assert "a receive of activations" in message and "--peer-timeout" in message
    assert 1.0 <= wall < 31.0  # not before the timeout; the upper bound only tells it from a hang
    assert cpu < 0.5 * wall, f"the guarded wait used {cpu:.2f} s of CPU in {wall:.2f} s"


def test_wait_returns_as_soon_as_the_message_is_there():
    comm = MPI.COMM_SELF
    out, back = np.arange(4, dtype=np.float32), np.empty(4, dtype=np.float32)
    receive = comm.Irecv([back, MPI.FLOAT], source=0, tag=78)
    send = comm.Isend([out, MPI.FLOAT], dest=0, tag=78)
    guard.wait(receive, 0, "receive")
    guard.wait(send, 0, "send")
    assert np.array_equal(out, back)


# --- 8. numerical faults and 6. signals: one verdict per epoch boundary -------------------------

def _linears(*finite):
    layers = {}
    for index, ok in enumerate(finite):
        linear = torch.nn.Linear(3, 3)
        if not ok:
            with torch.no_grad():
                linear.weight[0, 0] = float("inf")
        layers[index] = linear
    return layers


def test_verdict_names_layer_rank_and_epoch_of_the_first_non_finite_value():
    comm = MPI.COMM_SELF
    summed, failure, signum = agreement.agree_at_boundary(comm, 4, np.array([1.0, 2.0, 3.0]), _linears(1, 1, 1), [0, 0, 0])
    assert failure is None and signum == 0 and list(summed) == [1.0, 2.0, 3.0]
    _, failure, _ = agreement.agree_at_boundary(comm, 4, np.array([1.0, np.nan, np.nan]), _linears(1, 0, 1), [0, 0, 0])
    assert failure.startswith("non-finite loss and weights (NaN or Inf) in layer 1 on rank 0 at epoch 5")
    assert "also in layers 2" in failure
    _, failure, _ = agreement.agree_at_boundary(comm, 0, np.array([1.0, 2.0]), _linears(0, 1), [0, 0])
    assert "non-finite weights" in failure and "layer 0" in failure


def test_first_signal_sets_a_flag_the_second_stops_at_once(monkeypatch):
    now = [100.0]  # a clock the test moves, so a slow machine cannot stretch the 2 s window
    monkeypatch.setattr(faults.time, "monotonic", lambda: now[0])
    interrupts = faults.Interrupts().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert interrupts.signum == signal.SIGTERM
        now[0] += interrupts.DUPLICATE_S / 2
        os.kill(os.getpid(), signal.SIGTERM)  # the same warning again, e.g. forwarded by mpiexec: still one
        time.sleep(0.05)
        assert interrupts.signum == signal.SIGTERM
        now[0] += interrupts.DUPLICATE_S
        exits, said = [], []
        monkeypatch.setattr(faults.os, "_exit", exits.append)  # the abort exits the process: record it instead
        interrupts.on_abort = said.append
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert exits == [130] and said == [signal.SIGINT]
    finally:
        interrupts.uninstall()
    assert faults.stop_code(signal.SIGTERM) == 143 and faults.stop_code(signal.SIGINT) == 130


def test_verdict_carries_a_pending_signal(monkeypatch):
    monkeypatch.setattr(faults.INTERRUPTS, "signum", int(signal.SIGINT))
    _, failure, signum = agreement.agree_at_boundary(MPI.COMM_SELF, 0, np.zeros(1), _linears(1), [0])
    assert failure is None and signum == signal.SIGINT


# --- 5. checkpoints ------------------------------------------------------------------------------

def _checkpoints(tmp_path, **changes):
    config = Config(dataset="synthetic", layers=(8, 8), checkpoint_dir=str(tmp_path), **changes)
    return checkpoint.Checkpoints.from_config(config, MPI.COMM_SELF)


def test_checkpoint_round_trip_and_newest_complete_wins(tmp_path):
    store = _checkpoints(tmp_path)
    assert store.load_latest() is None
    for tag in (1, 2, 3):
        store.save(tag, {"epoch": tag, "w": torch.full((2,), float(tag))})
    assert sorted(os.listdir(tmp_path)) == ["epoch-000002", "epoch-000003"]  # the two newest are kept
    os.makedirs(tmp_path / "epoch-000004")  # a checkpoint a crash left half-written: no marker
    (tmp_path / "epoch-000004" / "rank-0000.pt").write_bytes(b"partial")
    tag, state = store.load_latest()
    assert tag == 3 and torch.equal(state["w"], torch.full((2,), 3.0))
    assert not [name for name in os.listdir(tmp_path / "epoch-000003") if ".tmp" in name]
    marker = json.loads((tmp_path / "epoch-000003" / checkpoint.MARKER).read_text())
    assert marker["ranks"] == 1 and marker["config"]["layers"] == [8, 8]


def test_resuming_with_other_settings_is_a_usage_error(tmp_path):
    _checkpoints(tmp_path).save(1, {"epoch": 1})
    assert _checkpoints(tmp_path, out="elsewhere.h5", peer_timeout=5.0).load_latest()[0] == 1  # free flags
    with pytest.raises(UsageError, match=r"other settings \(--layers\)"):
        checkpoint.Checkpoints(str(tmp_path), MPI.COMM_SELF, Config(dataset="synthetic", layers=(8, 9))).load_latest()


def test_settings_that_change_nothing_computed_may_differ_on_resume(tmp_path):
    """The one list (Config field metadata): the fingerprint holds exactly the settings that change what is
    computed; a checkpoint written when --transport was still in it (pffbench before issue 11) resumes."""
    from pffbench.core.config import COMPUTING
    _checkpoints(tmp_path).save(1, {"epoch": 1})
    marker = tmp_path / "epoch-000001" / checkpoint.MARKER
    written = json.loads(marker.read_text())
    assert set(written["config"]) == set(COMPUTING) and "transport" not in COMPUTING and "device" not in COMPUTING
    written["config"]["transport"] = "auto"  # as the old fingerprint had it
    marker.write_text(json.dumps(written))
    assert _checkpoints(tmp_path, transport="p2p", device="cuda", threads=3).load_latest()[0] == 1
    with pytest.raises(UsageError, match=r"other settings \(--lr\)"):
        _checkpoints(tmp_path, lr=0.5).load_latest()


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default(tmp_path):
    """Checkpoints written before --microbatches and --target-accuracy existed do not name them: they had the
    defaults then (found resuming a checkpoint of 62f6012: refused with 'other settings (--microbatches)')."""
    _checkpoints(tmp_path).save(1, {"epoch": 1})
    marker = tmp_path / "epoch-000001" / checkpoint.MARKER
    written = json.loads(marker.read_text())
    for newer in ("microbatches", "target_accuracy", "stop_at_target"):
        written["config"].pop(newer, None)
    marker.write_text(json.dumps(written))
    assert _checkpoints(tmp_path).load_latest()[0] == 1
    with pytest.raises(UsageError, match=r"other settings \(--microbatches\)"):
        _checkpoints(tmp_path, microbatches=8).load_latest()


def test_a_checkpoint_of_another_format_is_a_usage_error(tmp_path):
    _checkpoints(tmp_path).save(1, {"epoch": 1})
    marker = tmp_path / "epoch-000001" / checkpoint.MARKER
    written = json.loads(marker.read_text())
    del written["format"]  # as pffbench wrote them before formats were numbered
    marker.write_text(json.dumps(written))
    with pytest.raises(UsageError, match=r"written by another version of pffbench \(checkpoint format 1, this one "):
        _checkpoints(tmp_path).load_latest()


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "f"
    checkpoint.atomic_write(str(path), lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk died")
    with pytest.raises(RuntimeError):
        checkpoint.atomic_write(str(path), broken)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]


def test_rng_states_round_trip():
    generator = torch.Generator().manual_seed(5)
    state = checkpoint.rng_state(generator)
    first = (torch.rand(3), np.random.rand(), torch.rand(2, generator=generator))
    checkpoint.set_rng_state(state, generator)
    again = (torch.rand(3), np.random.rand(), torch.rand(2, generator=generator))
    assert torch.equal(first[0], again[0]) and first[1] == again[1] and torch.equal(first[2], again[2])

"""jobs/paper_reproduction.sbatch's control flow without Slurm: the script runs under bash with a fake
`python` (which records each pffbench.run / pffbench.report it is asked for and answers as told) and a
fake launcher, so what is checked is the script's own logic: a preset that fails or is interrupted does
not end the job, the report always runs, and a run stopped by the time-limit warning is resumed (and
the finished presets skipped) when the job starts again.  tests/slurm checks the same scripts under a
real Slurm."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEQUENTIAL, ALL_LAYERS, SAME = ("mnist-goodness-random-sequential", "mnist-goodness-random-all-layers",
                                "mnist-goodness-random-single-layer")

# RUN_<preset with - as _>: "fail" exits 3, "crash" exits 1, "interrupt" exits 143 (SIGTERM to the ranks),
# "limit" sends the batch shell the time-limit warning (what #SBATCH --signal=B:TERM@... does) and waits for
# the ranks' SIGTERM; anything else completes.
FAKE_PYTHON = textwrap.dedent("""\
    #!/bin/bash
    if [ "$1" = -m ] && [ "$2" = pffbench.report ]; then echo "report $3" >> "$FAKE_LOG"; exit 0; fi
    if [ "$1" != -m ] || [ "$2" != pffbench.run ]; then exec "$REAL_PYTHON" "$@"; fi
    preset=""; prev=""
    for arg in "$@"; do [ "$prev" = --preset ] && preset="$arg"; prev="$arg"; done
    echo "run $preset $*" >> "$FAKE_LOG"
    var="RUN_${preset//-/_}"
    case "${!var:-}" in
      fail) exit 3 ;;
      crash) exit 1 ;;
      interrupt) exit 143 ;;
      limit) trap 'echo "stopped $preset" >> "$FAKE_LOG"; exit 143' TERM
             batch=$(awk '/^PPid/ {print $2}' /proc/$PPID/status)
             kill -TERM "$batch"
             for _ in $(seq 300); do sleep 0.1; done; exit 99 ;;
    esac
    echo "complete $preset" >> "$FAKE_LOG"
    """)
# the launcher keeps its ranks as children, as mpiexec does (jobs/common.sh signals the python below it)
FAKE_LAUNCHER = "#!/bin/bash\nshift 2\n\"$@\"\n"


@pytest.fixture
def job(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("python", FAKE_PYTHON), ("launcher", FAKE_LAUNCHER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"

    def run(presets, resume=False, **runs):
        env = {**os.environ, "PYTHON": str(bin_dir / "python"), "REAL_PYTHON": sys.executable,
               "PYTHONPATH": str(ROOT), "LAUNCHER": str(bin_dir / "launcher"), "SLURM_NTASKS": "4",
               "FAKE_LOG": str(log), "OUT": str(tmp_path / "paper.h5"), "CHECKPOINTS": str(tmp_path / "ckpt"),
               "PRESETS": " ".join(presets), "SLURM_SUBMIT_DIR": str(ROOT), **({"RESUME": "1"} if resume else {}),
               **{f"RUN_{preset.replace('-', '_')}": what for preset, what in runs.items()}}
        for var in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
            env.pop(var, None)
        log.write_text("")
        done = subprocess.run(["bash", str(ROOT / "jobs/paper_reproduction.sbatch"), "--epochs", "2"], env=env,
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        return done, log.read_text().splitlines()
    return run


def test_a_failing_preset_does_not_stop_the_job_and_the_report_runs(job):
    done, calls = job([SEQUENTIAL, ALL_LAYERS, SAME], **{SEQUENTIAL: "fail", ALL_LAYERS: "crash"})
    assert [c.split()[1] for c in calls if c.startswith("run ")] == [SEQUENTIAL, ALL_LAYERS, SAME], done.stderr
    assert calls[-2] == f"complete {SAME}" and calls[-1].startswith("report ") and calls[-1].endswith("paper.h5")
    assert f"{SEQUENTIAL} failed (exit 3); going on with the next preset" in done.stderr
    assert f"{ALL_LAYERS} failed (exit 1)" in done.stderr
    assert done.returncode == 1 and f"2 preset(s) did not complete: {SEQUENTIAL} {ALL_LAYERS}" in done.stderr


def test_an_interrupted_preset_is_logged_and_the_next_runs(job):
    done, calls = job([SEQUENTIAL, SAME], **{SEQUENTIAL: "interrupt"})
    assert f"complete {SAME}" in calls and calls[-1].startswith("report "), done.stderr
    assert f"{SEQUENTIAL} interrupted (exit 143)" in done.stderr and done.returncode == 1


def test_every_preset_checkpoints_and_a_clean_job_exits_0(job, tmp_path):
    done, calls = job([SEQUENTIAL, SAME])
    assert done.returncode == 0, done.stderr
    runs = [c for c in calls if c.startswith("run ")]
    assert len(runs) == 2 and all(f"--checkpoint-dir {tmp_path}/ckpt/" in c for c in runs)
    assert not any("--resume" in c for c in runs) and calls[-1].startswith("report ")


def test_a_time_limit_stop_reports_then_the_next_start_resumes_and_skips_what_is_done(job):
    done, calls = job([SEQUENTIAL, ALL_LAYERS, SAME], **{ALL_LAYERS: "limit"})
    assert f"stopped {ALL_LAYERS}" in calls, done.stderr  # the batch shell passed the warning to the ranks
    assert not any(SAME in c for c in calls)  # no time for another preset
    assert calls[-1].startswith("report ")
    assert "not requeued" in done.stderr and "RESUME=1" in done.stderr
    assert done.returncode == 128 + signal.SIGTERM
    # the job again (what a requeued job does: SLURM_RESTART_COUNT > 0, here RESUME=1)
    done, calls = job([SEQUENTIAL, ALL_LAYERS, SAME], resume=True)
    runs = [c.split() for c in calls if c.startswith("run ")]
    assert [r[1] for r in runs] == [ALL_LAYERS, SAME], done.stderr
    assert all("--resume" in r for r in runs)
    assert f"{SEQUENTIAL} already ran in this job (complete)" in done.stdout
    assert calls[-1].startswith("report ") and done.returncode == 0

"""python -m pffbench.probes.library_overhead runs and reports every line (no durations asserted).
In a process of its own: it flushes denormals to zero, as runs do, which would leak into other tests."""
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.timeout(120)


def test_the_overhead_tool_times_plain_microbatched_library_and_stages():
    done = subprocess.run([sys.executable, "-m", "pffbench.probes.library_overhead", "--layers", "16,12,8", "--inputs",
                           "20", "--batch-size", "16", "--microbatches", "4", "--ranks", "3", "--steps", "3"],
                          capture_output=True, text=True, timeout=100, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for needle in ("plain (whole minibatch)", "microbatched by hand", "gpipe  (library, 1 stage)",
                   "1f1b   (library, 1 stage)", "library cost", "stages of a 3-rank split by hand",
                   "ideal 3-stage fill-drain step"):
        assert needle in out, out
    stages = out.split("stages of a 3-rank split by hand: ")[1].splitlines()[0].split(", ")
    assert len(stages) == 3 and all(float(t) > 0 for t in stages)

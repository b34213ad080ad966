"""jobs/race.sbatch WORKLOAD=cifar10 on a tiny image folder (8 x 8 RGB, 10 classes) made here: the layer costs
measured once and kept, the pipeline contenders split by them, contenders computing the same weights taking
their twin's search (tune --trials-of), each finished contender's summary kept for a resumed race."""
import json
import os
import subprocess

import pytest

from helpers import MPIEXEC, ROOT
from test_bench_conv import image_folder  # noqa: F401  (the fixture)

CONTENDERS = "backprop-p1-t2 dp-backprop-p2 pipeline-local-softmax-p2 pipeline-local-softmax-p1"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_cifar10_race_measures_costs_once_and_shares_searches(image_folder, tmp_path):  # noqa: F811
    if MPIEXEC is None:
        pytest.skip("no mpiexec found")
    data = tmp_path / "data"
    data.mkdir()
    (data / "cifar10-jpeg").symlink_to(image_folder)
    out, summaries = tmp_path / "race.h5", tmp_path / "race"
    env = {**os.environ, "WORKLOAD": "cifar10", "PFFBENCH_DATA": str(data), "OUT": str(out),
           "SUMMARIES": str(summaries), "CONTENDERS": CONTENDERS, "PYTHON": os.path.join(os.path.dirname(MPIEXEC),
                                                                                           "python"),
           "PYTHONPATH": str(ROOT)}
    flags = ["--epochs", "1", "--batch-size", "16", "--validation", "40", "--eval-every-steps", "2", "--grid", "2",
             "--repeats", "1"]
    done = subprocess.run(["bash", "jobs/race.sbatch", *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=840)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # measured at the race's batch: the flags that change a layer's work name the file
    costs = (summaries / "layer-costs-local-softmax-conv20-80-160-320-batch-size16.txt").read_text().split()
    assert costs[0] == "--layer-costs" and len(costs[1].split(",")) == 4  # four blocks
    for name in CONTENDERS.split():
        assert (summaries / f"{name}.json").is_file(), name
    shared = json.loads((summaries / "pipeline-local-softmax-p1.json").read_text())
    own = json.loads((summaries / "pipeline-local-softmax-p2.json").read_text())
    assert shared["trials_of"] == "tune-pipeline-local-softmax-p2-t1" and shared["trials"] == own["trials"]
    assert json.loads((summaries / "dp-backprop-p2.json").read_text())["trials_of"] == "tune-backprop-default-p1-t2"
    from pffbench import results
    pipeline = [run for run in results.read_runs(str(out)) if run.config["objective"] == "local-softmax"]
    assert pipeline and all(list(run.config["layer_costs"]) == [int(c) for c in costs[1].split(",")]
                            for run in pipeline)
    repeats = {}
    for run in results.read_runs(str(out)):
        if "-test-" in run.name:
            repeats.setdefault((run.attrs["world_size"], run.config["variant"]), set()).add(run.config["stop_at_target"])
    # the 1-rank twin times the same weights: its repeats stop at the target; the p = 2 contenders' run on
    assert repeats == {(1, "pipeline"): {True}, (2, "pipeline"): {False}, (1, "backprop"): {False},
                       (2, "dp-backprop"): {False}}, repeats
    table = done.stdout[done.stdout.index("race: pipeline-local-softmax-p1"):]
    for label in ("backprop, 1 x 2", "dp-backprop, 2 x 1", "pipeline x local-softmax, 2 x 1",
                  "pipeline x local-softmax, 1 x 1"):  # every contender in the race's table, shared searches too
        assert label in table, table
    assert "the trials of tune-pipeline-local-softmax-p2-t1" in json.dumps(shared["picks"])
    again = subprocess.run(["bash", "jobs/race.sbatch", *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)  # resumed: every contender done before, nothing runs again
    assert again.returncode == 0 and again.stdout.count("done before") == 4, again.stdout + again.stderr


@pytest.mark.timeout(120)
def test_the_cifar10_race_without_cifar10_says_so_before_anything_runs(tmp_path):
    if MPIEXEC is None:
        pytest.skip("no mpiexec found")
    env = {**os.environ, "WORKLOAD": "cifar10", "PFFBENCH_DATA": str(tmp_path), "OUT": str(tmp_path / "race.h5"),
           "SUMMARIES": str(tmp_path / "race"), "PYTHON": os.path.join(os.path.dirname(MPIEXEC), "python"),
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["bash", "jobs/race.sbatch"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stdout + done.stderr
    assert f"no CIFAR-10 in {tmp_path}" in done.stderr and not (tmp_path / "race").exists()

"""python -m pffbench.tune end to end on a tiny setting (synthetic data), and its parts."""
import json
import math
import os
import statistics
import subprocess
import sys

import pytest
import torch

from pffbench import results
from pffbench.data import load_dataset, validation_split
from pffbench.analysis import race
from pffbench.tune import learning_rates, pick

from helpers import ROOT


def tune(*argv, timeout=900):
    return subprocess.run([sys.executable, "-m", "pffbench.tune", *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)


def test_tune_picks_on_validation_per_target_and_runs_each_pick_on_the_test_set(tmp_path):
    out, summary = tmp_path / "tune.h5", tmp_path / "tune.json"
    done = tune("--variant", "pipeline", "--objective", "local-softmax", "--dataset", "synthetic", "--layers", "32,32",
                "--epochs", "1", "--batch-size", "50", "--threads", "1", "--target-accuracy", "0.5,0.6",
                "--validation", "400", "--eval-every-steps", "8", "--lr-min", "1e-4", "--lr-max", "3e-2",
                "--grid", "3", "--repeats", "2", "--out", str(out), "--summary", str(summary))
    assert done.returncode == 0, done.stderr
    report = json.loads(summary.read_text())
    runs = {run.name: run for run in results.read_runs(str(out))}
    trials = [runs[t["name"]] for t in report["trials"]]
    assert [run.config["lr"] for run in trials] == report["learning_rates"] == learning_rates(1e-4, 3e-2, 3)
    for run in trials:  # picked on 400 rows held out of the training set, stopped at the highest target
        assert run.config["validation"] == 400 and run.config["stop_at_target"]
        assert run.config["target_accuracy"] == 0.6 and run.config["threads"] == 1
        assert run.attrs["num_train"] == 1600 and "validation" in run.attrs["evaluated_on"]
    picks = set()
    for target in ("0.5", "0.6"):
        samples = {t["lr"]: t["to_target"][target]["samples"] for t in report["trials"]}
        reached = {lr: n for lr, n in samples.items() if n is not None}
        chosen = report["picks"][target]
        accuracy = {t["lr"]: t["accuracy"] for t in report["trials"]}
        # each target its own pick: the fewest samples to it (the contender's own pace), ties to accuracy
        assert reached and chosen["lr"] == min(reached, key=lambda lr: (reached[lr], -accuracy[lr]))
        repeats = [r for r in runs.values() if "-test-" in r.name and r.config["lr"] == chosen["lr"]]
        assert [run.config["seed"] for run in repeats] == [0, 1]  # on the test set, the whole training set
        assert all(run.config["validation"] == 0 for run in repeats)
        assert all(run.attrs["num_train"] == 2000 and "evaluated_on" not in run.attrs for run in repeats)
        seconds = [race.reaching(run, float(target))[0] for run in repeats]
        assert chosen["seconds_each"] == [s if math.isfinite(s) else None for s in seconds]  # JSON: no NaN
        if all(map(math.isfinite, seconds)):
            assert chosen["seconds"] == statistics.median(seconds)
        else:  # a median time to target needs every repetition to reach it
            assert chosen["seconds"] is None
        picks.add(chosen["lr"])
        assert f"to {target}: lr {chosen['lr']:g}" in done.stdout
    assert len(runs) == 3 + 2 * len(picks)  # a pick shared by both targets runs once


@pytest.mark.parametrize("argv, needle", [
    (["--lr", "0.1"], "--lr: set by the tuning protocol"),
    (["--variant", "all-layers"], "all-layers evaluates"),
    (["--lr-min", "0.1", "--lr-max", "0.01"], "need 0 < --lr-min < --lr-max"),
    (["--target-accuracy", "0.9,1.5"], "--target-accuracy must be in (0, 1]"),
    (["--layers", "0"], "--layers widths must be positive"),
])
def test_tune_refuses_in_one_line(argv, needle, tmp_path):
    done = tune("--target-accuracy", "0.9", "--dataset", "synthetic", "--out", str(tmp_path / "t.h5"), *argv,
                timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and needle in done.stderr, done.stderr
    assert not (tmp_path / "t.h5").exists()


def test_a_twin_whose_trials_all_failed_leaves_nothing_to_pick_in_one_line():
    # --trials-of keeps a twin's failed trials (they reached nothing); with none that finished, the pick is NaN
    import argparse

    from pffbench import tune as tuning
    from pffbench.core.config import UsageError
    from pffbench.store.reader import Run
    contender = race.Contender("pipeline", "local-softmax", 1, 1)
    contender.trials = {lr: Run(f"tune-x-lr{lr:g}-validation", {"status": "failed", "config": {}}, {})
                        for lr in (1e-3, 1e-2)}
    args = argparse.Namespace(repeats=1, repeats_stop_at_target=True, seed=0)
    with pytest.raises(UsageError, match="every trial failed"):
        tuning._measure(args, [], [0.6, 0.7], "tune-x", contender)


def test_the_grid_is_log_spaced_and_the_pick_is_the_fastest_to_target():
    assert learning_rates(1e-4, 1e-2, 5) == [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2]
    trials = [{"lr": 1, "time_to_target": math.nan, "accuracy": 0.99},
              {"lr": 2, "time_to_target": 3.0, "accuracy": 0.97}, {"lr": 3, "time_to_target": 2.0, "accuracy": 0.971},
              {"lr": 4, "time_to_target": 2.0, "accuracy": 0.975}]
    assert pick(trials) == (trials[3], "shortest time to target")
    chosen, how = pick([dict(t, time_to_target=math.nan) for t in trials])
    assert chosen["lr"] == 1 and "no trial reached" in how


def test_validation_rows_come_from_the_training_set_only():
    data = load_dataset("synthetic")
    split = validation_split(data, 300)
    assert split.x_test.shape[0] == 300 and split.x_train.shape[0] == data.x_train.shape[0] - 300
    rows = {tuple(r.tolist()) for r in data.x_train}
    assert all(tuple(r.tolist()) in rows for r in split.x_test)  # held-out rows are training rows
    assert not {tuple(r.tolist()) for r in split.x_test} & {tuple(r.tolist()) for r in split.x_train}
    assert torch.equal(validation_split(data, 300).x_test, split.x_test)  # the same rows every time
    assert not any(torch.equal(split.x_test[:1], data.x_test[i:i + 1]) for i in range(data.x_test.shape[0]))


def test_a_contender_computing_the_same_weights_takes_its_twins_trials_and_runs_only_its_repeats(tmp_path):
    # the pipeline at p = 2 computes the p = 1 weights bit for bit: one search serves both (--trials-of)
    out, first, second = tmp_path / "tune.h5", tmp_path / "p1.json", tmp_path / "p2.json"
    flags = ["--variant", "pipeline", "--objective", "local-softmax", "--dataset", "synthetic", "--layers", "32,32",
             "--epochs", "1", "--batch-size", "50", "--threads", "1", "--target-accuracy", "0.5",
             "--validation", "400", "--eval-every-steps", "8", "--grid", "2", "--repeats", "1", "--out", str(out)]
    done = tune(*flags, "--summary", str(first))
    assert done.returncode == 0, done.stderr
    before = {run.name for run in results.read_runs(str(out))}
    # its final accuracy is its twin's: its repeats may stop at the target (a strong-scaling pair's other half)
    done = tune(*flags, "--ranks", "2", "--trials-of", "tune-pipeline-local-softmax-p1-t1", "--summary", str(second),
                "--repeats-stop-at-target")
    assert done.returncode == 0, done.stderr
    after = {run.name: run for run in results.read_runs(str(out))}
    new = set(after) - before
    assert new and all("-test-" in name and after[name].attrs["world_size"] == 2 for name in new)  # no search
    assert all(after[name].config["stop_at_target"] and after[name].attrs.get("stop_reason") for name in new)
    p1, p2 = json.loads(first.read_text()), json.loads(second.read_text())
    assert p2["trials_of"] == "tune-pipeline-local-softmax-p1-t1" and p2["trials"] == p1["trials"]
    assert p2["picks"]["0.5"]["lr"] == p1["picks"]["0.5"]["lr"]
    assert p2["picks"]["0.5"]["stopped"] == 1 and p2["picks"]["0.5"]["accuracy"] is None
    assert p1["picks"]["0.5"]["stopped"] == 0 and p1["picks"]["0.5"]["accuracy"] > 0.5
    assert "repeats stopped at 0.5: no final accuracy" in done.stdout
    missing = tune(*flags, "--trials-of", "tune-nobody", timeout=120)
    assert missing.returncode == 2 and "--trials-of tune-nobody: no trial of it in" in missing.stderr
    other = [flag if flag != "1" or i == 0 or flags[i - 1] != "--epochs" else "2" for i, flag in enumerate(flags)]
    assert other != flags
    differ = tune(*other, "--trials-of", "tune-pipeline-local-softmax-p1-t1", timeout=120)  # other work: refused
    assert differ.returncode == 2 and "its trials trained other work (epochs differ)" in differ.stderr


def test_a_tune_cut_short_resumes_run_by_run(tmp_path):
    # a race outlives a session: run again, tune keeps what --out holds of this contender and runs the rest
    import h5py
    out = tmp_path / "tune.h5"
    flags = ["--variant", "pipeline", "--objective", "local-softmax", "--dataset", "synthetic", "--layers", "32,32",
             "--epochs", "1", "--batch-size", "50", "--threads", "1", "--target-accuracy", "0.5",
             "--validation", "400", "--eval-every-steps", "8", "--grid", "3", "--out", str(out)]

    def stored():  # name -> its runs' creation times, a name appended again (NAME-2) under NAME
        runs = {}
        for run in results.read_runs(str(out)):
            runs.setdefault(run.name.removesuffix("-2").removesuffix("-3"), []).append(run.attrs["created"])
        return runs

    done = tune(*flags, "--repeats", "1", "--summary", str(tmp_path / "first.json"))
    assert done.returncode == 0, done.stderr
    first = stored()
    trials = [t["name"] for t in json.loads((tmp_path / "first.json").read_text())["trials"]]
    assert len(trials) == 3 and len(first) == 4
    with h5py.File(out, "r+") as f:  # one trial timed on another kind of CPU: its seconds are not this machine's;
        f["runs"][trials[1]].attrs["cpu_model"] = "Another CPU"
        f["runs"][trials[2]].attrs["status"] = "interrupted"  # one cut short
        config = json.loads(f["runs"][trials[0]].attrs["config"])  # written before a setting was added: its default
        del config["inject_hang"]
        f["runs"][trials[0]].attrs["config"] = json.dumps(config)
    done = tune(*flags, "--repeats", "2", "--summary", str(tmp_path / "resumed.json"))  # only what is missing runs
    assert done.returncode == 0, done.stderr
    second = stored()
    assert second[trials[0]] == first[trials[0]] and len(second[trials[1]]) == len(second[trials[2]]) == 2
    assert f"{trials[0]}: kept from an earlier tune" in done.stdout
    assert f"{trials[1]}: kept" not in done.stdout and f"{trials[2]}: kept" not in done.stdout
    repeats = sorted(name for name in second if "-test-seed" in name)
    assert len(repeats) == 2 and second[repeats[0]] == first[repeats[0]]  # seed 0 kept, seed 1 new
    summary = json.loads((tmp_path / "resumed.json").read_text())  # the rerun trials, not the stale ones
    assert [t["name"] for t in summary["trials"]] == [trials[0], trials[1] + "-2", trials[2] + "-2"]
    other = [flag if flag != "0.5" else "0.55" for flag in flags]  # other settings: nothing kept
    done = tune(*other, "--repeats", "1")
    assert done.returncode == 0 and "kept" not in done.stdout, done.stderr
    done = tune(*flags, "--repeats", "1", "--fresh")
    assert done.returncode == 0 and "kept" not in done.stdout, done.stderr

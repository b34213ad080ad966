"""paper_bench --claims: where each run's data comes from, and a failed run does not end the check."""
import types

from pffbench import paper_claims


def test_cifar_rows_use_the_jpeg_copy_only_where_the_official_data_is_absent(tmp_path):
    args = types.SimpleNamespace(data_dir=str(tmp_path))
    assert paper_claims.data_flags(args, "cifar10-perf-opt") == ["--data-dir", str(tmp_path)]  # nothing: as given
    (tmp_path / "cifar10-jpeg").mkdir()
    assert paper_claims.data_flags(args, "cifar10-perf-opt") == [
        "--dataset", "imagefolder", "--data-dir", str(tmp_path / "cifar10-jpeg")]
    assert paper_claims.data_flags(args, "mnist-perf-opt") == ["--data-dir", str(tmp_path)]
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    assert paper_claims.data_flags(args, "cifar10-perf-opt") == [  # the official one
        "--dataset", "cifar10", "--data-dir", str(tmp_path)]


def test_a_failed_run_is_said_and_the_next_one_runs(tmp_path, capsys):
    args = types.SimpleNamespace(data_dir=None, out=str(tmp_path / "claims.h5"), layers="8", epochs=1)
    specs = [paper_claims.Spec("a", "mnist-perf-opt", 1), paper_claims.Spec("b", "mnist-perf-opt", 1)]
    failed = paper_claims.run_all("false", args, specs, range(2))
    assert failed == ["a-s0", "b-s0", "a-s1", "b-s1"]
    assert capsys.readouterr().err.count("failed") == 4


def test_the_single_layer_comparison_trains_the_first_two_layers():
    args = types.SimpleNamespace(layers="500,400,300,200")
    shallow = [s for s in paper_claims.SCHEDULE_RUNS if "single-layer" in s.preset]
    assert shallow and all(paper_claims.layers_of(s, args) == "500,400" and s.ranks == 2 for s in shallow)
    assert paper_claims.layers_of(paper_claims.MNIST_RUNS[0], args) == args.layers


def _runs(accuracies: dict) -> dict:
    """Fake runs named like the check's: key -> [accuracy of seed 0, 1, ...] (fractions)."""
    return {paper_claims.run_name(key, seed): types.SimpleNamespace(attrs={"final_test_accuracy": a}, config={})
            for key, values in accuracies.items() for seed, a in enumerate(values)}


def test_an_order_is_judged_on_the_medians_and_counts_the_seeds_that_agree():
    data = paper_claims.Seeds(_runs({"a": [0.97, 0.96, 0.975], "b": [0.96, 0.965, 0.95]}), range(3))
    text, verdict = paper_claims._order(data, ["a", "b"], ["A", "B"])
    assert verdict == "holds (2 of 3 seeds in this order)"
    assert text == "A 97.00 [96.00-97.50], B 96.00 [95.00-96.50]"
    data = paper_claims.Seeds(_runs({"a": [0.95, 0.95, 0.95], "b": [0.96, 0.96, 0.94]}), range(3))
    assert paper_claims._order(data, ["a", "b"], ["A", "B"])[1] == "does not hold (1 of 3 seeds in this order)"


def test_a_seed_missing_a_run_is_left_out_and_no_seed_is_not_measurable():
    data = paper_claims.Seeds(_runs({"a": [0.97, 0.96], "b": [0.96]}), range(2))
    assert paper_claims._order(data, ["a", "b"], ["A", "B"])[1] == "holds (1 of 1 seed in this order)"
    data = paper_claims.Seeds(_runs({"a": [0.97]}), range(2))
    assert paper_claims._order(data, ["a", "b"], ["A", "B"]) == ("not run", "not measurable here: a run is missing")


def test_cifar10_flags_keep_the_data_folder_as_given(tmp_path, monkeypatch):
    """A run's --data-dir is recorded and part of what a resumed race matches its finished runs by:
    "./data" must stay "./data", not become "data"."""
    from pffbench.datasets.files import cifar10_flags
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "cifar10-jpeg").mkdir(parents=True)
    assert cifar10_flags("./data") == ["--dataset", "imagefolder", "--data-dir", "./data/cifar10-jpeg"]
    (tmp_path / "data" / "cifar-10-batches-py").mkdir()
    assert cifar10_flags("./data/") == ["--dataset", "cifar10", "--data-dir", "./data/"]
    assert cifar10_flags(tmp_path / "nothing") is None

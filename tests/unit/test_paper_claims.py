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
    assert paper_claims.data_flags(args, "cifar10-perf-opt") == ["--data-dir", str(tmp_path)]  # the official one


def test_a_failed_run_is_said_and_the_next_one_runs(tmp_path, capsys):
    args = types.SimpleNamespace(data_dir=None, out=str(tmp_path / "claims.h5"), layers="8", epochs=1)
    failed = paper_claims.run_all("false", args, [("a", "mnist-perf-opt", 1), ("b", "mnist-perf-opt", 1)])
    assert failed == ["a", "b"]
    assert capsys.readouterr().err.count("failed") == 2

"""Issue 23 point 2: tables and legends that tell runs apart; one table per output."""
import dataclasses
import io
import json

import numpy as np
import pytest

from pffbench import links, plot, report
from pffbench.core.config import Config
from pffbench.instrument.timer import COLUMNS
from pffbench.results import read_runs, to_dataframe
from pffbench.store import writer

pd = pytest.importorskip("pandas")


def _append(out, name, ranks, seconds, attrs=None, **settings):
    config = dataclasses.asdict(Config(**{"variant": "federated", "layers": (16, 16), "epochs": 1, **settings}))
    arrays = {f"timing/{c}": np.full((ranks, 1), 0.0) for c in COLUMNS}
    arrays["timing/compute"][:] = seconds
    arrays["timing/wall"][:] = seconds
    arrays.update({"loss": np.ones((2, 1)), "test_accuracy": np.array([0.9])})
    attrs = {"variant": "federated", "dataset": "mnist", "config": config, "world_size": ranks,
             "threads_per_rank": [1] * ranks, "final_test_accuracy": 0.9, "minibatches_per_epoch": 10,
             "dims": [784, 16, 16], "hostname": "h", "git_sha": "abc", **(attrs or {})}
    writer.append_run(str(out), arrays, attrs, name=name)


def _link(out):
    arrays = {"size": np.array([8, 1024]), "latency": np.full((2, 3), 1e-5), "window": np.full((2, 3), 4),
              "window_seconds": np.full((2, 3), 1e-4)}
    attrs = {"link_kinds": ["shared", "shared"], "what": ["sweep", "sweep"], "hostnames": ["a", "a"]}
    writer.append_run(str(out), arrays, attrs, name="link", section="links")


@pytest.fixture
def skewed(tmp_path):
    """Federated IID and label-skew on 1 and 2 ranks, otherwise the same, and a link record, in one file."""
    out = tmp_path / "runs.h5"
    for partition in ("iid", "label-skew"):
        for ranks, seconds in ((1, 4.0), (2, 2.5)):
            _append(out, f"fed-{partition}-p{ranks}-r0", ranks, seconds, partition=partition)
    _link(out)
    return out


def test_to_dataframe_carries_the_settings_that_tell_runs_apart(skewed):
    df = to_dataframe(str(skewed))
    for column in ("layers", "epochs", "batch_size", "lr", "neg", "classifier", "splits", "partition"):
        assert column in df.columns
    assert sorted(df["partition"]) == ["iid", "iid", "label-skew", "label-skew"]
    assert set(df["layers"]) == {"16,16"}
    assert df.groupby("partition")["speedup"].max().to_dict() == {"iid": 1.6, "label-skew": 1.6}


def _report(capsys, *args):
    code = report.main(list(map(str, args)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_report_csv_is_one_table_of_runs_with_their_settings(skewed, capsys):
    code, out, err = _report(capsys, skewed, "--format", "csv")
    assert code == 0
    table = pd.read_csv(io.StringIO(out))
    assert len(table) == 4 and "record" not in table.columns and "link" not in set(table["run"])
    assert sorted(table["partition"]) == ["iid", "iid", "label-skew", "label-skew"]
    assert "--links" in err  # says what it left out
    code, out, _ = _report(capsys, skewed, "--format", "csv", "--links")
    links_table = pd.read_csv(io.StringIO(out))
    assert code == 0 and list(links_table["size[B]"]) == [8, 1024] and "partition" not in links_table.columns


def test_report_json_and_the_text_tables_settings_column(skewed, capsys):
    code, out, _ = _report(capsys, skewed, "--format", "json")
    rows = json.loads(out)
    assert code == 0 and sorted(r["partition"] for r in rows) == ["iid", "iid", "label-skew", "label-skew"]
    assert all(r["layers"] == "16,16" and r["epochs"] == 1 for r in rows)
    code, out, _ = _report(capsys, skewed, "--format", "json", "--links")
    assert [r["size[B]"] for r in json.loads(out)] == [8, 1024]
    code, out, _ = _report(capsys, skewed)
    lines = out.splitlines()
    assert "settings" in lines[0].split()
    assert sum("partition=label-skew" in line for line in lines) == 2
    assert sum("partition=iid" in line for line in lines) == 2
    assert "link measurements" in out  # text keeps both tables, each titled


def test_only_links_in_csv_needs_links(tmp_path, capsys):
    out = tmp_path / "l.h5"
    _link(out)
    code, stdout, err = _report(capsys, out, "--format", "csv")
    assert code == 1 and stdout == "" and "add --links" in err


def test_plot_legends_tell_apart_series_that_would_read_alike(skewed):
    runs = read_runs(str(skewed))
    for fig in (plot.accuracy_figure(runs), plot.variants_figure(runs), plot.speedup_figure(runs)):
        labels = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        assert any("partition=iid" in t for t in labels) and any("partition=label-skew" in t for t in labels)


def test_links_has_a_results_file_of_its_own():
    assert links.build_parser().parse_args([]).out != Config().out


def test_vs_1xall_is_blank_without_an_all_cores_run(skewed, capsys):
    # every run has 1 thread per rank: no 1-rank run with more threads to compare against
    assert report.main([str(skewed), "--format", "json"]) == 0
    assert {row["speedup vs 1xall"] for row in json.loads(capsys.readouterr().out)} == {None}
    assert report.main([str(skewed)]) == 0
    header, *lines = capsys.readouterr().out.split("\n\n")[0].splitlines()
    column = report.HEADER.index("speedup vs 1xall")  # every cell before it is one word
    assert {line.split()[column] for line in lines} == {"-"}


def test_the_sweep_says_each_runs_seconds_as_it_goes(skewed):
    from pffbench import sweep
    line = sweep.done_line(str(skewed), "fed-iid-p2-r0")
    assert line.startswith("fed-iid-p2-r0 done: 2.50 s training, ") and line.endswith("test accuracy 90.00%")
    assert sweep.done_line(str(skewed), "missing").startswith("missing done (not read back: ")


def test_model_predict_says_what_its_compute_costs_rest_on():
    from pffbench import model
    args = model.build_parser().parse_args(["predict", "--layers", "16,16"])
    line = model.costs_source(args)
    assert line.startswith("compute costs: microbenchmarks of this net on this machine (") and "load" in line
    args = model.build_parser().parse_args(["predict", "--calibrate", "c.h5"])
    assert "c.h5" in model.costs_source(args)


def test_a_speedup_left_out_for_another_commit_says_so(tmp_path, capsys):
    out = tmp_path / "runs.h5"
    _append(out, "p1", 1, 4.0)
    _append(out, "p2", 2, 2.5, attrs={"git_sha": "def"})  # the code moved between the two runs
    code, text, err = _report(capsys, out)
    assert code == 0 and "note: p2 (2 ranks): its 1-rank run differs in git_sha (report --pool" in err
    code, text, err = _report(capsys, out, "--pool")
    assert code == 0 and "differs in" not in err


def test_a_run_split_by_measured_costs_is_compared_with_its_1_rank_run(tmp_path, capsys):
    # --layer-costs changes only which rank holds which layer: at p = 1 there is one block whatever the costs
    out = tmp_path / "runs.h5"
    net = {"variant": "pipeline", "layers": (16, 16, 16)}

    def append(name, ranks, seconds, blocks, **settings):
        _append(out, name, ranks, seconds, attrs={"variant": "pipeline", "layer_blocks": blocks}, **net, **settings)

    append("p1", 1, 4.0, [[0, 3]])
    append("p2-measured", 2, 2.5, [[0, 2], [2, 3]], layer_costs=(1, 1, 2))
    append("p2-measured-again", 2, 2.5, [[0, 2], [2, 3]], layer_costs=(1, 2, 2))  # other costs, the same split
    append("p2-modelled", 2, 3.2, [[0, 1], [1, 3]])
    from pffbench.analysis import analysis
    rows = {row.case.runs[0].name: row for row in analysis.table(read_runs(str(out)))}
    assert set(rows) == {"p1", "p2-measured", "p2-modelled"}  # a case per split
    assert [run.name for run in rows["p2-measured"].case.runs] == ["p2-measured", "p2-measured-again"]
    assert rows["p2-measured"].base is rows["p1"].case and rows["p2-measured"].speedup == pytest.approx(1.6)
    assert rows["p2-modelled"].base is rows["p1"].case and rows["p2-modelled"].speedup == pytest.approx(1.25)

"""Every `python -m pffbench.X` command on input that is not what it reads (an HDF5 file of someone
else's, a text file, a folder): one `...: error: ...` line and exit 2, never a traceback; and with its
stdout a pipe nobody reads any more (`report FILE | head`): no BrokenPipeError, and a training run is
still recorded (pffbench/launch/command.py)."""
import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from pffbench import bench, model, paper_bench, plot, report, results, sweep

from helpers import mpirun

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--dataset", "synthetic", "--layers", "16,16", "--epochs", "1", "--batch-size", "100"]

# each command's main (what `python -m` runs), in this process; {bad}: the file given, {tmp}: a scratch folder
COMMANDS = {
    "model validate": (model.main, ["validate", "{bad}"]),
    "model plot": (model.main, ["plot", "{bad}", "-o", "{tmp}/plots"]),
    "model predict --calibrate": (model.main, ["predict", "--calibrate", "{bad}"]),
    "report": (report.main, ["{bad}"]),
    "plot": (plot.main, ["{bad}", "-o", "{tmp}/plots"]),
    "sweep --out": (sweep.main, ["--ranks", "1", "--repeats", "1", "--out", "{bad}", "--", *TINY]),
    "bench --out": (bench.main, ["--epochs", "1", "--out", "{bad}"]),
    "paper_bench --out": (paper_bench.main, ["--only", "1", "--epochs", "1", "--out", "{bad}"]),
    "paper_bench --report": (paper_bench.main, ["--report", "--out", "{bad}"]),
}


def python_m(argv, timeout=120, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", *argv], env=env, cwd=ROOT, timeout=timeout, text=True, **kwargs)


@pytest.fixture(params=["foreign-hdf5", "text", "folder"])
def bad_file(request, tmp_path):
    path = tmp_path / "input.h5"
    if request.param == "foreign-hdf5":  # an HDF5 file of another program's
        with h5py.File(path, "w") as f:
            f["x"] = [1, 2, 3]
            f.attrs["creator"] = "not pffbench"
    elif request.param == "text":
        path.write_text("run,accuracy\n1,0.9\n")
    else:
        path.mkdir()
    return path


def assert_one_line_exit_2(done):
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(("pffbench", "python -m pffbench")), done.stderr
    assert done.returncode == 2, done.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_a_file_it_cannot_read_in_one_line(command, bad_file, tmp_path, capsys):
    main, args = COMMANDS[command]
    code = main([arg.format(bad=bad_file, tmp=tmp_path) for arg in args])  # raised before: a traceback
    done = subprocess.CompletedProcess(args, code, "", capsys.readouterr().err)
    assert_one_line_exit_2(done)
    assert str(bad_file) in done.stderr


# run.main ends its own way: each rank decides, and a run whose reader left must still train and record;
# __main__ (pffbench COMMAND) only dispatches to the commands' own mains, each under the wrapper
OWN_ENDING = {"pffbench.run", "pffbench.__main__"}


def command_modules() -> list[str]:
    """Every module of pffbench that defines a top-level main (a `python -m` command), found in the source, so
    that a command added or moved (probes/, ...) is not missed."""
    package = ROOT / "pffbench"
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


@pytest.mark.parametrize("module", command_modules())
def test_every_command_main_runs_under_the_wrapper(module):
    main = importlib.import_module(module).main
    if module in OWN_ENDING:
        assert not hasattr(main, "__wrapped__")
    else:
        assert getattr(main, "__module__", None) == module and hasattr(main, "__wrapped__"), \
            f"{module}.main is not decorated with @command (pffbench/launch/command.py)"


def test_run_refuses_a_foreign_out_file_in_one_line(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["x"] = [1]
    done = python_m(["pffbench.run", *TINY, "--out", str(path)], capture_output=True)
    assert_one_line_exit_2(done)


def test_links_refuses_a_foreign_out_file_in_one_line(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["x"] = [1]
    done = mpirun(2, "-m", "pffbench.links", "--out", str(path), timeout=120)
    assert "Traceback" not in done.stderr and done.returncode == 2, done.stderr
    assert "not a pffbench results file" in done.stderr


def closed_pipe_run(argv, timeout=180):
    """The command with its stdout a pipe whose reader has already gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        return python_m(argv, timeout=timeout, stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory):
    """A run whose reader left before it printed a line; (its results file, the process)."""
    out = tmp_path_factory.mktemp("pipe") / "runs.h5"
    return out, closed_pipe_run(["pffbench.run", *TINY, "--epochs", "2", "--out", str(out)])


def test_a_run_whose_reader_left_trains_and_is_recorded(piped_run):
    out, done = piped_run
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    (run,) = results.read_runs(str(out))
    assert run.attrs["status"] == "complete"


@pytest.mark.parametrize("argv", [["pffbench.report", "{out}"], ["pffbench.report", "{out}", "--format", "csv"],
                                  ["pffbench.model", "links"]])
def test_a_closed_pipe_ends_a_command_quietly(argv, piped_run):
    out, _ = piped_run
    done = closed_pipe_run([arg.format(out=out) for arg in argv])
    assert done.stderr == "", done.stderr
    assert done.returncode == 141

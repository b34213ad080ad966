"""Issue 23 point 5: one command, `pffbench COMMAND` and `python -m pffbench COMMAND`."""
import configparser
import importlib
import importlib.machinery
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import pffbench.__main__ as command

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ["run", "sweep", "report", "plot", "model", "links", "data", "bench", "paper_bench"]


def test_help_lists_every_command_with_one_line(capsys):
    assert command.main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.split("commands:\n")[1].split("\n\n")[0].splitlines()]
    assert listed[:len(EXPECTED)] == EXPECTED
    for name in EXPECTED:  # each with a summary of its own
        line = next(line for line in out.splitlines() if line.split()[:1] == [name])
        assert len(line.split()) > 3


@pytest.mark.parametrize("typo,meant", [("rn", "run"), ("reprot", "report"), ("sweeep", "sweep"), ("plto", "plot")])
def test_an_unknown_command_gets_one_line_with_did_you_mean_and_exit_2(typo, meant, capsys):
    assert command.main([typo, "--epochs", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"pffbench: error: unknown command '{typo}'; did you mean '{meant}'?\n"


def test_no_command_is_a_usage_error(capsys):
    assert command.main([]) == 2
    assert "commands:" in capsys.readouterr().err


def test_the_arguments_after_the_command_reach_its_main_unchanged(monkeypatch):
    seen = []
    fake = types.ModuleType("pffbench.fake_cmd")
    fake.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "pffbench.fake_cmd", fake)
    monkeypatch.setitem(command.COMMANDS, "fake", ("fake_cmd", "a test double"))
    assert command.main(["fake", "--layers", "784,10", "--", "x"]) == 7
    assert seen == [["--layers", "784,10", "--", "x"]]


def test_tune_is_a_command_only_where_its_module_exists(monkeypatch):
    if importlib.util.find_spec("pffbench.tune") is None:
        assert "tune" not in command.commands()
        fake = types.ModuleType("pffbench.tune")
        fake.__spec__ = importlib.machinery.ModuleSpec("pffbench.tune", None)
        fake.main = lambda argv: 0
        monkeypatch.setitem(sys.modules, "pffbench.tune", fake)
    assert "tune" in command.commands()
    assert "\n  tune " in command.usage(command.commands())


def _python(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_python_m_pffbench_is_the_same_as_python_m_the_module(tmp_path):
    missing = str(tmp_path / "none.h5")
    one, other = _python("-m", "pffbench", "report", missing), _python("-m", "pffbench.report", missing)
    assert (one.returncode, one.stdout, one.stderr) == (other.returncode, other.stdout, other.stderr)
    assert one.returncode == 2 and one.stderr.count("\n") == 1
    helped = _python("-m", "pffbench", "run", "--help")
    assert helped.returncode == 0 and "--layers" in helped.stdout


def test_setup_cfg_installs_the_pffbench_command_and_keeps_the_old_scripts():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = dict(line.split(" = ") for line in cfg["options.entry_points"]["console_scripts"].split("\n") if line)
    assert scripts["pffbench"] == "pffbench.__main__:cli"
    assert {"pffbench-run", "pffbench-data"} <= set(scripts)
    for target in scripts.values():  # every script names a function that exists
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))


# the commands that run in one process (links and the link probe need 2 ranks: tests/jobs/test_links.py)
ONE_PROCESS = ["model", "tune", "report", "plot", "bench", "paper_bench", "sweep", "data", "probes.layer_costs",
               "probes.library_overhead"]


@pytest.mark.parametrize("name", ONE_PROCESS)
def test_a_command_says_every_error_under_its_own_name(name, capsys):
    """A bad flag (argparse's error) and the command's own errors share one prefix, pffbench.NAME: bench
    once said "python -m pffbench.bench: error:" for one and "pffbench.bench: error:" for the other, tune and
    model "pffbench: error:" for theirs."""
    main = importlib.import_module(f"pffbench.{name}").main
    argv = {"model": ["predict"], "tune": ["--target-accuracy", "0.9"], "report": ["runs.h5"], "plot": ["runs.h5"],
            "data": ["check", "mnist"]}.get(name, []) + ["--no-such-flag"]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"pffbench.{name}: error: ") and "--no-such-flag" in err[0], err


@pytest.mark.parametrize("name,argv,needle", [("tune", ["--target-accuracy", "0.9", "--ranks", "0"], "--ranks"),
                                              ("model", ["predict", "--ranks", "0"], "0")])
def test_a_commands_own_check_says_it_under_the_same_name(name, argv, needle, capsys):
    assert importlib.import_module(f"pffbench.{name}").main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"pffbench.{name}: error: ") and needle in err[0], err


def test_a_launcher_flag_given_to_a_command_is_answered_with_that_commands_launch_line(capsys):
    from pffbench import bench
    assert bench.main(["-n", "4"]) == 2
    err = capsys.readouterr().err
    assert "mpiexec -n 4 python -m pffbench.bench ..." in err and "pffbench.run" not in err, err

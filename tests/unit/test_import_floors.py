"""tools/import_floors.py on the package: every folder imports only folders of lower floors and no circle of
imports crosses folders (issue 21).  The tool itself is checked on a small made-up package first, so a pass
on pffbench means the graph is clean, not that the tool sees nothing."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("import_floors", ROOT / "tools" / "import_floors.py")
import_floors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_floors)


def _package(tmp_path, files: dict[str, str]) -> Path:
    package = tmp_path / "pffbench"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_the_tool_sees_a_circle_across_folders_and_an_import_back_up(tmp_path):
    package = _package(tmp_path, {
        "core/__init__.py": "", "core/config.py": "from ..data import DATASETS\n",
        "data.py": "from .core import config\nDATASETS = ()\n",
        "store/__init__.py": "", "store/reader.py": "def f():\n    from ..analysis import frame\n",
        "analysis/__init__.py": "", "analysis/frame.py": "import numpy\n",
        "ff/__init__.py": "", "ff/layer.py": "from . import inputs\n", "ff/inputs.py": "from .layer import x\n"})
    figures = import_floors.analyse(package)
    assert figures["circles_across_folders"] == [["pffbench.core.config", "pffbench.data"]]
    assert ("pffbench.store.reader", "pffbench.analysis.frame", "folder analysis is not below store") \
        in figures["against_folders"]
    assert ["pffbench.ff.inputs", "pffbench.ff.layer"] in figures["circles"]  # a circle inside one folder ...
    assert not any(e[0].startswith("pffbench.ff") for e in figures["against_folders"])  # ... is not against floors
    assert figures["floors"] == 2  # a circle stands on one floor (ff's on 0); store.reader above analysis.frame


def test_the_tool_counts_floors_by_the_longest_path(tmp_path):
    package = _package(tmp_path, {"core/__init__.py": "", "core/a.py": "", "core/b.py": "from . import a\n",
                                  "run.py": "from .core import a, b\n"})
    figures = import_floors.analyse(package)
    assert figures["floors"] == 3 and figures["floor"]["pffbench.run"] == 2
    assert not figures["back_up"] and not figures["circles"]


def test_pffbench_imports_only_below_itself():
    figures = import_floors.analyse(ROOT / "pffbench")
    assert figures["circles_across_folders"] == []
    assert figures["against_folders"] == []

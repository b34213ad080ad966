"""The import graph of pffbench, drawn as floors: which module imports which, and which imports run back up.

    python tools/import_floors.py [PACKAGE_DIR]      (default: the pffbench folder beside tools/)

Reads every ``*.py`` under the package with ``ast`` (nothing is imported or run), so an import inside a function
counts like one at the top of a file: it is still a dependency.  ``from X import name`` counts as an import of the
submodule ``X.name`` where that is a module, otherwise of ``X``.

It prints
- floors: a module's floor is 0 when it imports nothing of the package, else one more than the highest floor it
  imports (the longest import path below it); a circle (strongly connected component) stands on one floor;
- circles: every strongly connected component of two or more modules, marked "across folders" when its modules
  sit in different folders;
- imports back up: every import of a module on the same circle (one of them runs back up) and every import from
  one folder into a folder that ``FOLDER_FLOORS`` below declares higher or level (folders of one level do not
  know each other).

Exit status 1 when there is a circle across folders or an import against the declared folder floors, 0 otherwise;
tests/unit/test_import_floors.py runs it on the package.
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

# The declared floors of pffbench's folders, ground floor first.  A folder may import only its own files and the
# folders of lower floors.  "" is the package's own top-level modules: the commands (run, sweep, report, ...) and
# the public faces (results, presets); "__init__" is pffbench/__init__.py, which imports nothing.  "learn" (the local
# learning rules) is pure math like ff, one floor up because its rules are built of ff's layers and heads; the
# schedules run them.
FOLDER_FLOORS: list[set[str]] = [
    {"__init__", "core"},
    {"ff", "comm", "instrument", "store"},
    {"datasets", "reliability", "learn"},
    {"launch", "schedules"},
    {"probes", "analysis"},
    {"perfmodel"},
    {""},
]


def modules(package: Path) -> dict[str, Path]:
    """Every module of the package by dotted name (``pffbench.core.config``); a folder's ``__init__.py`` is the
    folder's name."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in the file)."""

    def known(name: str) -> str | None:  # the longest prefix of name that is a module of the package
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [known(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: level 1 is this package, 2 its parent, ...
                    parts = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else known(base)
                           for alias in node.names]
            edges[name].update(t for t in targets if t and t != name)
    return edges


def circles(mods: dict[str, Path], edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan), each sorted; single modules included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            found.append(sorted(component))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(mods):
        if v not in index:
            visit(v)
    return found


def folder(module: str) -> str:
    """The module's folder below the package: "core" for pffbench.core.config, "" for pffbench.run,
    "__init__" for pffbench itself."""
    parts = module.split(".")[1:]
    if not parts:
        return "__init__"
    return parts[0] if len(parts) > 1 or parts[0] in _FOLDERS else ""


_FOLDERS: set[str] = set()  # the package's sub-folders, filled by analyse


def analyse(package: Path) -> dict:
    """The graph's figures: floors, circles, imports back up (see the module docstring)."""
    mods = modules(package)
    _FOLDERS.clear()
    _FOLDERS.update(p.name for p in package.iterdir() if (p / "__init__.py").exists())
    edges = imports(mods)
    components = circles(mods, edges)
    component_of = {m: i for i, c in enumerate(components) for m in c}
    floor_of_component: dict[int, int] = {}
    for i, component in enumerate(components):  # Tarjan emits a component after everything it imports
        below = [floor_of_component[component_of[t]] for m in component for t in edges.get(m, ())
                 if component_of[t] != i]
        floor_of_component[i] = 1 + max(below) if below else 0
    level = {name: n for n, names in enumerate(FOLDER_FLOORS) for name in names}
    back_up = []
    for source in sorted(edges):
        for target in sorted(edges[source]):
            if component_of[source] == component_of[target]:
                back_up.append((source, target, "a circle"))
                continue
            a, b = folder(source), folder(target)
            if a != b and (a not in level or b not in level):
                back_up.append((source, target, f"folder {a or b!r} has no declared floor"))
            elif a != b and level[b] >= level[a]:
                back_up.append((source, target, f"folder {b or '(top)'} is not below {a or '(top)'}"))
    rings = [c for c in components if len(c) > 1]
    return {"modules": len(mods),
            "floors": 1 + max(floor_of_component.values(), default=-1),
            "floor": {m: floor_of_component[component_of[m]] for m in mods},
            "circles": rings,
            "circles_across_folders": [c for c in rings if len({folder(m) for m in c}) > 1],
            "back_up": back_up,
            "against_folders": [e for e in back_up if e[2] != "a circle"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", nargs="?", default=str(Path(__file__).resolve().parent.parent / "pffbench"))
    parser.add_argument("--floors", action="store_true", help="also list every module by floor")
    args = parser.parse_args(argv)
    figures = analyse(Path(args.package))
    print(f"{figures['modules']} modules on {figures['floors']} floors")
    if args.floors:
        for n in range(figures["floors"]):
            print(f"  floor {n}: " + " ".join(sorted(m.removeprefix("pffbench.") or "pffbench"
                                                       for m, f in figures["floor"].items() if f == n)))
    print(f"{len(figures['back_up'])} imports back up "
          f"({len(figures['against_folders'])} against the declared folder floors)")
    for source, target, why in figures["back_up"]:
        print(f"  {source} -> {target}: {why}")
    print(f"{len(figures['circles'])} circles, {len(figures['circles_across_folders'])} across folders")
    for ring in figures["circles"]:
        across = " (across folders)" if ring in figures["circles_across_folders"] else ""
        print("  " + " <-> ".join(ring) + across)
    return 1 if figures["circles_across_folders"] or figures["against_folders"] else 0


if __name__ == "__main__":
    sys.exit(main())

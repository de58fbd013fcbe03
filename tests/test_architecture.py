"""The shape of the package: no import cycle, and the operations layer stays headless.

- Walks every module's import-time imports (module level, outside `if TYPE_CHECKING:`) and looks
  for a cycle among the package's own modules.
- In a fresh process, importing `napari_clipmed.api` and every `napari_clipmed.ops` module loads
  nothing from `napari_clipmed._widgets`, and the `ops` modules load neither Qt nor napari.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import napari_clipmed

ROOT = Path(napari_clipmed.__file__).parent
PACKAGE = "napari_clipmed"


def _module_files() -> dict[str, Path]:
    files = {PACKAGE: ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix=PACKAGE + "."):
        rel = info.name.split(".")[1:]
        path = ROOT.joinpath(*rel)
        files[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_time_imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `module` imports when it is imported (function bodies and TYPE_CHECKING skipped)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.Try,)):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)

    visit(tree.body)
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    files = _module_files()
    known = set(files)
    return {module: _import_time_imports(module, path, known) for module, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_real_imports() -> None:
    graph = import_graph()
    assert "napari_clipmed.models.model" in graph["napari_clipmed.models.encode"]
    assert "napari_clipmed.models.model" in graph["napari_clipmed.models.loader"]
    assert "napari_clipmed.ops.geometry" in graph["napari_clipmed.ops.zeroshot"]


def test_no_import_cycle_in_the_package() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


HEADLESS = """
import importlib, json, pkgutil, sys
import napari_clipmed.ops as ops
names = ["napari_clipmed.api"] + sorted(i.name for i in pkgutil.iter_modules(ops.__path__, "napari_clipmed.ops."))
for name in names:
    importlib.import_module(name)
widgets = sorted(m for m in sys.modules if m.startswith("napari_clipmed._widgets"))
gui = sorted(m for m in sys.modules if m.split(".")[0] in ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6",
                                                           "napari", "magicgui", "superqt", "vispy"))
print(json.dumps({"names": names, "widgets": widgets, "gui": gui}))
"""


def test_api_and_ops_import_nothing_from_widgets_and_ops_no_gui() -> None:
    proc = subprocess.run([sys.executable, "-c", HEADLESS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"napari_clipmed.ops.ct_montage", "napari_clipmed.ops.zeroshot", "napari_clipmed.ops.retrieval",
            "napari_clipmed.ops.corrupt"} <= set(report["names"])
    assert report["widgets"] == []
    assert report["gui"] == [], f"api/ops imports pulled in GUI packages: {report['gui'][:10]}"

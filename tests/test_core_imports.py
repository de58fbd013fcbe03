"""Core modules never pull in Qt or napari: importing all of them in a fresh process leaves those out.

Only the GUI layer (`_widgets`, `_reader`, `_sample_data`, `layers`, `api`, `commands.gui`) may touch napari;
everything else must work in a headless batch job. Checked in a subprocess, since this test
process may already have imported napari for other tests.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import napari_clipmed

GUI_MODULES = ("napari_clipmed._widgets", "napari_clipmed._reader", "napari_clipmed._sample_data", "napari_clipmed.layers",
               "napari_clipmed.api", "napari_clipmed.commands.gui")
FORBIDDEN = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "vispy")


def core_modules() -> list[str]:
    root = Path(napari_clipmed.__file__).parent
    names = ["napari_clipmed"]
    for info in pkgutil.walk_packages([str(root)], prefix="napari_clipmed."):
        if not any(info.name == gui or info.name.startswith(gui + ".") for gui in GUI_MODULES):
            names.append(info.name)
    return sorted(names)


SCRIPT = """
import importlib, json, sys
names = json.loads(sys.argv[1])
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as err:
        failed[name] = f"{type(err).__name__}: {err}"
try:  # registering every subcommand (the GUI one included) must stay light too
    from napari_clipmed.cli import build_parser
    build_parser()
except Exception as err:
    failed["cli.build_parser()"] = f"{type(err).__name__}: {err}"
forbidden = json.loads(sys.argv[2])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
print(json.dumps({"failed": failed, "loaded": loaded}))
"""


def test_core_modules_import_without_qt_or_napari() -> None:
    names = core_modules()
    assert "napari_clipmed.models.loader" in names and "napari_clipmed._reader" not in names
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(names), json.dumps(FORBIDDEN)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}
    assert report["loaded"] == [], f"core imports pulled in GUI packages: {report['loaded'][:10]}"

"""The napari manifest: schema-valid for npe2, every `python_name` imports, the samples it names are small."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import napari_clipmed

PACKAGE = Path(napari_clipmed.__file__).parent
MANIFEST = PACKAGE / "napari.yaml"
COMMANDS = yaml.safe_load(MANIFEST.read_text())["contributions"]["commands"]


def test_npe2_validates_the_manifest() -> None:
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    assert manifest.name == "napari-clipmed"
    ids = {cmd.id for cmd in manifest.contributions.commands}
    used = [w.command for w in manifest.contributions.widgets]
    used += [r.command for r in manifest.contributions.readers]
    used += [s.command for s in manifest.contributions.sample_data]
    assert set(used) <= ids


def test_npe2_cli_validate() -> None:
    npe2 = Path(sys.executable).with_name("npe2")
    proc = subprocess.run([str(npe2), "validate", str(MANIFEST)], capture_output=True, text=True, encoding="utf-8",
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_installed_distribution_points_at_this_manifest() -> None:
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="napari.manifest") if ep.name == "napari-clipmed"]
    assert [ep.value for ep in eps] == ["napari_clipmed:napari.yaml"]


@pytest.mark.parametrize("command", COMMANDS, ids=[c["id"] for c in COMMANDS])
def test_python_name_imports(command: dict) -> None:
    module_name, _, attr = command["python_name"].partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attr)), command["python_name"]


def test_sample_files_exist_and_package_data_is_small() -> None:
    from napari_clipmed import _sample_data

    files = [_sample_data.CHEST_CT_FILE, _sample_data.HE_CARCINOMA_FILE, _sample_data.HE_INK_FILE]
    assert all(f.is_file() for f in files)
    total = sum(f.stat().st_size for f in (PACKAGE / "data").rglob("*") if f.is_file())
    assert total <= 5_000_000, f"package data is {total / 1e6:.1f} MB"

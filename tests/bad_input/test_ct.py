"""Bad input to `ct-montage`, `ct-eval` and the CT readers: one line, exit code 2, nothing written."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_clipmed.ct.io import CTVolume, read_ct
from napari_clipmed.ct.patches import PatchConfig
from napari_clipmed.ct.pipeline import CTMontageConfig, run_ct_montage
from napari_clipmed.errors import InputError

from .conftest import CT, one_line_error, tree

CHEST = CT / "chest_ct.nii.gz"
DICOM = CT / "abdomen_ct_dicom"


def montage(cli, tmp_path: Path, *extra: object, volume: object = CHEST, out: object = None):
    return cli("ct-montage", volume, "--out", out or tmp_path / "out", "--model", "no-such-model", "--quiet", *extra)


@pytest.mark.parametrize("where", ["file", "under_file", "proc"])
def test_bad_output_folder_is_refused_before_anything(cli, tmp_path: Path, a_file: Path, where: str) -> None:
    out = {"file": a_file, "under_file": a_file / "sub", "proc": Path("/proc/clipmed-out")}[where]
    # an unknown model would fail later: the output check comes first
    code, _, err = montage(cli, tmp_path, out=out)
    assert code == 2
    one_line_error(err, "ct-montage", str(out))
    assert a_file.read_text() == "not a folder" and not Path("/proc/clipmed-out").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--size-mm", "inf"], "size_mm must be a finite number"),
        (["--stride-mm", "nan"], "stride_mm must be a finite number"),
        (["--axes", "axial,axial"], "each slice axis may be given once"),
        (["--classes", ",,,"], "at least two classes"),
        (["--k", "0"], "k (patches in the montage) must be at least 1"),
    ],
)
def test_bad_values_are_one_line_before_the_model(cli, tmp_path: Path, extra: list[str], needle: str) -> None:
    code, _, err = montage(cli, tmp_path, *extra)
    assert code == 2
    one_line_error(err, "ct-montage", needle)
    assert tree(tmp_path / "out") == []


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ([1, 2, 3], "must hold a JSON object"),
        ({"k": "abc"}, "k (patches in the montage) must be at least 1 (a whole number)"),
        ({"patch": {"size_mm": "big"}}, "size_mm must be a finite number"),
        ({"patch": 5}, "must be a mapping"),
        ({"class_prompts": {"ILD": 3}}, "wrong type"),
    ],
)
def test_config_json_of_wrong_types(cli, tmp_path: Path, config: object, needle: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    code, _, err = montage(cli, tmp_path, "--config", path)
    assert code == 2
    one_line_error(err, "ct-montage", needle)
    assert tree(tmp_path / "out") == []


def test_config_from_dict_checks_types() -> None:
    with pytest.raises(InputError, match=r"k \(patches in the montage\) must be at least 1 \(a whole number\)"):
        CTMontageConfig.from_dict({"k": "abc"})
    with pytest.raises(InputError, match="min_distance_mm"):
        CTMontageConfig.from_dict({"min_distance_mm": float("inf")})
    assert CTMontageConfig.from_dict(CTMontageConfig().to_dict()) == CTMontageConfig()


def test_infinite_patch_size_through_the_python_call() -> None:
    volume = CTVolume.from_array(np.full((4, 32, 32), -1000, np.int16), spacing=(2.0, 1.0, 1.0))
    with pytest.raises(InputError, match="size_mm must be a finite number"):
        run_ct_montage(volume, object(), CTMontageConfig(patch=PatchConfig(size_mm=float("inf"))))


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_nifti_is_refused_naming_the_file(cli, tmp_path: Path, gz: bool) -> None:
    raw = gzip.decompress(CHEST.read_bytes())
    path = tmp_path / ("half.nii.gz" if gz else "half.nii")
    path.write_bytes(CHEST.read_bytes()[: len(CHEST.read_bytes()) // 2] if gz else raw[: len(raw) // 2])
    with pytest.raises(InputError, match="half.nii"):
        read_ct(path)
    code, _, err = montage(cli, tmp_path, volume=path)
    assert code == 2
    one_line_error(err, "ct-montage", "truncated", path.name)
    assert tree(tmp_path / "out") == []
    whole = tmp_path / "whole.nii"
    whole.write_bytes(raw)
    assert read_ct(whole).shape == read_ct(CHEST).shape  # a complete file still reads


def test_non_finite_voxels_are_refused(tmp_path: Path) -> None:
    array = np.full((4, 16, 16), -1000.0, np.float32)
    array[1, 2, 3] = np.nan
    array[2, 2, 3] = np.inf
    with pytest.raises(InputError, match="2 NaN or infinite"):
        CTVolume.from_array(array, spacing=(1.0, 1.0, 1.0))
    path = tmp_path / "nan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 16, 16), np.nan, np.float32)), str(path))
    with pytest.raises(InputError, match=r"nan.nii.gz holds 1,024 NaN .*\(all of them\)"):
        read_ct(path)


def _dicom_copy(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = tmp_path / "dicom"
    shutil.copytree(DICOM, folder)
    for p in folder.iterdir():
        p.chmod(0o644)
    folder.chmod(0o755)
    reader = sitk.ImageSeriesReader()
    return folder, list(reader.GetGDCMSeriesFileNames(str(folder), reader.GetGDCMSeriesIDs(str(folder))[0]))


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path: Path) -> None:
    folder, files = _dicom_copy(tmp_path)
    Path(files[10]).unlink()
    with pytest.raises(InputError, match=r"not evenly spaced: 4.00 mm .* 2.00 mm elsewhere \(about 1 slice"):
        read_ct(folder)
    assert read_ct(DICOM).spacing[0] == pytest.approx(2.0)  # the whole series still reads


def test_dicom_series_with_an_unreadable_slice_is_refused(tmp_path: Path) -> None:
    folder, files = _dicom_copy(tmp_path)
    Path(files[7]).write_bytes(Path(files[7]).read_bytes()[:200])
    with pytest.raises(InputError, match="(not evenly spaced|cannot be read)"):
        read_ct(folder)


def test_two_series_in_one_folder_choose_one_with_series(cli, tmp_path: Path) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    for i, src in enumerate(sorted(DICOM.iterdir())[:4]):
        shutil.copy(src, folder / f"a{i}.dcm")
    image = sitk.GetImageFromArray(np.full((3, 16, 16), -1000, np.int16))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(3):
        sl = image[:, :, z]
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.99.1")
        sl.SetMetaData("0008|0060", "CT")
        sl.SetMetaData("0020|0032", f"0\\0\\{z * 2.0}")
        sl.SetMetaData("0020|0013", str(z))
        writer.SetFileName(str(folder / f"b{z}.dcm"))
        writer.Execute(sl)
    code, _, err = montage(cli, tmp_path, volume=folder)
    assert code == 2
    one_line_error(err, "ct-montage", "2 DICOM series", "--series")
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    assert read_ct(folder, series_id="1.2.826.0.1.3680043.2.1125.99.1").shape == (3, 16, 16)
    code, _, err = montage(cli, tmp_path, "--series", "no.such.uid", volume=folder)
    assert code == 2 and "is not in" in err and ids[0] in err


def test_from_array_with_a_negative_spacing_says_which_axis() -> None:
    array = np.full((4, 16, 16), -1000, np.int16)
    with pytest.raises(InputError, match=r"check the z value"):
        CTVolume.from_array(array, spacing=(-3, 3, 3))
    assert CTVolume.from_array(array, spacing=(3, 3, 3)).spacing == (3.0, 3.0, 3.0)


def _cohort(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "cohort.csv"
    path.write_text("path,label\n" + "".join(f"{r}\n" for r in rows), encoding="utf-8")
    return path


def test_ct_eval_checks_positive_bootstrap_and_rows_before_any_case(cli, tmp_path: Path) -> None:
    cohort = _cohort(tmp_path, [f"{CHEST},1", f"{CHEST.parent / 'abdomen_ct_dicom'},0"])
    out = tmp_path / "eval"
    code, _, err = cli("ct-eval", cohort, "--out", out, "--model", "no-such-model", "--positive", "fibrosis")
    assert code == 2
    one_line_error(err, "ct-eval", "'fibrosis' is not one of the classes", "ILD")
    code, _, err = cli("ct-eval", cohort, "--out", out, "--model", "no-such-model", "--bootstrap", "0")
    assert code == 2
    one_line_error(err, "ct-eval", "--bootstrap needs at least 1")
    empty = _cohort(tmp_path, [])
    code, _, err = cli("ct-eval", empty, "--out", out, "--model", "no-such-model")
    assert code == 2 and "at least one row" in err
    twice = _cohort(tmp_path, [f"{CHEST},1", f"{CHEST},0", f"{DICOM},0"])
    code, _, err = cli("ct-eval", twice, "--out", out, "--model", "no-such-model")
    assert code == 2
    one_line_error(err, "ct-eval", "more than once", "line 3")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(f"path,label\n{CHEST},fibrosé\n".encode("latin-1"))
    code, _, err = cli("ct-eval", latin, "--out", out, "--model", "no-such-model")
    assert code == 2
    one_line_error(err, "ct-eval", "not UTF-8")
    assert tree(out) == []

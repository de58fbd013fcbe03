"""Tile-set loading (ImageFolder vs torchvision's ImageFolder, manifests) and tolerant image reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import tifffile
from torchvision.datasets import ImageFolder

from napari_clipmed.datasets import load_imagefolder, load_images, load_manifest, load_tileset, read_images
from napari_clipmed.errors import InputError


def _png(path: Path, value: int, mode: str = "RGB") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((8, 10, 3), value, np.uint8)
    arr[0, 0] = (value + 1) % 256
    Image.fromarray(arr).convert(mode).save(path)
    return arr


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "tiles"
    _png(root / "tumour" / "b.png", 10)
    _png(root / "tumour" / "a.png", 20)
    _png(root / "tumour" / "nested" / "c.jpg", 30)
    _png(root / "stroma" / "x.png", 40)
    (root / "stroma" / "notes.txt").write_text("ignored")
    (root / "stroma" / ".hidden.png").write_bytes(b"")
    return root


def test_imagefolder_matches_torchvision(folder: Path) -> None:
    ts = load_imagefolder(folder)
    ref = ImageFolder(str(folder))
    assert ts.class_names == ref.classes == ["stroma", "tumour"]
    visible = [(p, c) for p, c in ref.samples if not Path(p).name.startswith(".")]  # we skip hidden files
    assert [(str(p), int(c)) for p, c in zip(ts.paths, ts.labels)] == visible
    assert ts.counts() == {"stroma": 1, "tumour": 3}
    assert list(ts.label_names) == ["stroma", "tumour", "tumour", "tumour"]
    assert load_tileset(folder).paths == ts.paths


def test_empty_class_folder_is_named(folder: Path) -> None:
    (folder / "necrosis").mkdir()
    (folder / "necrosis" / "readme.txt").write_text("no images")
    with pytest.raises(InputError, match="without images.*necrosis"):
        load_imagefolder(folder)


def test_folder_without_class_folders(tmp_path: Path) -> None:
    _png(tmp_path / "flat" / "a.png", 1)
    with pytest.raises(InputError, match="holds 1 images directly"):
        load_imagefolder(tmp_path / "flat")
    with pytest.raises(InputError, match="does not exist"):
        load_tileset(tmp_path / "nowhere")


def test_one_class_is_refused_for_classification(tmp_path: Path) -> None:
    _png(tmp_path / "one" / "tumour" / "a.png", 1)
    ts = load_imagefolder(tmp_path / "one")
    with pytest.raises(InputError, match="zero-shot needs at least 2 classes.*has 1 \\(tumour\\)"):
        ts.require_classes(2, "zero-shot")


def test_manifest_relative_paths_and_split(folder: Path) -> None:
    csv = folder / "manifest.csv"
    csv.write_text("Path,Label,split,extra\ntumour/a.png,tumour,test,1\nstroma/x.png,stroma,train,2\n"
                   f"{folder / 'tumour' / 'b.png'},tumour,test,3\n")
    ts = load_tileset(csv)
    assert ts.class_names == ["stroma", "tumour"] and list(ts.labels) == [1, 0, 1]
    assert ts.paths[0] == folder / "tumour" / "a.png" and ts.paths[2].is_absolute()
    test = ts.select_split("test")
    assert len(test) == 2 and test.split == ["test", "test"] and test.class_names == ts.class_names
    assert list(ts.to_frame().columns) == ["path", "label", "split"]
    with pytest.raises(InputError, match="no tile is in split 'val'"):
        ts.select_split("val")


def test_manifest_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.png,x\n")
    with pytest.raises(InputError, match="lacks column\\(s\\) path, label"):
        load_manifest(bad)
    bad.write_text("path,label\n")
    with pytest.raises(InputError, match="lists no images"):
        load_manifest(bad)
    bad.write_text("path,label\na.png,\n")
    with pytest.raises(InputError, match="line 2: empty path or label"):
        load_manifest(bad)


def test_read_images_skips_and_reports_unreadable(folder: Path) -> None:
    broken = folder / "tumour" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    grey = folder / "stroma" / "grey.png"
    rgba = folder / "stroma" / "rgba.png"
    _png(grey, 50, "L")
    _png(rgba, 60, "RGBA")
    tif = folder / "stroma" / "t.tif"
    tif_arr = np.arange(8 * 10 * 3, dtype=np.uint8).reshape(8, 10, 3)
    tifffile.imwrite(tif, tif_arr)
    paths = [folder / "tumour" / "a.png", broken, grey, folder / "missing.png", rgba, tif]
    with pytest.warns(UserWarning, match="skipped 2 unreadable image file\\(s\\): .*broken.png, .*missing.png"):
        res = read_images(paths)
    assert list(res.indices) == [0, 2, 4, 5]
    assert [p for p, _ in res.failed] == [str(broken), str(folder / "missing.png")]
    assert all(im.shape == (8, 10, 3) and im.dtype == np.uint8 for im in res.images)
    np.testing.assert_array_equal(res.images[0], np.asarray(Image.open(paths[0]).convert("RGB")))
    np.testing.assert_array_equal(res.images[3], tif_arr)
    assert res.images[1][1, 1].tolist() == [50, 50, 50]
    assert list(res.failed_frame().columns) == ["path", "reason"]


def test_subset_keeps_classes(folder: Path) -> None:
    ts = load_imagefolder(folder)
    sub = ts.subset(np.array([False, True, False, True]))
    assert len(sub) == 2 and sub.class_names == ts.class_names and list(sub.labels) == [1, 1]


def test_load_images_tells_labelled_from_unlabelled(folder: Path, tmp_path: Path) -> None:
    ts, labelled = load_images(folder)
    assert labelled and ts.class_names == ["stroma", "tumour"]
    flat, labelled = load_images(folder / "tumour")  # images directly inside: unlabelled
    assert not labelled and [p.name for p in flat.paths] == ["a.png", "b.png"] and flat.class_names == [""]
    one, labelled = load_images(folder / "stroma" / "x.png")
    assert not labelled and one.paths == [folder / "stroma" / "x.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        load_images(tmp_path / "empty")

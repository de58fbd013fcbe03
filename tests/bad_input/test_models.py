"""Bad input to `encode`, `convert`, `retrieve` and the model loader: one line, exit code 2, nothing written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_clipmed.errors import (
    CheckpointError,
    CheckpointMismatchError,
    InputError,
    WeightsNotFoundError,
)
from napari_clipmed.models.cache import EmbeddingCache
from napari_clipmed.models.checkpoint import read_checkpoint
from napari_clipmed.models.loader import load_model
from napari_clipmed.retrieval import EmbeddingIndex

from .conftest import one_line_error, tree


@pytest.fixture(scope="module")
def tiny_dapt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DAPT-like run folder of the tiny model: two epoch checkpoints and the final one (other weights)."""
    folder = tmp_path_factory.mktemp("dapt")
    model = load_model("tiny-random", device="cpu")
    model.save(folder / "dapt-epoch001.pt")
    model.save(folder / "dapt-epoch002.pt")
    with torch.no_grad():
        model.module.logit_scale.fill_(1.5)
    model.save(folder / "dapt-final.pt")
    return folder


def test_another_architecture_under_a_registry_name_is_refused(cli, tmp_path: Path, tiny_dapt: Path) -> None:
    final = tiny_dapt / "dapt-final.pt"
    with pytest.raises(CheckpointMismatchError, match="not ViT-B-32.* --model local"):
        load_model("openai-vit-b-32", weights=final, device="cpu")
    image = tmp_path / "i.png"
    Image.new("RGB", (32, 32), (200, 120, 180)).save(image)
    code, _, err = cli("encode", image, "--out", tmp_path / "e.npz", "--model", "openai-vit-b-32", "--weights", final)
    assert code == 2
    one_line_error(err, "encode", "--model local --weights")
    assert not (tmp_path / "e.npz").exists()
    assert load_model("local", weights=final, device="cpu").logit_scale == pytest.approx(np.exp(1.5), rel=1e-5)


def test_a_dapt_folder_loads_the_final_checkpoint_or_refuses_to_guess(tiny_dapt: Path, tmp_path: Path) -> None:
    assert load_model("local", weights=tiny_dapt, device="cpu").weights_path == tiny_dapt
    assert read_checkpoint(tiny_dapt).path.name == "dapt-final.pt"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("dapt-epoch001.pt", "dapt-epoch002.pt", "dapt-state.pt"):
        (unfinished / name).write_bytes((tiny_dapt / "dapt-epoch001.pt").read_bytes())
    with pytest.raises(CheckpointError, match=r"holds 2 checkpoints \(dapt-epoch001.pt, dapt-epoch002.pt\)"):
        load_model("local", weights=unfinished, device="cpu")


def test_checkpoint_messages_give_no_unsafe_advice(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # a whole pickled module, not a state dict
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(pickled)
    assert "weights_only" not in str(err.value) and "save model.state_dict()" in str(err.value)
    with pytest.raises(WeightsNotFoundError, match="checkpoint not found") as missing:
        read_checkpoint(tmp_path / "nothing.pt")
    assert "corrupt" not in str(missing.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x04 not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        read_checkpoint(garbage)


def test_bad_index_files_get_no_pickle_advice(tmp_path: Path) -> None:
    index = EmbeddingIndex(np.eye(4, dtype=np.float32), labels=np.array([0, 1, 0, 1]))
    good = index.save(tmp_path / "index.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, meta=np.array([{"a": 1}], dtype=object))
    for path in (truncated, pickled):
        with pytest.raises(InputError, match="truncated, corrupt or not an index") as err:
            EmbeddingIndex.load(path)
        assert "allow_pickle" not in str(err.value)
    assert len(EmbeddingIndex.load(good)) == 4


def test_retrieve_with_a_truncated_index_is_one_line(cli, tmp_path: Path, tile_folder: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    code, _, err = cli("retrieve", "--gallery", bad, "--query", tile_folder, "--model", "no-such-model",
                       "--out", tmp_path / "hits.csv")
    assert code == 2
    one_line_error(err, "retrieve", "bad.npz")
    assert not (tmp_path / "hits.csv").exists()


@pytest.mark.parametrize("case", ["out_folder", "truncated_png", "tiff", "cache_file", "device"])
def test_encode_refuses_before_the_model(cli, tmp_path: Path, case: str) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    tiff = tmp_path / "bad.tif"
    tiff.write_bytes(b"II*\x00garbage")
    cache = tmp_path / "cache"
    cache.write_text("a file")
    args = {
        "out_folder": ([good], tmp_path, [], "is an existing folder"),
        "truncated_png": ([good, cut], tmp_path / "e.npz", [], "cut.png"),
        "tiff": ([tiff], tmp_path / "e.npz", [], "bad.tif"),
        "cache_file": ([good], tmp_path / "e.npz", ["--cache-dir", cache], "cache folder"),
        "device": ([good], tmp_path / "e.npz", ["--device", "tpu"], "unknown device"),
    }[case]
    before = tree(tmp_path)
    code, _, err = cli("encode", *args[0], "--out", args[1], "--model", "tiny-random", *args[2])
    assert code == 2
    one_line_error(err, "encode", args[3])
    assert tree(tmp_path) == before  # no temporary file either


def test_encode_writes_one_npz_and_nothing_else(cli, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(good)
    assert cli("encode", good, "--out", tmp_path / "e.npz", "--model", "tiny-random", "--no-cache")[0] == 0
    assert tree(tmp_path) == ["e.npz", "good.png"]
    assert np.load(tmp_path / "e.npz")["embeddings"].shape[0] == 1


def test_a_damaged_cache_database_is_one_clear_message(cli, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(good)
    cache = tmp_path / "cache"
    model = load_model("tiny-random", device="cpu")
    EmbeddingCache(cache, model.signature).path.parent.mkdir(parents=True)
    EmbeddingCache(cache, model.signature).path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(EmbeddingCache(cache, model.signature).path).execute("SELECT 1 FROM embeddings")
    code, _, err = cli("encode", good, "--out", tmp_path / "e.npz", "--model", "tiny-random", "--cache-dir", cache)
    assert code == 2
    one_line_error(err, "encode", "is damaged", "--no-cache")
    assert not (tmp_path / "e.npz").exists()


def test_convert_output_paths(cli, tmp_path: Path, a_file: Path) -> None:
    code, _, err = cli("convert", tmp_path / "missing", a_file / "out.pt")
    assert code == 2
    one_line_error(err, "convert", "which is a file, not a folder")


def test_embed_store_path_is_checked_first(cli, tmp_path: Path, a_file: Path, tile_folder: Path) -> None:
    code, _, err = cli("embed", tile_folder, "--store", a_file / "store", "--model", "no-such-model")
    assert code == 2
    one_line_error(err, "embed", "which is a file, not a folder")

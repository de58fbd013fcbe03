"""Manifest reading and validation, splits, batches, captions, text views and image preprocessing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from napari_clipmed.dapt.config import DaptConfig
from napari_clipmed.dapt.data import (
    captions,
    epoch_batches,
    images_to_tensor,
    pair_keys,
    read_image,
    read_manifest,
    split_indices,
    split_sentences,
    text_views,
)
from napari_clipmed.errors import InputError
from napari_clipmed.models.loader import load_model


def _csv(path, rows: dict) -> object:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture()
def pngs(tmp_path):
    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        names.append(f"img/{i}.png")
    return names


def test_modes_follow_the_columns_and_relative_paths_resolve_from_the_csv_folder(tmp_path, pngs):
    m = read_manifest(_csv(tmp_path / "a.csv", {"image": pngs, "text": ["r1", "r2", "r3", "r4"]}))
    assert m.mode == "image-text" and m.images[0] == tmp_path / "img" / "0.png" and len(m) == 4
    m = read_manifest(_csv(tmp_path / "b.csv", {"Image": pngs, " Label ": ["x", "y", "x", "y"]}))
    assert m.mode == "image-label" and m.classes == ["x", "y"] and m.texts is None
    m = read_manifest(_csv(tmp_path / "c.csv", {"text": ["one. two.", "three", "four", "five"]}))
    assert m.mode == "text-only" and m.images is None
    absolute = [str(tmp_path / p) for p in pngs]
    m = read_manifest(pd.DataFrame({"image": absolute, "text": list("abcd")}), root="/nonexistent")
    assert m.images[3] == tmp_path / "img" / "3.png"
    assert m.fingerprint == read_manifest(pd.DataFrame({"image": absolute, "text": list("abcd")})).fingerprint
    assert m.fingerprint != read_manifest(pd.DataFrame({"image": absolute, "text": list("abce")})).fingerprint


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"image": ["img/0.png"]}, "needs a 'text' or a 'label' column"),
        ({"label": ["x"]}, "text-only training needs a 'text' column"),
        ({"image": ["img/0.png", "img/1.png", "img/2.png"], "text": ["a", "", "c"]}, r"empty on line\(s\) 3"),
        ({"text": ["a", "b"], "split": ["train", "test"]}, r"unknown split value\(s\) \['test'\]"),
    ],
)
def test_bad_manifests_are_refused_with_a_clear_message(tmp_path, pngs, rows, message):
    with pytest.raises(InputError, match=message):
        read_manifest(_csv(tmp_path / "m.csv", rows))


def test_missing_manifest_and_unreadable_images_are_reported(tmp_path, pngs):
    with pytest.raises(InputError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png at all")
    np.save(tmp_path / "img" / "two.npy", np.zeros((8, 8, 2), np.uint8))
    rows = {"image": [*pngs, "img/bad.png", "img/two.npy"], "text": list("abcdef")}
    with pytest.raises(InputError) as info:
        read_manifest(_csv(tmp_path / "m.csv", rows))
    assert "2 images cannot be read" in str(info.value)
    assert "bad.png" in str(info.value) and "two.npy (image 5 has 2 channels" in str(info.value)


def test_image_files_of_every_format_read_as_arrays(tmp_path):
    rng = np.random.default_rng(1)
    grey16 = rng.integers(0, 65535, (9, 11), dtype=np.uint16)
    rgb = rng.integers(0, 255, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(grey16).save(tmp_path / "g.png")
    tifffile.imwrite(tmp_path / "t.tif", rgb)
    np.save(tmp_path / "a.npy", rgb)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), grey16)
    np.testing.assert_array_equal(read_image(tmp_path / "t.tif"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "a.npy"), rgb)
    assert read_image(tmp_path / "p.png").shape == (9, 11, 3)


def test_splits_batches_and_captions(tmp_path, pngs):
    m = read_manifest(_csv(tmp_path / "m.csv", {"image": pngs, "label": ["x", "y", "x", "y"],
                                                "split": ["train", "val", "TRAIN", "train"]}))
    train, val = split_indices(m, 0.5, seed=0)
    assert list(train) == [0, 2, 3] and list(val) == [1]
    text = read_manifest(_csv(tmp_path / "t.csv", {"text": [f"r{i}" for i in range(20)]}))
    train, val = split_indices(text, 0.25, seed=4)
    assert len(val) == 5 and set(train).isdisjoint(val) and len(train) + len(val) == 20
    assert np.array_equal(split_indices(text, 0.25, seed=4)[1], val)
    with pytest.raises(InputError, match="at least 2 training pairs"):
        split_indices(read_manifest(_csv(tmp_path / "s.csv", {"text": ["a", "b"]})), 0.5, seed=0)

    batches = epoch_batches(np.arange(10), 4, seed=1, epoch=0)
    assert [len(b) for b in batches] == [4, 4] and len(set(np.concatenate(batches))) == 8
    assert not np.array_equal(np.concatenate(batches), np.concatenate(epoch_batches(np.arange(10), 4, 1, 1)))
    assert [len(b) for b in epoch_batches(np.arange(3), 4, seed=1, epoch=0)] == [3]

    templates = ("a {} patch", "{} on CT")
    assert captions(m, [0, 1], templates, None) == ["a x patch", "a y patch"]
    drawn = captions(m, [0] * 40, templates, np.random.default_rng(0))
    assert set(drawn) == {"a x patch", "x on CT"}
    assert pair_keys(m, [0, 1, 2]) == ["x", "y", "x"]


def test_text_views_split_a_report_into_two_halves(tmp_path):
    report = "Honeycombing at the bases. Traction bronchiectasis; no effusion.\nHeart normal. Fibrosis likely!"
    sentences = split_sentences(report)
    assert len(sentences) == 5
    first, second = text_views(report, np.random.default_rng(0))
    assert sorted(split_sentences(first) + split_sentences(second)) == sorted(sentences)
    assert len(split_sentences(first)) == 2 and len(split_sentences(second)) == 3
    a, b = text_views("ground glass opacity in both lower lobes", np.random.default_rng(1))
    words = set("ground glass opacity in both lower lobes".split())
    assert set(a.split()) <= words and set(b.split()) <= words and a and b


def test_training_preprocessing_is_the_inference_preprocessing_plus_seeded_augmentation():
    model = load_model("tiny-random")
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (40, 52, 3), dtype=np.uint8), rng.integers(0, 255, (16, 16), dtype=np.uint8),
              rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)]
    pixels = images_to_tensor(images, model.spec, model.device)
    assert pixels.shape == (3, 3, 64, 64)
    with torch.no_grad():
        train_side = F.normalize(model.module.encode_image(pixels), dim=-1).numpy()
    np.testing.assert_allclose(train_side, model.encode_images(images), atol=1e-5)

    augmented = images_to_tensor(images, model.spec, model.device, generator=torch.Generator().manual_seed(5))
    again = images_to_tensor(images, model.spec, model.device, generator=torch.Generator().manual_seed(5))
    assert augmented.shape == pixels.shape and torch.equal(augmented, again)
    assert not torch.allclose(augmented, pixels)


def test_config_is_validated_and_round_trips():
    with pytest.raises(InputError) as info:
        DaptConfig(epochs=0, batch_size=1, lock_image=True, lock_text=True, templates=("no slot",))
    for part in ("epochs must be at least 1", "batch_size must be at least 2", "nothing to train", "needs a {}"):
        assert part in str(info.value)
    config = DaptConfig(lr=3e-4, templates=["a {}"], grad_accum_steps=4, batch_size=8)
    assert config.effective_batch == 32 and config.templates == ("a {}",)
    assert DaptConfig.from_dict(config.to_dict()) == config
    assert DaptConfig(save_every=3).differences(DaptConfig(save_every=1)) == []
    assert DaptConfig(lr=1.0).differences(DaptConfig()) == ["lr"]
    with pytest.raises(InputError, match="unknown DAPT settings: learning_rate"):
        DaptConfig.from_dict({"learning_rate": 1.0})

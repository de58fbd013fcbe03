"""Prompt matching between tile-set classes and presets."""

from __future__ import annotations

import numpy as np
import pytest

from napari_clipmed.bench.tasks import tileset_prompts
from napari_clipmed.errors import InputError


def test_preset_classes_match_folder_names_loosely() -> None:
    prompts, columns = tileset_prompts(["necrotic_tumour", "Non-Tumour", "viable tumour"], preset="osteosarcoma")
    assert prompts.class_names == ["non-tumour", "viable tumour", "necrotic tumour"]
    np.testing.assert_array_equal(columns, [2, 0, 1])
    assert "an H&E image of necrosis." in prompts.prompts_for("necrotic tumour")


def test_class_names_become_prompts_without_a_preset() -> None:
    prompts, columns = tileset_prompts(["tumour_epithelium", "stroma"], templates=["a photo of {}."])
    assert prompts.prompts_for("tumour_epithelium") == ["a photo of tumour epithelium."]
    np.testing.assert_array_equal(columns, [0, 1])


def test_classes_missing_from_the_preset_are_named() -> None:
    with pytest.raises(InputError, match="not among the prompt classes of 'wsss4luad': fat.*normal tissue"):
        tileset_prompts(["fat", "normal tissue"], preset="wsss4luad")
    with pytest.raises(InputError, match="unknown preset 'nope'"):
        tileset_prompts(["a", "b"], preset="nope")

"""Registry contents and weight resolution: explicit path, weights folder, hub, clear errors."""

from __future__ import annotations

import pytest

from napari_clipmed.errors import WeightsNotFoundError
from napari_clipmed.models import weights as weights_mod
from napari_clipmed.models.registry import MODELS, ModelSpec, UnknownModelError, get_spec, list_models
from napari_clipmed.models.weights import resolve_weights

REQUIRED = ["openai-vit-b-16", "openai-vit-b-32", "plip", "pathclip", "quiltnet-b-32", "local"]


def test_registry_has_the_study_models() -> None:
    for name in REQUIRED:
        spec = get_spec(name)
        assert spec.name == name and spec.arch and spec.licence
    assert get_spec("plip").weights_format == "hf_clip"
    assert get_spec("pathclip").weights_file == "pathclip-base.pt"
    assert "quickgelu" in get_spec("pathclip").arch.lower()
    assert list_models()[: len(MODELS)] == list(MODELS)


def test_registry_has_the_newer_models_with_licence_gating_and_rules() -> None:
    from napari_clipmed.models.registry import FOLDER_ARCH

    new = {"biomedclip": False, "quiltnet-b-16": False, "quiltnet-b-16-pmb": False, "pathgen-clip": True,
           "omiclip": False, "medsiglip": True}
    for name, gated in new.items():
        spec = get_spec(name)
        assert spec.licence and spec.gated is gated and spec.hub_id
        assert spec.training_mpp is None or spec.resolution_source  # a resolution always comes with its source
    assert get_spec("biomedclip").arch == FOLDER_ARCH and get_spec("quiltnet-b-16-pmb").arch == FOLDER_ARCH
    assert get_spec("omiclip").arch == "coca_ViT-L-14" and get_spec("omiclip").trusted_pickle
    medsiglip = get_spec("medsiglip")
    assert (medsiglip.backend, medsiglip.scoring, medsiglip.image_size, medsiglip.resize) == (
        "hf_siglip", "sigmoid", 448, "squash")
    assert medsiglip.mean == medsiglip.std == (0.5, 0.5, 0.5)
    assert all(get_spec(n).scoring == "softmax" and get_spec(n).backend == "open_clip" for n in REQUIRED)


def test_folder_model_missing_says_to_pull_a_bundle(tmp_path) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(get_spec("biomedclip"), weights_dir=tmp_path, allow_download=False)
    assert f"put its bundle folder at {tmp_path / 'biomedclip'}" in str(info.value)
    assert "clipmed models pull biomedclip" in str(info.value)


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(UnknownModelError) as info:
        get_spec("clip-of-doom")
    message = str(info.value)
    assert "clip-of-doom" in message
    for name in REQUIRED:
        assert name in message


def test_explicit_path_wins(tmp_path) -> None:
    ckpt = tmp_path / "mine.pt"
    ckpt.write_bytes(b"x")
    (tmp_path / "pathclip-base.pt").write_bytes(b"y")
    assert resolve_weights(get_spec("pathclip"), ckpt, weights_dir=tmp_path) == ckpt


def test_missing_explicit_path_names_it(tmp_path) -> None:
    with pytest.raises(WeightsNotFoundError, match="nope.pt"):
        resolve_weights(get_spec("pathclip"), tmp_path / "nope.pt", weights_dir=tmp_path)


def test_weights_folder_from_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLIPMED_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "pathclip-base.pt").write_bytes(b"y")
    assert resolve_weights(get_spec("pathclip")) == tmp_path / "pathclip-base.pt"


def test_hf_model_folder_is_found(tmp_path) -> None:
    folder = tmp_path / "plip"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert resolve_weights(get_spec("plip"), weights_dir=tmp_path) == folder


def test_offline_error_names_model_file_and_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLIPMED_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(get_spec("pathclip"), weights_dir=tmp_path)
    message = str(info.value)
    assert "'pathclip'" in message
    assert str(tmp_path / "pathclip-base.pt") in message
    assert "CLIPMED_WEIGHTS_DIR" in message


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch) -> None:
    """A download library's exception never reaches the user: one WeightsNotFoundError, no chained traceback."""
    monkeypatch.delenv("CLIPMED_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub

    def boom(*args, **kwargs):
        raise ConnectionError("Failed to resolve host")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", boom)
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(get_spec("plip"), weights_dir=tmp_path)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "hf:vinid/plip" in str(info.value) and "ConnectionError" in str(info.value)
    assert "put the checkpoint at" in str(info.value)


def test_model_without_source_says_how_to_pass_one(tmp_path) -> None:
    with pytest.raises(WeightsNotFoundError, match="pass the checkpoint file explicitly"):
        resolve_weights(get_spec("local"), weights_dir=tmp_path)


def test_random_models_need_no_weights(tmp_path) -> None:
    assert resolve_weights(get_spec("tiny-random"), weights_dir=tmp_path) is None


def test_default_folder_is_per_user(monkeypatch) -> None:
    monkeypatch.delenv("CLIPMED_WEIGHTS_DIR", raising=False)
    assert "napari-clipmed" in str(weights_mod.default_weights_dir())


def test_spec_is_frozen() -> None:
    spec = get_spec("pathclip")
    with pytest.raises(AttributeError):
        spec.arch = "x"  # type: ignore[misc]
    assert isinstance(spec.with_changes(image_size=336), ModelSpec)

"""Loading: random tiny models, our checkpoint round trip, corrupt and mismatched checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_clipmed.errors import CheckpointError, CheckpointMismatchError
from napari_clipmed.models.loader import load_model
from napari_clipmed.models.registry import TINY_ARCH_CONFIG, get_spec


def test_tiny_model_is_seeded_and_normalised(tiny) -> None:
    again = load_model("tiny-random", device="cpu")
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    a, b = tiny.encode_images(images), again.encode_images(images)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert a.shape == (5, 64) and a.dtype == np.float32
    other_seed = load_model(get_spec("tiny-random").with_changes(seed=1), device="cpu")
    assert not np.allclose(other_seed.encode_images(images), a)
    assert tiny.device_label in ("CPU, fp32 (small model)", "CPU, fp32 (no bf16 units)")  # auto: too small to probe


def test_save_and_load_local_round_trip(tiny, tmp_path) -> None:
    path = tiny.save(tmp_path / "run" / "model.pt", extra_meta={"trained_by": "test"})
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    loaded = load_model("local", weights=path, device="cpu")
    assert loaded.spec.arch_config == TINY_ARCH_CONFIG and loaded.spec.image_size == 64
    images = np.random.default_rng(1).integers(0, 256, (3, 80, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.encode_images(images), tiny.encode_images(images), atol=1e-6)
    np.testing.assert_allclose(loaded.encode_texts(["lung"]), tiny.encode_texts(["lung"]), atol=1e-6)
    assert loaded.weights_hash == tiny.weights_hash


def test_plain_open_clip_state_dict_with_prefix_loads(tiny, tmp_path) -> None:
    state = {f"module.{k}": v for k, v in tiny.module.state_dict().items()}
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    spec = get_spec("tiny-random").with_changes(needs_weights=True, seed=5)
    loaded = load_model(spec, weights=path, device="cpu")
    assert loaded.weights_hash == tiny.weights_hash


def test_safetensors_state_dict_loads(tiny, tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.module.state_dict().items()}, str(path))
    loaded = load_model(get_spec("tiny-random").with_changes(seed=9), weights=path, device="cpu")
    assert loaded.weights_hash == tiny.weights_hash


def test_truncated_checkpoint_is_a_clear_error(tiny, tmp_path) -> None:
    path = tiny.save(tmp_path / "model.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated or not a model checkpoint") as info:
        load_model("local", weights=path, device="cpu")
    assert str(path) in str(info.value)


def test_garbage_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "pathclip-base.pt"
    path.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_model("pathclip", weights=path, device="cpu")


def test_wrong_architecture_names_keys_and_shapes(tiny, tmp_path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny.module.state_dict(), path)
    spec = get_spec("tiny-random").with_changes(
        arch_config=TINY_ARCH_CONFIG | {"embed_dim": 32}, needs_weights=True
    )
    with pytest.raises(CheckpointMismatchError) as info:
        load_model(spec, weights=path, device="cpu")
    message = str(info.value)
    assert "text_projection: checkpoint [64, 64] vs model [64, 32]" in message
    assert "visual.proj" in message


def test_missing_keys_are_listed(tiny, tmp_path) -> None:
    state = dict(tiny.module.state_dict())
    del state["ln_final.weight"]
    state["extra.head"] = torch.zeros(3)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_model(get_spec("tiny-random").with_changes(needs_weights=True), weights=path, device="cpu")
    assert "1 keys are missing (ln_final.weight)" in str(info.value)
    assert "1 keys are unexpected (extra.head)" in str(info.value)

"""Batched encoding: agreement with open_clip's own preprocessing, dtype/layout rules, bad input."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from napari_clipmed.errors import InputError
from napari_clipmed.models.images import preprocess_batch, stack_to_tensor
from napari_clipmed.progress import Progress, run_generator

RNG = np.random.default_rng(0)


def _reference(model, images: list[np.ndarray]) -> np.ndarray:
    """The naive path: open_clip's PIL transform and encode_image, one image at a time."""
    spec = model.spec
    transform = open_clip.image_transform(spec.image_size, is_train=False, mean=spec.mean, std=spec.std)
    out = []
    with torch.no_grad():
        for image in images:
            x = transform(Image.fromarray(image)).unsqueeze(0)
            out.append(torch.nn.functional.normalize(model.module.encode_image(x), dim=-1)[0].numpy())
    return np.stack(out)


def test_matches_open_clip_at_native_size(tiny) -> None:
    images = list(RNG.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8))
    np.testing.assert_allclose(tiny.encode_images(images), _reference(tiny, images), atol=1e-5)


def test_resizing_matches_pil_bicubic_closely(tiny) -> None:
    """Tensor bicubic (antialiased) vs PIL bicubic: pixels within a few grey levels, embeddings nearly equal."""
    from skimage.data import astronaut

    image = astronaut()[::2, ::2].copy()  # 256 x 256 natural image
    spec = tiny.spec
    ours = preprocess_batch(stack_to_tensor([image], torch.device("cpu")), spec.image_size, spec.mean, spec.std)[0]
    transform = open_clip.image_transform(spec.image_size, is_train=False, mean=spec.mean, std=spec.std)
    ref = transform(Image.fromarray(image))
    std = torch.tensor(spec.std).view(3, 1, 1)
    pixel_diff = ((ours - ref) * std).abs()
    assert pixel_diff.mean() < 2 / 255 and pixel_diff.max() < 0.1
    cos = float((tiny.encode_images([image]) * _reference(tiny, [image])).sum())
    assert cos > 0.999


def test_batching_and_order_do_not_change_results(tiny) -> None:
    images = [RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    images += [RNG.integers(0, 256, (96, 80, 3), dtype=np.uint8) for _ in range(4)]
    order = [0, 5, 1, 6, 2, 7, 3, 8, 4]
    mixed = [images[i] for i in order]
    one_by_one = np.stack([tiny.encode_images([im])[0] for im in mixed])
    np.testing.assert_allclose(tiny.encode_images(mixed, batch_size=2), one_by_one, atol=1e-5)
    np.testing.assert_allclose(tiny.encode_images(mixed, batch_size=64), one_by_one, atol=1e-5)


def test_cpu_preprocessing_in_pieces_gives_the_same_embeddings(tiny, monkeypatch) -> None:
    """A batch is preprocessed in pieces on a CPU (no 38 MB float copy of 64 tiles): pieces of one,
    of three and the whole batch give the same embeddings, in order."""
    from napari_clipmed.models import encode

    images = [RNG.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(7)]
    whole = tiny.encode_images(images, batch_size=7)
    assert encode.CPU_PREPROCESS_BYTES // (224 * 224 * 3 * 4) < 64  # a 64-tile batch is cut by default
    for piece in (1, 3):
        monkeypatch.setattr(encode, "CPU_PREPROCESS_BYTES", piece * 224 * 224 * 3 * 4)
        np.testing.assert_allclose(tiny.encode_images(images, batch_size=7), whole, atol=1e-6)
    assert encode.preprocess_images(tiny, images).shape == (7, 3, 64, 64)


def test_progress_generator_reports_batches(tiny) -> None:
    images = RNG.integers(0, 256, (10, 64, 64, 3), dtype=np.uint8)
    gen = tiny.iter_encode_images(images, batch_size=4)
    steps = []
    result = run_generator(gen, steps.append)
    assert all(isinstance(s, Progress) for s in steps)
    assert [s.done for s in steps] == [0, 4, 8, 10] and steps[-1].total == 10
    assert result.shape == (10, 64)


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda im: im.astype(np.uint16) * 257, id="uint16"),
        pytest.param(lambda im: im.astype(np.float32) / 255.0, id="float01"),
        pytest.param(lambda im: np.moveaxis(im, -1, 0).copy(), id="channel-first"),
        pytest.param(lambda im: np.dstack([im, np.full(im.shape[:2], 7, np.uint8)]), id="rgba"),
    ],
)
def test_documented_conversions(tiny, convert) -> None:
    image = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(tiny.encode_images([convert(image)]), tiny.encode_images([image]), atol=1e-5)


def test_grayscale_is_repeated_to_rgb(tiny) -> None:
    grey = RNG.integers(0, 256, (64, 64), dtype=np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_allclose(tiny.encode_images([grey]), tiny.encode_images([rgb]), atol=1e-5)
    np.testing.assert_allclose(tiny.encode_images([grey[:, :, None]]), tiny.encode_images([rgb]), atol=1e-5)


def test_float_outside_unit_range_is_clipped(tiny) -> None:
    image = RNG.random((64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(
        tiny.encode_images([image * 3 - 1]), tiny.encode_images([np.clip(image * 3 - 1, 0, 1)]), atol=1e-6
    )


def test_input_is_not_modified(tiny) -> None:
    image = RNG.random((70, 64, 3)).astype(np.float32)
    copy = image.copy()
    tiny.encode_images([image, image])
    np.testing.assert_array_equal(image, copy)


@pytest.mark.parametrize(
    "images, message",
    [
        ([], "empty"),
        (np.zeros((0, 64, 64, 3), np.uint8), "empty"),
        ([np.full((64, 64, 3), np.nan, np.float32)], "NaN"),
        ([np.zeros((64, 64, 2), np.uint8)], "2 channels"),
        ([np.zeros((4, 8, 8, 8, 3), np.uint8)], "shape"),
        ([np.zeros((1, 64, 3), np.uint8)], "too small"),
        ([np.array([["a"] * 8] * 8)], "dtype"),
    ],
)
def test_bad_images_are_clear_errors(tiny, images, message) -> None:
    with pytest.raises(InputError, match=message):
        tiny.encode_images(images)


def test_bad_texts_are_clear_errors(tiny) -> None:
    with pytest.raises(InputError, match="empty"):
        tiny.encode_texts([])
    with pytest.raises(InputError, match="non-empty"):
        tiny.encode_texts(["lung", "  "])


def test_text_embeddings_match_open_clip(tiny) -> None:
    texts = ["honeycombing", "ground-glass opacity", "honeycombing"]
    tokens = open_clip.get_tokenizer("ViT-B-32")(texts)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(tiny.module.encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(tiny.encode_texts(texts), ref, atol=1e-5)

"""Each native family, built tiny and saved as its authors publish it, loads through our registry path
with the network blocked and gives the reference library's own embeddings (within 1e-4)."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_families
import torch
import torch.nn.functional as F
from PIL import Image

from napari_clipmed.errors import BundleError, CheckpointError, InputError
from napari_clipmed.models.loader import load_model
from napari_clipmed.models.offline import NetworkBlockedError, no_network
from napari_clipmed.models.registry import get_spec, register_model
from napari_clipmed.zeroshot import PromptSet, ZeroShotClassifier, classify_images

TEXTS = ["an image of tumor", "normal lung tissue .", "ground glass opacity"]


def _images(size: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(size).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _open_clip_reference(ref, images: np.ndarray, texts: list[str]):
    import open_clip

    model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{ref}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{ref}")
    model.eval()
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.fromarray(image)) for image in images])
        image = F.normalize(model.encode_image(pixels), dim=-1).numpy()
        text = F.normalize(model.encode_text(tokenizer(texts)), dim=-1).numpy()
    return image, text, tokenizer(texts)


def test_no_network_guard_refuses_connections() -> None:
    import socket

    with no_network(), pytest.raises(NetworkBlockedError):
        socket.create_connection(("127.0.0.1", 9))


@pytest.fixture(scope="module")
def biomedclip_folders(tmp_path_factory):
    return tiny_families.biomedclip_like(tmp_path_factory.mktemp("biomedclip"))


def test_timm_trunk_with_bert_text_tower_matches_open_clip(biomedclip_folders) -> None:
    published, ref = biomedclip_folders
    with no_network():  # the config names the text tower by hub id: it must come from text/, not the hub
        ours = load_model("biomedclip", weights=published, device="cpu")
        images = _images(64)
        image, text = ours.encode_images(images), ours.encode_texts(TEXTS)
    ref_image, ref_text, ref_tokens = _open_clip_reference(ref, images, TEXTS)
    assert torch.equal(ours.tokenizer(TEXTS), ref_tokens)
    np.testing.assert_allclose(image, ref_image, atol=1e-4)
    np.testing.assert_allclose(text, ref_text, atol=1e-4)
    assert ours.embed_dim == 16 and ours.spec.image_size == 64 and ours.tokenizer.context_length == 32
    from napari_clipmed.models.cpu_fastpath import supports_fast_forward

    assert not supports_fast_forward(ours.module.visual)  # a timm trunk runs its own forward


@pytest.mark.parametrize(("missing", "named"), [(["config.json"], "config.json"),
                                               (["vocab.txt", "tokenizer.json"], "vocab.txt")])
def test_missing_text_tower_file_names_folder_and_file(biomedclip_folders, tmp_path, missing, named) -> None:
    import shutil

    published, _ = biomedclip_folders
    copy = tmp_path / "biomedclip"
    shutil.copytree(published, copy)
    for name in missing:
        (copy / "text" / name).unlink()
    with no_network(), pytest.raises(BundleError) as info:
        load_model("biomedclip", weights=copy, device="cpu")
    message = str(info.value)
    assert str(copy / "text") in message and named in message


def test_folder_model_given_a_bare_file_says_to_pass_the_folder(biomedclip_folders) -> None:
    published, _ = biomedclip_folders
    with pytest.raises(CheckpointError, match="open_clip folder"):
        load_model("biomedclip", weights=published / "open_clip_pytorch_model.bin", device="cpu")


def test_prompt_longer_than_context_is_refused(biomedclip_folders, tiny) -> None:
    published, _ = biomedclip_folders
    model = load_model("biomedclip", weights=published, device="cpu")
    long = " ".join(["tumor"] * 40)  # 40 words + [CLS] + [SEP] > 32
    with pytest.raises(InputError, match=r"42 tokens long.*at most 32"):
        model.encode_texts([long])
    with pytest.raises(InputError, match="at most 77"):  # open_clip's BPE tokenizer too
        tiny.encode_texts(["necrosis " * 80])
    assert not model.text_memo and "necrosis " * 80 not in tiny.text_memo


@pytest.fixture(scope="module")
def coca_folders(tmp_path_factory):
    return tiny_families.coca(tmp_path_factory.mktemp("coca"))


def test_coca_folder_matches_open_clip(coca_folders) -> None:
    published, ref = coca_folders
    spec = get_spec("omiclip").with_changes(name="tiny-coca-folder", hub_id=None)
    with no_network():
        ours = load_model(spec, weights=published, device="cpu")
        images = _images(32)
        image, text = ours.encode_images(images), ours.encode_texts(TEXTS)
    assert type(ours.module).__name__ == "CoCa" and ours.embed_dim == 32
    # The CPU fast path declines CoCa's attention-pooled tower; the stock forward ran (and matched below).
    from napari_clipmed.models.cpu_fastpath import supports_fast_forward

    assert ours.cpu_fastpath and not supports_fast_forward(ours.module.visual)
    ref_image, ref_text, _ = _open_clip_reference(ref, images, TEXTS)
    np.testing.assert_allclose(image, ref_image, atol=1e-4)
    np.testing.assert_allclose(text, ref_text, atol=1e-4)


def test_omiclip_training_checkpoint_loads_like_open_clip_with_weights_only_false(coca_folders, tmp_path) -> None:
    import open_clip
    from open_clip.factory import _MODEL_CONFIGS

    published, _ = coca_folders
    checkpoint = tiny_families.omiclip_checkpoint(published, tmp_path / "checkpoint.pt")
    arch = "clipmed-test-coca"
    _MODEL_CONFIGS[arch] = dict(tiny_families.COCA_CFG)
    spec = register_model(get_spec("omiclip").with_changes(
        name="tiny-omiclip", arch=arch, arch_config=dict(tiny_families.COCA_CFG), image_size=32), overwrite=True)
    try:
        ours = load_model(spec.name, weights=checkpoint, device="cpu")
        reference, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(checkpoint),
                                                                         weights_only=False)
    finally:
        _MODEL_CONFIGS.pop(arch, None)
    images = _images(32)
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.fromarray(image)) for image in images])
        ref_image = F.normalize(reference.eval().encode_image(pixels), dim=-1).numpy()
    np.testing.assert_allclose(ours.encode_images(images), ref_image, atol=1e-4)
    # A registry model that does not vouch for pickles refuses the same file.
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(spec.with_changes(name="untrusted", trusted_pickle=False), weights=checkpoint, device="cpu")


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory):
    return tiny_families.siglip(tmp_path_factory.mktemp("siglip"))


def test_siglip_matches_transformers(siglip_folder) -> None:
    import transformers

    folder, hf_model, hf_tokenizer = siglip_folder
    with no_network():
        ours = load_model("medsiglip", weights=folder, device="cpu")
        images = _images(32)
        image, text = ours.encode_images(images), ours.encode_texts(TEXTS)
    processor = transformers.SiglipImageProcessor.from_pretrained(folder)
    tokens = hf_tokenizer(TEXTS, padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        ref_image = hf_model.get_image_features(pixel_values=pixels)
        ref_text = hf_model.get_text_features(input_ids=tokens)
    ref_image = F.normalize(getattr(ref_image, "pooler_output", ref_image), dim=-1).numpy()
    ref_text = F.normalize(getattr(ref_text, "pooler_output", ref_text), dim=-1).numpy()
    np.testing.assert_allclose(image, ref_image, atol=1e-4)
    np.testing.assert_allclose(text, ref_text, atol=1e-4)
    assert ours.spec.image_size == 32 and ours.scoring == "sigmoid"


def test_siglip_zero_shot_uses_the_models_sigmoid(siglip_folder) -> None:
    folder, hf_model, hf_tokenizer = siglip_folder
    ours = load_model("medsiglip", weights=folder, device="cpu")
    classes = ["tumor", "necrosis", "stroma"]
    images = _images(32, 4)
    result = classify_images(ours, images, PromptSet.from_spec(classes, ["{}"]))
    import transformers

    pixels = transformers.SiglipImageProcessor.from_pretrained(folder)(images=list(images), return_tensors="pt")
    tokens = hf_tokenizer(classes, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        logits = hf_model(input_ids=tokens["input_ids"], pixel_values=pixels["pixel_values"]).logits_per_image
    np.testing.assert_allclose(result.probabilities, torch.sigmoid(logits).numpy(), atol=1e-4)
    classifier = ZeroShotClassifier.from_prompts(ours, classes, ["{}"])
    assert classifier.scoring == "sigmoid" and classifier.logit_bias == pytest.approx(float(hf_model.logit_bias))


def test_siglip_prompt_longer_than_64_style_context_is_refused(siglip_folder) -> None:
    folder, _, _ = siglip_folder
    ours = load_model("medsiglip", weights=folder, device="cpu")
    with pytest.raises(InputError, match="at most 16"):
        ours.encode_texts([" ".join(["tumor"] * 20)])


@pytest.mark.parametrize("as_model", ["plip", "local", "openai-vit-b-16"])
def test_medsiglip_checkpoint_given_as_a_clip_says_which_model_loads_it(siglip_folder, as_model) -> None:
    folder, _, _ = siglip_folder
    with pytest.raises(CheckpointError, match="SigLIP checkpoint.*--model medsiglip"):
        load_model(as_model, weights=folder, device="cpu")
    with pytest.raises(CheckpointError, match="SigLIP checkpoint"):
        load_model(as_model, weights=folder / "model.safetensors", device="cpu")


def test_squash_preprocessing_keeps_the_whole_field_of_view(siglip_folder) -> None:
    """SigLIP resizes both sides (no crop): a 32 x 64 image whose left quarter is black keeps it."""
    from napari_clipmed.models.images import preprocess_batch

    image = torch.ones(1, 3, 32, 64)
    image[..., :16] = 0.0
    squashed = preprocess_batch(image, 32, (0.5,) * 3, (0.5,) * 3, resize="squash", interpolation="bilinear")
    cropped = preprocess_batch(image, 32, (0.5,) * 3, (0.5,) * 3)
    assert squashed.shape == cropped.shape == (1, 3, 32, 32)
    assert squashed[..., :7].max() == -1.0 and squashed[..., 9:].min() == 1.0  # the black quarter, squashed
    assert float((squashed < 0).float().mean()) == pytest.approx(0.25, abs=0.04)
    assert cropped.min() == 1.0  # open_clip's centre crop cuts the black quarter away
    folder, _, _ = siglip_folder
    model = load_model("medsiglip", weights=folder, device="cpu")
    plain = load_model("medsiglip", weights=folder, device="cpu")
    plain.spec = plain.spec.with_changes(resize="crop", interpolation="bicubic")
    assert model.signature != plain.signature  # the cache never mixes the two preprocessings

"""Zero-shot classification against clip_benchmark's standard CLIP implementation; presets; bad input."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from napari_clipmed.errors import InputError
from napari_clipmed.models.loader import load_model
from napari_clipmed.zeroshot import PromptSet, ZeroShotClassifier, classify_images, list_presets, load_preset

CLASSES = ["tumor epithelium", "stroma", "normal tissue"]
TEMPLATES = ["an H&E image of {}.", "a histopathology image of {}.", "a photo of {} tissue."]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (24, 64, 64, 3), dtype=np.uint8)


def test_matches_clip_benchmark(tiny, tiles) -> None:
    zsc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
    templates_c = [t.replace("{}", "{c}") for t in TEMPLATES]
    reference_weights = zsc.zero_shot_classifier(tiny.module, tiny.tokenizer, CLASSES, templates_c, "cpu", amp=False)

    spec = tiny.spec
    transform = open_clip.image_transform(spec.image_size, is_train=False, mean=spec.mean, std=spec.std)
    pixels = torch.stack([transform(Image.fromarray(t)) for t in tiles])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(pixels, torch.zeros(len(tiles), dtype=torch.long)), batch_size=8
    )
    logits, _ = zsc.run_classification(tiny.module, reference_weights, loader, "cpu", amp=False)

    classifier = ZeroShotClassifier.from_prompts(tiny, CLASSES, TEMPLATES)
    np.testing.assert_allclose(classifier.class_embeddings, reference_weights.T.numpy(), atol=1e-5)
    embeddings = tiny.encode_images(tiles)
    np.testing.assert_allclose(classifier.scores(embeddings), logits.numpy() / 100.0, atol=1e-4)
    np.testing.assert_array_equal(classifier.predict(embeddings), logits.argmax(dim=1).numpy())
    # Probabilities are the softmax of the model's own logit scale times the cosines.
    expected = torch.softmax(tiny.logit_scale * logits / 100.0, dim=1).numpy()
    np.testing.assert_allclose(classifier.predict_proba(embeddings), expected, atol=1e-5)


def test_classify_images_result_table(tiny, tiles) -> None:
    result = classify_images(tiny, tiles[:5], CLASSES, TEMPLATES, ids=[f"t{i}" for i in range(5)])
    frame = result.to_frame()
    assert list(frame.columns) == ["id", "predicted", "probability", "margin", "entropy", *[f"p({c})" for c in CLASSES]]
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert set(result.predicted) <= set(CLASSES)


def test_synonyms_are_averaged(tiny) -> None:
    prompts = PromptSet.from_spec({"tumour": ["tumor", "carcinoma"], "normal": "normal tissue"}, ["a {}."])
    classifier = ZeroShotClassifier.from_prompts(tiny, prompts)
    both = tiny.encode_texts(["a tumor.", "a carcinoma."]).mean(axis=0)
    np.testing.assert_allclose(classifier.class_embeddings[0], both / np.linalg.norm(both), atol=1e-6)


def test_bundled_presets() -> None:
    assert {"osteosarcoma", "wsss4luad"} <= set(list_presets())
    osteo = load_preset("osteosarcoma")
    assert osteo.class_names == ["non-tumour", "viable tumour", "necrotic tumour"]
    luad = load_preset("wsss4luad")
    assert luad.class_names == ["tumour epithelium", "tumour-associated stroma", "normal tissue"]
    assert all("{}" in t for t in luad.templates)


def test_user_preset_file(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("classes:\n  a: [alpha]\n  b: beta\ntemplates: ['x {}']\n")
    prompts = load_preset(path)
    assert prompts.prompts_for("a") == ["x alpha"] and prompts.prompts_for("b") == ["x beta"]


@pytest.mark.parametrize(
    "classes, templates, message",
    [
        (["only one"], None, "at least two classes"),
        (["a", "b"], ["no placeholder"], "needs a {}"),
        (["a", "b"], ["  "], "at least one prompt template"),
        ({"a": [], "b": "x"}, None, "without any name"),
    ],
)
def test_bad_prompts(classes, templates, message) -> None:
    with pytest.raises(InputError, match=message):
        PromptSet.from_spec(classes, templates)


def test_unknown_preset_lists_bundled() -> None:
    with pytest.raises(InputError, match="osteosarcoma"):
        load_preset("nope")


def test_embeddings_of_another_model_are_refused(tiny) -> None:
    classifier = ZeroShotClassifier.from_prompts(tiny, CLASSES)
    with pytest.raises(InputError, match="another model"):
        classifier.predict_proba(np.ones((2, 512), np.float32))


def test_parse_reads_every_syntax_into_the_same_prompt_set(tmp_path) -> None:
    """Widget text, a comma list, a dict, a YAML file, a JSON file and inline JSON give one PromptSet."""
    expected = PromptSet.from_spec({"tumour": ("tumor tissue", "carcinoma"), "stroma": ("stroma",)}, ["a {}."])
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text("classes:\n  tumour: [tumor tissue, carcinoma]\n  stroma: stroma\ntemplates: ['a {}.']\n")
    json_file = tmp_path / "p.json"
    json_file.write_text('{"classes": {"tumour": ["tumor tissue", "carcinoma"], "stroma": ["stroma"]}}')
    sources = [
        "tumour: tumor tissue; carcinoma\n\n# a comment\nstroma",
        "tumour: tumor tissue; carcinoma, stroma",
        {"tumour": ["tumor tissue", "carcinoma"], "stroma": "stroma"},
        {"classes": {"tumour": ["tumor tissue", "carcinoma"], "stroma": ["stroma"]}},
        yaml_file,
        str(json_file),
        '{"tumour": ["tumor tissue", "carcinoma"], "stroma": "stroma"}',
    ]
    for source in sources:
        parsed = PromptSet.parse(source, "a {}.")
        assert (parsed.classes, parsed.templates) == (expected.classes, expected.templates), source
    assert PromptSet.parse(yaml_file).templates == ("a {}.",) and PromptSet.parse(yaml_file).name == "p"
    assert PromptSet.parse(["x", "y"], ["one {}", "two {}"]).templates == ("one {}", "two {}")
    assert PromptSet.parse(["x", "y"], "one {}; two {}").templates == ("one {}", "two {}")
    assert PromptSet.parse(["x", "y"], "one {}\ntwo {}").templates == ("one {}", "two {}")
    assert PromptSet.parse(expected) is expected


def test_parse_presets_bundled_and_given() -> None:
    from napari_clipmed.ct.ild import ILD_CLASS_PRESETS

    luad = PromptSet.parse("wsss4luad")
    assert luad == load_preset("wsss4luad") and luad.name == "wsss4luad" and luad.description
    swapped = PromptSet.parse("wsss4luad", "x {}")
    assert swapped.classes == luad.classes and swapped.templates == ("x {}",)
    uip = PromptSet.parse("uip", presets=ILD_CLASS_PRESETS)
    assert uip.classes == ILD_CLASS_PRESETS["uip"] and uip.name == "uip"


@pytest.mark.parametrize(
    "source, message",
    [
        ("osteosarcom", "unknown preset .*osteosarcoma"),
        ("missing.yaml", "prompt file not found"),
        ("a\nb\na", "listed twice"),
        ("{a: [", "not valid YAML"),
        ({"templates": ["{}"]}, "no 'classes:' section"),
        (": x\nb", "needs a name"),
    ],
)
def test_parse_mistakes_are_one_clear_message(source, message) -> None:
    with pytest.raises(InputError, match=message):
        PromptSet.parse(source)


def test_parse_needs_a_template() -> None:
    with pytest.raises(InputError, match="at least one prompt template"):
        PromptSet.parse("a\nb", "\n  \n")


def test_format_classes_round_trips() -> None:
    from napari_clipmed.zeroshot import format_classes, parse_classes

    classes = {"tumour": ("tumor tissue", "carcinoma"), "stroma": ("stroma",)}
    assert parse_classes(format_classes(classes)) == classes

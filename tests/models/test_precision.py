"""bf16 on CPUs: ISA detection, the chooser as a pure function, the probe, and bf16 agreeing with fp32.

bf16 runs on every x86 CPU (only slower without bf16 units), so every test here runs anywhere.
Stated agreement: bf16 image embeddings have cosine >= 0.999 to fp32 (the bar the chooser also
uses; open_clip ViT-B/32 with random weights measures about 0.9999 on real H&E tiles).
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_clipmed.errors import InputError
from napari_clipmed.models.cache import EmbeddingCache
from napari_clipmed.models.encode import image_features
from napari_clipmed.models.loader import load_model
from napari_clipmed.models.model import ClipModel
from napari_clipmed.models.cpuinfo import bf16_units, cpu_flags, cpu_name
from napari_clipmed.models.precision import (
    MIN_COSINE,
    MIN_SPEEDUP,
    PROBE_MIN_PARAMS,
    ProbeTimings,
    bf16_copy,
    choose_precision,
    decide,
    probe,
    probe_pixels,
)
from napari_clipmed.models.registry import ModelSpec

HE_IMAGE = Path(__file__).resolve().parents[3] / "shared" / "data" / "pathology" / "he_carcinoma_tiatoolbox.png"

XEON_AMX = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
EPYC_ZEN4 = "model name\t: AMD EPYC 9654\nflags\t\t: fpu avx2 fma avx512f avx512_bf16 avx512_vnni\n"
EPYC_AVX2 = "model name\t: AMD EPYC 7B12\nflags\t\t: fpu avx2 fma\n"


def he_tiles(n: int, size: int, seed: int = 0) -> np.ndarray:
    """`n` random size x size crops of the real H&E image."""
    from PIL import Image

    image = np.asarray(Image.open(HE_IMAGE).convert("RGB"))
    rng = np.random.default_rng(seed)
    ys, xs = rng.integers(0, image.shape[0] - size, n), rng.integers(0, image.shape[1] - size, n)
    return np.stack([image[y : y + size, x : x + size] for y, x in zip(ys, xs)])


# --- ISA detection -------------------------------------------------------------------------------


@pytest.mark.parametrize(("cpuinfo", "units"), [(XEON_AMX, "AMX"), (EPYC_ZEN4, "AVX-512 BF16"), (EPYC_AVX2, None), ("", None)])
def test_bf16_units_from_cpuinfo(cpuinfo: str, units: str | None) -> None:
    assert bf16_units(cpu_flags(cpuinfo)) == units


def test_cpu_name_from_cpuinfo() -> None:
    assert cpu_name(XEON_AMX) == "Intel(R) Xeon(R) Platinum 8480+" and cpu_name(EPYC_AVX2) == "AMD EPYC 7B12"
    assert cpu_name("flags\t: avx2\n") == "unknown CPU"


def test_this_machines_flags_are_read() -> None:
    flags = cpu_flags()
    if Path("/proc/cpuinfo").exists():
        assert flags, "a Linux CPU reports some flags"
    assert bf16_units() == bf16_units(flags)


# --- the chooser, a pure function of units, timings and cosines ----------------------------------


@pytest.mark.parametrize(
    ("units", "fp32_s", "bf16_s", "cosine", "precision", "reason"),
    [
        ("AMX", 6.5, 1.67, 0.99994, "bf16", "AMX"),  # the Xeon: 4.9 vs 19.2 images/s
        ("AVX-512 BF16", 1.6, 0.8, 0.99995, "bf16", "AVX-512 BF16"),
        ("AVX-512 BF16", 1.0, 1.0 / MIN_SPEEDUP, MIN_COSINE, "bf16", "AVX-512 BF16"),  # both bars met exactly
        ("AVX-512 BF16", 1.0, 0.9, 0.99995, "fp32", "bf16 not faster"),  # 1.11x: not clearly faster
        ("AMX", 1.0, 1.3, 0.99995, "fp32", "bf16 not faster"),  # slower
        ("AMX", 4.0, 1.0, 0.998, "fp32", "bf16 disagrees"),  # 4x faster but wrong
        ("AMX", 4.0, 1.0, math.nan, "fp32", "bf16 disagrees"),  # NaN embeddings
        ("AMX", 4.0, 0.0, 0.99995, "bf16", "AMX"),  # too fast to measure is faster
    ],
)
def test_chooser(units, fp32_s, bf16_s, cosine, precision, reason) -> None:
    timings = ProbeTimings(fp32_s, bf16_s, cosine)
    choice = choose_precision(units, timings)
    assert (choice.precision, choice.reason) == (precision, reason)
    assert choice.units == units and choice.timings == timings
    if precision == "fp32" and reason == "bf16 not faster":
        assert f"needs >= {MIN_SPEEDUP}x" in choice.detail


def test_chooser_without_units_or_probe_keeps_fp32() -> None:
    assert choose_precision(None, None).reason == "no bf16 units"
    fast = ProbeTimings(4.0, 1.0, 0.99999)
    assert choose_precision(None, fast).precision == "fp32"  # no units: fp32 whatever a probe said
    assert choose_precision("AMX", None).precision == "fp32"
    assert choose_precision("AMX", ProbeTimings(1.0, 0.95, 0.9999), min_speedup=1.05).precision == "bf16"
    assert choose_precision("AMX", ProbeTimings(4.0, 1.0, 0.9995), min_cosine=0.9999).reason == "bf16 disagrees"


def test_probe_times_both_precisions_and_compares_them() -> None:
    calls: list[str] = []
    scale = {"fp32": 1.0, "bf16": 1.001}

    def forward(precision: str, pixels: torch.Tensor) -> torch.Tensor:
        calls.append(precision)
        return pixels.flatten(1) * scale[precision] + (precision == "bf16") * 0.01

    pixels = probe_pixels(32, 3)
    assert pixels.shape == (3, 3, 32, 32) and torch.equal(pixels, probe_pixels(32, 3))  # fixed
    timings = probe(forward, pixels, rounds=3)
    assert calls.count("fp32") == calls.count("bf16") == 4  # one warm-up + 3 timed rounds each
    expected = torch.nn.functional.cosine_similarity(pixels.flatten(1), pixels.flatten(1) * 1.001 + 0.01).min()
    assert timings.min_cosine == pytest.approx(float(expected), abs=1e-6)
    assert timings.fp32_seconds > 0 and timings.bf16_seconds > 0


# --- decide(): what load_model does on a CPU -----------------------------------------------------


def test_tiny_model_and_cpus_without_units_stay_fp32_without_a_probe(tiny: ClipModel) -> None:
    assert decide(tiny, "auto", flags=EPYC_AVX2.split()).reason == "no bf16 units"
    assert decide(tiny, "auto", flags=XEON_AMX.split()).reason == "small model"
    assert decide(tiny, "bf16").precision == "bf16" and decide(tiny, "bf16").reason == "requested"
    with pytest.raises(InputError, match="fp16"):
        decide(tiny, "fp16")
    assert tiny.precision == "fp32"  # the fixture's auto, on this machine
    assert tiny.device_label in ("CPU, fp32 (small model)", "CPU, fp32 (no bf16 units)")


def test_load_model_records_the_precision_and_why() -> None:
    model = load_model("tiny-random", device="cpu", precision="bf16")
    assert model.precision == "bf16" and model.device_label == "CPU, bf16 (requested)"
    record = model.precision_record
    assert record["precision"] == "bf16" and record["reason"] == "requested" and record["device"] == model.device_label
    with pytest.raises(InputError, match="use auto, fp32 or bf16"):
        load_model("tiny-random", device="cpu", precision="fp16")


# --- bf16 agrees with fp32 -----------------------------------------------------------------------


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_tiny_model_bf16_embeddings_agree_and_text_stays_fp32(tiny: ClipModel) -> None:
    bf16 = replace(tiny, precision="bf16", text_memo={})
    tiles = he_tiles(24, 96)
    reference, candidate = tiny.encode_images(tiles), bf16.encode_images(tiles)
    assert candidate.dtype == np.float32
    assert _cosines(reference, candidate).min() >= MIN_COSINE
    assert not np.array_equal(reference, candidate)  # it really ran in bf16
    prompts = ["tumour", "stroma", "lymphocytes"]
    np.testing.assert_array_equal(bf16.encode_texts(prompts), tiny.encode_texts(prompts))
    assert next(tiny.module.visual.parameters()).dtype == torch.float32  # the fp32 tower is untouched


@pytest.fixture(scope="module")
def vit_b32() -> ClipModel:
    """open_clip ViT-B/32 with random weights (the size of PLIP and OpenAI CLIP B/32)."""
    spec = ModelSpec(name="b32", arch="ViT-B-32", description="random ViT-B/32", needs_weights=False)
    return load_model(spec, device="cpu", precision="fp32")


def test_vit_b32_bf16_embeddings_agree_with_fp32(vit_b32: ClipModel) -> None:
    tiles = he_tiles(4, 224, seed=1)
    reference = vit_b32.encode_images(tiles)
    candidate = replace(vit_b32, precision="bf16", text_memo={}).encode_images(tiles)
    cosines = _cosines(reference, candidate)
    assert cosines.min() >= MIN_COSINE, cosines
    # the bf16 path is the recipe: open_clip's image tower and its inputs cast to bf16
    pixels = probe_pixels(224, 2)
    with torch.inference_mode():
        ours = image_features(vit_b32, pixels, "bf16")
        cast = copy.deepcopy(vit_b32.module.visual).to(torch.bfloat16)
        torch.testing.assert_close(ours, cast(pixels.to(torch.bfloat16)).float(), rtol=0, atol=0)


def test_auto_probes_a_vit_and_its_choice_follows_the_chooser() -> None:
    """What auto picks depends on this CPU; that it measured and followed the chooser does not."""
    config = {"embed_dim": 128, "vision_cfg": {"image_size": 96, "layers": 4, "width": 384, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    spec = ModelSpec(name="vit-s", arch="vit-s", description="a small ViT", needs_weights=False, image_size=96,
                     arch_config=config, tokenizer="ViT-B-32")
    model = load_model(spec, device="cpu", precision="fp32")
    assert sum(p.numel() for p in model.module.visual.parameters()) >= PROBE_MIN_PARAMS
    choice = decide(model, "auto", flags=XEON_AMX.split())
    assert choice.timings is not None and choice.timings.min_cosine >= MIN_COSINE
    assert choice == choose_precision("AMX", choice.timings)
    assert decide(model, "auto", flags=EPYC_AVX2.split()).timings is None  # no units: nothing measured


def test_bf16_copy_is_reused_and_remade_when_the_weights_change(tiny: ClipModel) -> None:
    visual = tiny.module.visual
    first = bf16_copy(visual)
    assert bf16_copy(visual) is first
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in first.parameters())
    state = {k: v.clone() for k, v in visual.state_dict().items()}
    try:
        with torch.no_grad():
            visual.proj.mul_(2.0)  # what an optimiser step does: an in-place update
        second = bf16_copy(visual)
        assert second is not first
        torch.testing.assert_close(second.proj.float(), visual.proj.to(torch.bfloat16).float())
    finally:
        visual.load_state_dict(state)
    assert bf16_copy(visual) is not second  # load_state_dict is a change too


def test_cache_never_mixes_precisions(tiny: ClipModel, tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    bf16 = replace(tiny, precision="bf16", text_memo={})
    tiles = he_tiles(6, 64, seed=2)
    fp32_first = tiny.encode_images(tiles, cache=cache)
    bf16_first = bf16.encode_images(tiles, cache=cache)  # computed, not read from the fp32 entries
    assert tiny.signature != bf16.signature
    assert not np.array_equal(fp32_first, bf16_first)
    np.testing.assert_array_equal(bf16_first, bf16.encode_images(tiles))  # what bf16 gives without a cache
    assert len(cache.for_signature(tiny.signature)) == len(cache.for_signature(bf16.signature)) == 6
    np.testing.assert_array_equal(tiny.encode_images(tiles, cache=cache), fp32_first)
    np.testing.assert_array_equal(bf16.encode_images(tiles, cache=cache), bf16_first)


def test_cli_precision_option_and_first_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    from napari_clipmed.cli import main

    tile = tmp_path / "tile.png"
    Image.fromarray(he_tiles(1, 64, seed=3)[0]).save(tile)
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.npz"
        assert main(["encode", str(tile), "--out", str(out), "--model", "tiny-random", "--precision", precision,
                     "--no-cache"]) == 0
        printed = capsys.readouterr()
        assert printed.err.splitlines()[0].endswith(f"on CPU, {precision} (requested)")
        assert f"CPU, {precision} (requested)" in printed.out
    fp32, bf16 = np.load(tmp_path / "fp32.npz"), np.load(tmp_path / "bf16.npz")
    assert str(fp32["signature"]) != str(bf16["signature"])
    assert _cosines(fp32["embeddings"], bf16["embeddings"]).min() >= MIN_COSINE
    with pytest.raises(SystemExit) as exit_info:
        main(["encode", str(tile), "--out", str(tmp_path / "x.npz"), "--model", "tiny-random", "--precision", "fp16"])
    assert exit_info.value.code == 2 and not (tmp_path / "x.npz").exists()
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_cpu_fast_path_steps_aside_for_bf16(tiny: ClipModel, monkeypatch: pytest.MonkeyPatch) -> None:
    from napari_clipmed.models import encode

    calls = []
    monkeypatch.setattr(encode, "supports_fast_forward", lambda visual: True)
    monkeypatch.setattr(encode, "vision_forward", lambda visual, pixels: calls.append(pixels.dtype) or visual(pixels))
    tiles = he_tiles(3, 64, seed=4)
    replace(tiny, precision="bf16", text_memo={}).encode_images(tiles)
    assert calls == []  # bf16 never enters the fp32 fast path
    tiny.encode_images(tiles)
    assert calls == [torch.float32]  # fp32 does


def test_a_backend_without_an_image_tower_stays_fp32(tmp_path: Path) -> None:
    import tiny_families

    folder = tiny_families.siglip(tmp_path)[0]
    model = load_model("medsiglip", weights=folder, device="cpu")  # the transformers SigLIP backend
    assert getattr(model.module, "visual", None) is None
    assert model.precision == "fp32"
    assert model.device_label in ("CPU, fp32 (fp32 backend)", "CPU, fp32 (no bf16 units)")
    with pytest.raises(InputError, match="fp32 only"):
        load_model("medsiglip", weights=folder, device="cpu", precision="bf16")

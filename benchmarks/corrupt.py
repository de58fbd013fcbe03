"""Corruption speed: our batched `corrupt` vs the per-image loop a user would write.

Run: .venv/bin/python benchmarks/corrupt.py [--tiles 1000] [--baseline-tiles 100] [--kinds blur,hue]

All 28 settings (7 kinds x severities 1..4) on 224x224 tiles cut from the two real H&E images
in ../shared/data/pathology. Our path corrupts all `--tiles` tiles at once per setting. The
baseline is the per-image loop a user reaches for, timed on the first `--baseline-tiles` tiles
(the full 1,000 x 28 would take many minutes), so per-tile times are compared:
  brightness, saturation, hue  skimage.color rgb2hsv -> shift -> hsv2rgb (as imagecorruptions does)
  contrast                     numpy (x - mean) * c + mean (imagecorruptions' formula)
  blur                         scipy.ndimage.gaussian_filter per image, sigma (s, s, 0), uint8 in and out
  resolution                   Pillow BOX downscale + NEAREST upscale (imagecorruptions' pixelate)
  markup                       Pillow ImageDraw thick lines along the same random strokes, GaussianBlur
                               for soft edges, numpy Beer-Lambert blend
The imagecorruptions package itself does not import with current setuptools/scikit-image
(pkg_resources, `multichannel=`), so its formulas are written out here.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage as ndi
from skimage import color

from napari_clipmed.pathology import markup
from napari_clipmed.pathology.corrupt import corrupt
from napari_clipmed.pathology.params import get_corruption, list_corruptions
from napari_clipmed.pathology.strokes import candidate_strokes
from napari_clipmed.pathology.tiles import read_slide_level, tile_image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pathology"


def real_tiles(n: int, size: int = 224) -> np.ndarray:
    """`n` tissue tiles (overlapping, stride 56) alternating between the two H&E images."""
    sets = []
    for name in ("cmu_small_region.svs", "he_carcinoma_tiatoolbox.png"):
        sets.append(tile_image(read_slide_level(DATA / name), size, stride=size // 4, min_tissue=0.5).images)
    pool = np.concatenate([np.stack(pair) for pair in zip(*sets)] + [s[min(map(len, sets)) :] for s in sets])
    if len(pool) < n:  # more than the images hold: add flipped copies
        pool = np.concatenate([pool, pool[:, ::-1], pool[:, :, ::-1], pool[:, ::-1, ::-1]])
    return np.ascontiguousarray(pool[:n])


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _hsv_shift(channel: int, wrap: bool) -> Callable[[np.ndarray, float], np.ndarray]:
    def run(img: np.ndarray, delta: float) -> np.ndarray:
        hsv = color.rgb2hsv(img)
        hsv[..., channel] = (hsv[..., channel] + delta) % 1.0 if wrap else np.clip(hsv[..., channel] + delta, 0, 1)
        return _u8(color.hsv2rgb(hsv))

    return run


def _contrast(img: np.ndarray, c: float) -> np.ndarray:
    x = img / 255.0
    mean = x.mean(axis=(0, 1), keepdims=True)
    return _u8(np.clip((x - mean) * c + mean, 0, 1))


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return ndi.gaussian_filter(img, sigma=(sigma, sigma, 0))


def _pixelate(img: np.ndarray, factor: float) -> np.ndarray:
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((int(w * factor), int(h * factor)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.NEAREST))


def _markup(img: np.ndarray, coverage: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    inked = 0.0
    strokes, areas = candidate_strokes(rng, h, w, 8)
    for stroke, area in zip(strokes, areas):
        points = [(float(x), float(y)) for y, x in stroke.points[::8]]
        draw.line(points, fill=255, width=int(2 * stroke.radius.mean()), joint="curve")
        inked += area
        if inked >= coverage * h * w:
            break
    soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(0.0125 * min(h, w))), dtype=np.float32) / 255.0
    od = soft[..., None] * rng.uniform(0.7, 1.3) * np.array(markup.INK_COLOURS["green"], np.float32)
    return _u8(img / 255.0 * np.exp(-od))


def baseline(kind: str, severity: int) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    value = get_corruption(kind).parameter_at(severity)
    table: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
        "brightness": lambda im, _: _hsv_shift(2, False)(im, value),
        "saturation": lambda im, _: _hsv_shift(1, False)(im, value),
        "hue": lambda im, _: _hsv_shift(0, True)(im, value),
        "contrast": lambda im, _: _contrast(im, value),
        "blur": lambda im, _: _blur(im, value),
        "resolution": lambda im, _: _pixelate(im, value),
        "markup": lambda im, rng: _markup(im, value, rng),
    }
    return table[kind]


def timed(fn: Callable[[], object], repeats: int = 1) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=1000)
    parser.add_argument("--baseline-tiles", type=int, default=100)
    parser.add_argument("--kinds", default=",".join(list_corruptions()))
    args = parser.parse_args()

    tiles = real_tiles(args.tiles)
    sub = tiles[: args.baseline_tiles]
    print(f"{len(tiles)} tiles {tiles.shape[1]}x{tiles.shape[2]} from {DATA}; baseline on {len(sub)} of them")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy {np.__version__}")
    corrupt(tiles[:8], "blur", 1)  # warm-up (thread pools, allocator)
    print(f"{'kind':<11}{'sev':>4}{'ours ms/tile':>14}{'base ms/tile':>14}{'ratio':>8}{'max |diff|':>12}")
    totals = {}
    for kind in args.kinds.split(","):
        ours_k = base_k = 0.0
        for severity in (1, 2, 3, 4):
            ours = timed(lambda: corrupt(tiles, kind, severity, seed=0)) / len(tiles)
            fn = baseline(kind, severity)
            rng = np.random.default_rng(0)
            out: list[np.ndarray] = []
            base = timed(lambda: out.extend(fn(im, rng) for im in sub)) / len(sub)
            ref = np.stack(out)
            diff = "-" if kind == "markup" else str(int(np.abs(corrupt(sub, kind, severity).astype(int) - ref).max()))
            print(f"{kind:<11}{severity:>4}{ours * 1e3:>14.3f}{base * 1e3:>14.3f}{base / ours:>8.1f}{diff:>12}")
            ours_k += ours
            base_k += base
        totals[kind] = (ours_k, base_k)
    print("per kind (sum over severities 1-4):")
    for kind, (o, b) in totals.items():
        print(f"  {kind:<11} ours {o * 1e3:8.3f} ms/tile  baseline {b * 1e3:8.3f} ms/tile  ratio {b / o:6.1f}x")
    ours_all = sum(o for o, _ in totals.values())
    base_all = sum(b for _, b in totals.values())
    print(
        f"overall, all {4 * len(totals)} settings: ours {ours_all * len(tiles):.2f} s for {len(tiles)} tiles, "
        f"baseline {base_all * len(tiles):.2f} s (extrapolated from {len(sub)} tiles): "
        f"{base_all / ours_all:.1f}x (target >= 5x)"
    )


if __name__ == "__main__":
    main()

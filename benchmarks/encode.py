"""Encoder speed: our batched tensor path (fp32 and bf16) vs the naive per-image loop, and the warm cache.

Run: .venv/bin/python benchmarks/encode.py [--n 256] [--arch ViT-B-16-quickgelu | tiny] [--device cuda] [--quick]

It prints the CPU, its ISA flags, the precision `auto` chose on this machine and why, then fp32 vs
bf16 vs naive in one run (on a CPU; on a GPU the chosen precision vs naive).

Baseline = what a user writes with open_clip directly: PIL image -> `preprocess` -> `encode_image`
one image at a time under `torch.no_grad()`. Both paths use the same randomly initialised network
(real weights change nothing about speed) in the same process, on 224x224 tiles cut from the
real H&E image in ../shared/data (random pixels when it is absent).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from napari_clipmed.models.cache import EmbeddingCache
from napari_clipmed.models.loader import load_model
from napari_clipmed.models.cpuinfo import bf16_units, cpu_name, isa_summary
from napari_clipmed.models.registry import ModelSpec

HE_IMAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "pathology" / "he_carcinoma_tiatoolbox.png"


def tiles(n: int, size: int = 224) -> np.ndarray:
    rng = np.random.default_rng(0)
    if HE_IMAGE.exists():
        from PIL import Image

        image = np.asarray(Image.open(HE_IMAGE).convert("RGB"))
        ys = rng.integers(0, image.shape[0] - size, n)
        xs = rng.integers(0, image.shape[1] - size, n)
        return np.stack([image[y : y + size, x : x + size] for y, x in zip(ys, xs)])
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def naive_loop(model, images: np.ndarray) -> np.ndarray:
    import open_clip
    from PIL import Image

    spec = model.spec
    preprocess = open_clip.image_transform(spec.image_size, is_train=False, mean=spec.mean, std=spec.std)
    out = []
    with torch.no_grad():
        for image in images:
            x = preprocess(Image.fromarray(image)).unsqueeze(0).to(model.device)
            feature = model.module.encode_image(x)
            out.append(torch.nn.functional.normalize(feature, dim=-1)[0].float().cpu().numpy())
    return np.stack(out)


def one_piece(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Our encoder with each batch preprocessed in one piece (`encode.CPU_PREPROCESS_BYTES` unbounded)."""
    from napari_clipmed.models import encode

    saved, encode.CPU_PREPROCESS_BYTES = encode.CPU_PREPROCESS_BYTES, 2**62
    try:
        return model.encode_images(images, batch_size=batch_size)
    finally:
        encode.CPU_PREPROCESS_BYTES = saved


def timed(fn, *args, **kwargs):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def vit_gflop_per_image(visual: torch.nn.Module) -> float:
    """Multiply-adds x 2 of one ViT image forward (GEMMs, attention and patch embedding)."""
    tokens, width = visual.positional_embedding.shape
    patch = visual.conv1.kernel_size[0]
    per_block = 0.0
    for block in visual.transformer.resblocks:
        hidden = block.mlp.c_fc.out_features
        per_block += 2 * tokens * (4 * width * width + 2 * width * hidden) + 4 * tokens * tokens * width
    return (per_block + 2 * (tokens - 1) * width * 3 * patch * patch) / 1e9


def gemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 GEMM throughput now (the best of MKL and oneDNN on a large square GEMM)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    candidates = [lambda: a @ b]
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        candidates.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))
    best = 0.0
    for gemm in candidates:
        gemm()
        start = time.perf_counter()
        for _ in range(repeats):
            gemm()
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


def interleaved(paths: dict[str, object], images: np.ndarray, rounds: int) -> dict[str, float]:
    """Total seconds per path over all images, run in `rounds` slices with the paths interleaved.

    Alternating the paths slice by slice (and rotating who goes first) spreads any slow spell of a
    shared machine over all of them, so the ratios hold even when absolute speeds drift.
    """
    totals = dict.fromkeys(paths, 0.0)
    names = list(paths)
    for r, chunk in enumerate(np.array_split(images, rounds)):
        for name in names[r % len(names):] + names[: r % len(names)]:
            totals[name] += timed(paths[name], chunk)[1]
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--arch", default="ViT-B-16-quickgelu", help="an open_clip architecture, or tiny (tiny-random)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="auto", help="what `ours` runs in: auto (the chooser), fp32 or bf16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4, help="slices the paths alternate over")
    parser.add_argument("--quick", action="store_true", help="smoke test: 8 tiles, 2 rounds, ViT-B/32")
    args = parser.parse_args()
    if args.quick:
        args.n, args.rounds, args.arch = 8, 2, "ViT-B-32"

    spec = ModelSpec(name="bench", arch=args.arch, description="benchmark", needs_weights=False, tokenizer="ViT-B-16")
    print(f"CPU: {cpu_name()}; ISA flags: {isa_summary()}; bf16 units: {bf16_units() or 'none'}")
    model = load_model("tiny-random" if args.arch == "tiny" else spec, device=args.device, precision=args.precision)
    on_cpu = model.device.type == "cpu"
    images = tiles(args.n)
    print(f"model {args.arch} (random weights) on {model.device_label}, torch threads {torch.get_num_threads()}, "
          f"{len(images)} tiles of 224x224")
    choice = model.precision_choice
    if choice is not None:
        print(f"chosen precision: {choice.precision} ({choice.reason}): {choice.detail}")

    variants = {"ours": model}
    if on_cpu:  # both precisions and the stock forward, whatever auto chose
        fp32 = replace(model, precision="fp32", text_memo={})
        variants = {"ours, fp32": fp32, "ours, bf16": replace(model, precision="bf16", text_memo={}),
                    "ours, fp32, stock forward": replace(fp32, cpu_fastpath=False)}
    _ = model.signature  # hash the weights once, for the cache key
    for variant in variants.values():  # warm up every path
        variant.encode_images(images[:4])
    naive_loop(model, images[:2])

    paths = {"naive": lambda x: naive_loop(model, x)}
    for name, variant in variants.items():
        paths[name] = lambda x, v=variant: v.encode_images(x, batch_size=args.batch_size)
    if on_cpu:  # the batch's preprocessing as one piece (a fresh >32 MB float buffer per batch), as before
        paths["ours, fp32, one-piece preprocessing"] = lambda x: one_piece(variants["ours, fp32"], x, args.batch_size)
    seconds = interleaved(paths, images, args.rounds)
    naive = naive_loop(model, images[:16])
    cos = {name: float(np.mean(np.sum(v.encode_images(images[:16]) * naive, axis=1))) for name, v in variants.items()}
    with tempfile.TemporaryDirectory() as folder:
        cache = EmbeddingCache(folder)
        cold, t_cold = timed(model.encode_images, images, batch_size=args.batch_size, cache=cache)
        warm, t_warm = timed(model.encode_images, images, batch_size=args.batch_size, cache=cache)
        assert np.array_equal(warm, cold)

    n = len(images)
    t_naive = seconds["naive"]
    print(f"naive loop (PIL preprocess + encode_image per image, fp32): {t_naive:8.2f} s  {n / t_naive:8.1f} images/s")
    for name in variants:
        t = seconds[name]
        print(f"{name + f' (batch {args.batch_size})':42s} {t:8.2f} s  {n / t:8.1f} images/s  "
              f"{t_naive / t:5.2f}x naive, mean cosine to naive {cos[name]:.6f}")
    print(f"batched encoder ({model.precision}), cold cache (writes): {t_cold:8.2f} s  {n / t_cold:8.1f} images/s")
    print(f"batched encoder ({model.precision}), warm cache:          {t_warm:8.3f} s  {n / t_warm:8.1f} images/s")
    if on_cpu:
        t_fp32, t_bf16, t_stock = (seconds[k] for k in ("ours, fp32", "ours, bf16", "ours, fp32, stock forward"))
        t_piece = seconds["ours, fp32, one-piece preprocessing"]
        print(f"{'ours, fp32, one-piece preprocessing':42s} {t_piece:8.2f} s  {n / t_piece:8.1f} images/s; "
              f"preprocessing in pieces: {t_piece / t_fp32:.2f}x")
        print(f"bf16 vs fp32 (ours): {t_fp32 / t_bf16:.2f}x; auto chose {model.precision} "
              f"({model.device_label}); the CPU fast path: {t_stock / t_fp32:.2f}x over the stock fp32 forward")
        print(f"speed-up of auto's choice vs naive: {t_naive / seconds[f'ours, {model.precision}']:.2f}x (target >= 2x on CPU)")
        if hasattr(model.module.visual, "positional_embedding"):
            gflop = vit_gflop_per_image(model.module.visual)
            peak = gemm_gflops()
            naive_rate = gflop * n / t_naive
            print(f"roofline: {gflop:.1f} GFLOP per image; the naive loop computes at {naive_rate:.0f} GFLOP/s, "
                  f"fp32 ours at {gflop * n / t_fp32:.0f}, bf16 ours at {gflop * n / t_bf16:.0f}; this CPU's fp32 "
                  f"GEMM peak is {peak:.0f} GFLOP/s, so no fp32 path can beat the naive loop by more than "
                  f"{peak / naive_rate:.2f}x here")
    else:
        print(f"speed-up batched vs naive: {t_naive / seconds['ours']:.2f}x")
    print(f"speed-up warm cache vs recomputation: {t_cold / t_warm:.0f}x (target >= 50x)")


if __name__ == "__main__":
    main()

"""CT volume -> ILD montage: our pipeline vs the naive slice-by-slice loop, same model, same process.

Run: .venv/bin/python benchmarks/ct.py [--naive-sample 32] [--slice-stride-mm 32] [--device cuda]
     .venv/bin/python benchmarks/ct.py --coarse-to-fine [--budget 0.3] [--quick]   (exhaustive vs coarse-to-fine)

Ours: `read_ct`, lung mask, lung-filtered patch grid (integral image), windowed patches made
batch by batch, batched encoder (tensor preprocessing), 3-D NMS, montage, montage classification.
Naive: the same read and the same patch grid on the same slices, but every position on every
slice (no lung mask) and one patch at a time: crop -> window -> PIL -> open_clip preprocess ->
`encode_image`. ViT-B/16 on two CPU cores runs about 2.4 images/s, so the naive loop is timed on
a fixed random sample of its patches (seed 0) and extrapolated to its full count (the output
says so), and the default grid uses slices 32 mm apart (the pipeline's default is 16 mm: pass
`--slice-stride-mm 16`, about 2x the patches and time on both sides) to stay near 4 minutes on
CPU. The network has random weights (real weights change nothing about speed).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from napari_clipmed.ct.ild import ILD_PATCH_PROMPTS, PATCH_TEMPLATES, classify_montage, score_patches, select_top_k
from napari_clipmed.ct.io import read_ct
from napari_clipmed.ct.lung import lung_mask
from napari_clipmed.ct.montage import build_montage
from napari_clipmed.ct.patches import PatchConfig, apply_window, extract_patches
from napari_clipmed.models.loader import load_model
from napari_clipmed.models.cpuinfo import cpu_name, isa_summary
from napari_clipmed.models.registry import ModelSpec

CHEST_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "chest_ct.nii.gz"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Clock:
    """Wall and process CPU seconds since creation (CPU time is the steadier number on a shared machine)."""

    def __init__(self) -> None:
        sync()
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        sync()
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def ours(path: Path, model, config: PatchConfig, k: int, batch_size: int) -> dict:
    times: dict[str, tuple[float, float]] = {}
    total = clock = Clock()
    volume = read_ct(path)
    times["read"] = clock.read()
    clock = Clock()
    mask = lung_mask(volume)
    times["lung mask"] = clock.read()
    clock = Clock()
    patches = extract_patches(volume, mask, config)
    times["patch grid"] = clock.read()
    clock = Clock()
    scores = score_patches(model, patches, batch_size=batch_size)
    times["encode + score"] = clock.read()
    clock = Clock()
    chosen = select_top_k(scores.score, patches, k, config.size_mm)
    montage = build_montage(patches, scores.score, chosen)
    probs = classify_montage(model, montage)
    times["NMS + montage + classify"] = clock.read()
    times["total"] = total.read()
    return {"times": times, "n": len(patches), "probs": probs}


def naive_positions(volume, config: PatchConfig) -> np.ndarray:
    """(N, 3) (z, row, col) of every axial grid position on the slices our pipeline uses, lung or not."""
    everything = extract_patches(volume, None, config)  # same grid; mask=None keeps every position
    return np.stack([everything.slice_index, everything.row, everything.col], axis=1)


def naive_loop(volume, positions: np.ndarray, model, config: PatchConfig) -> np.ndarray:
    """What a first script does: per patch crop -> window -> PIL -> preprocess -> encode_image."""
    import open_clip
    from PIL import Image

    spec = model.spec
    preprocess = open_clip.image_transform(spec.image_size, is_train=False, mean=spec.mean, std=spec.std)
    text = model.encode_texts([PATCH_TEMPLATES[0].format(c) for c in ILD_PATCH_PROMPTS])
    size = int(round(config.size_mm / volume.spacing[1]))
    scores = []
    with torch.no_grad():
        for z, r, c in positions:
            crop = volume.array[z, r : r + size, c : c + size]
            grey = apply_window(crop, *config.window)
            x = preprocess(Image.fromarray(grey).convert("RGB")).unsqueeze(0).to(model.device)
            feature = torch.nn.functional.normalize(model.module.encode_image(x).float(), dim=-1)
            scores.append(float((feature.cpu().numpy() @ text.T).max()))
    sync()
    return np.asarray(scores)


def coarse_to_fine(path: Path, model, config: PatchConfig, k: int, batch_size: int, budget: float) -> None:
    """Exhaustive vs coarse-to-fine search through the pipeline, same volume, model and process.

    Times the wall clock (lung mask included) to the first montage (the first `MontageRound`; for the exhaustive run the
    only, final one) and to the final montage, and counts the patches each scored.
    """
    from dataclasses import replace

    from napari_clipmed.ct.pipeline import CTMontageConfig, MontageRound, iter_run_ct_montage
    from napari_clipmed.ct.search import SearchConfig

    volume = read_ct(path)
    runs = {}
    for mode in ("exhaustive", "coarse-to-fine"):
        search = SearchConfig(mode=mode, budget=budget) if mode != "exhaustive" else SearchConfig()
        cfg = replace(CTMontageConfig(), patch=config, k=k, batch_size=batch_size, search=search)
        clock, first = Clock(), None
        gen = iter_run_ct_montage(volume, model, cfg)  # lung mask included: what a user waits for
        while True:
            try:
                step = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            if first is None and isinstance(step, MontageRound):
                first = clock.read()
        final = clock.read()
        runs[mode] = (first or final, final, result)
        print(f"{mode:15s}: first montage {runs[mode][0][0]:7.1f} s wall, final montage {final[0]:7.1f} s wall "
              f"({final[1]:7.1f} s CPU), {result.patches_scored} of {len(result.patches)} patches scored in "
              f"{result.search_round} round(s)" + (f", stopped: {result.stop_reason}" if mode != "exhaustive" else ""),
              flush=True)
    (e_first, e_final, e), (c_first, c_final, c) = runs["exhaustive"], runs["coarse-to-fine"]
    same = len(np.intersect1d(e.chosen, c.chosen))
    print(f"coarse-to-fine vs exhaustive: first montage {e_first[0] / c_first[0]:.1f}x sooner, final montage "
          f"{e_final[0] / c_final[0]:.1f}x sooner, {c.patches_scored / e.patches_scored:.1%} of the patches scored; "
          f"{same} of the exhaustive top {len(e.chosen)} chosen (random weights: recall means nothing here, see "
          f"benchmarks/ct_search_quality.py)")




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", type=Path, default=CHEST_CT)
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16, or both (ours timed in fp32 and bf16)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--naive-sample", type=int, default=32, help="naive patches actually timed (0: all)")
    parser.add_argument("--size-mm", type=float, default=32.0)
    parser.add_argument("--stride-mm", type=float, default=16.0)
    parser.add_argument("--slice-stride-mm", type=float, default=32.0)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--coarse-to-fine", action="store_true",
                        help="exhaustive vs coarse-to-fine search (pipeline default grid: slices 16 mm apart)")
    parser.add_argument("--budget", type=float, default=0.3, help="coarse-to-fine patch budget (fraction of the grid)")
    parser.add_argument("--quick", action="store_true", help="coarse-to-fine smoke test: the tiny random model")
    args = parser.parse_args()
    if args.coarse_to_fine:
        if args.quick:
            model = load_model("tiny-random", device=args.device)
        else:
            model = load_model(ModelSpec(name="bench", arch=args.arch, description="benchmark", needs_weights=False,
                                         tokenizer="ViT-B-16"), device=args.device, precision=args.precision)
        config = PatchConfig(size_mm=args.size_mm, stride_mm=args.stride_mm)  # slices: the stride, as the pipeline
        print(f"model {model.spec.arch} (random weights) on {model.device_label}, torch threads "
              f"{torch.get_num_threads()}; CPU flags: {isa_summary()}; volume {args.volume.name}; {config.size_mm:g} mm "
              f"patches every {config.stride_mm:g} mm, slices {config.stride_mm:g} mm apart; k {args.k}")
        model.encode_images(np.zeros((2, model.spec.image_size, model.spec.image_size, 3), np.uint8))  # warm-up
        coarse_to_fine(args.volume, model, config, args.k, args.batch_size, args.budget)
        return

    spec = ModelSpec(name="bench", arch=args.arch, description="benchmark", needs_weights=False, tokenizer="ViT-B-16")
    model = load_model(spec, device=args.device, precision="auto" if args.precision == "both" else args.precision)
    print(f"CPU: {cpu_name()}; ISA flags: {isa_summary()}; precision {model.device_label}: "
          f"{model.precision_choice.detail if model.precision_choice else ''}")
    config = PatchConfig(size_mm=args.size_mm, stride_mm=args.stride_mm, slice_stride_mm=args.slice_stride_mm)
    print(f"model {args.arch} (random weights, {spec.image_size} px) on {model.device_label}, "
          f"torch threads {torch.get_num_threads()}; volume {args.volume.name}; {config.size_mm:g} mm patches every "
          f"{config.stride_mm:g} mm on slices {config.slice_stride_mm:g} mm apart, lung window")
    model.encode_images(np.zeros((2, 224, 224, 3), np.uint8))  # warm-up

    result = ours(args.volume, model, config, args.k, args.batch_size)
    times, n = result["times"], result["n"]
    wall, cpu = times["total"]
    print(f"ours : {n:6d} lung patches, batched: {wall:8.2f} s wall, {cpu:8.2f} s CPU "
          f"({n / times['encode + score'][0]:.2f} patches/s in the encoder)", flush=True)
    for stage, (w, c) in times.items():
        if stage != "total":
            print(f"         {stage:26s} {w:8.2f} s wall {c:8.2f} s CPU", flush=True)

    if args.precision == "both" and model.device.type == "cpu":  # the same run in the other precision
        other = "bf16" if model.precision == "fp32" else "fp32"
        again = ours(args.volume, replace(model, precision=other, text_memo={}), config, args.k, args.batch_size)
        (o_wall, o_cpu), (e_wall, _) = again["times"]["total"], again["times"]["encode + score"]
        print(f"ours in {other}: {o_wall:8.2f} s wall, {o_cpu:8.2f} s CPU ({n / e_wall:.2f} patches/s in the encoder); "
              f"{model.precision} is {o_wall / wall:.2f}x the speed of {other}", flush=True)

    clock = Clock()
    volume = read_ct(args.volume)
    read_wall, read_cpu = clock.read()
    positions = naive_positions(volume, config)
    n_all = len(positions)
    sample = n_all if args.naive_sample <= 0 else min(args.naive_sample, n_all)
    pick = np.sort(np.random.default_rng(0).choice(n_all, size=sample, replace=False))
    naive_loop(volume, positions[pick[:2]], model, config)  # warm-up
    clock = Clock()
    naive_loop(volume, positions[pick], model, config)
    s_wall, s_cpu = clock.read()
    naive_wall = read_wall + s_wall / sample * n_all
    naive_cpu = read_cpu + s_cpu / sample * n_all

    extrapolated = sample < n_all
    note = f"measured on {sample} random patches (seed 0)" + (", extrapolated to all" if extrapolated else "")
    print(f"naive: {n_all:6d} patches (every grid position, no lung mask), one at a time, {note}:")
    print(f"         {s_wall / sample * 1000:.0f} ms wall / {s_cpu / sample * 1000:.0f} ms CPU per patch; total "
          f"{'(extrapolated) ' if extrapolated else ''}{naive_wall:8.2f} s wall, {naive_cpu:8.2f} s CPU")
    enc_wall, enc_cpu = times["encode + score"]
    print(f"speed-up ours vs naive: {naive_wall / wall:.1f}x wall, {naive_cpu / cpu:.1f}x CPU "
          f"({n_all / n:.1f}x fewer patches; per patch {s_wall / sample * n / enc_wall:.1f}x wall, "
          f"{s_cpu / sample * n / enc_cpu:.1f}x CPU)")
    print(f"montage probabilities (random weights, meaningless): {result['probs']}")


if __name__ == "__main__":
    main()

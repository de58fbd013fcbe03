"""The quality gate's cost per tile vs the ViT-B/32 encoder's, on the same tiles in one process.

Run: .venv/bin/python benchmarks/quality.py [--n 256] [--device cpu] [--quick]

Target (issue #14): the gate (all quality measures + the verdict) costs under 10 % of the
ViT-B/32 image encoder per tile on a CPU. Both run on 224 x 224 tiles cut from the real H&E image
in ../shared/data (random pixels when it is absent), batch 64, interleaved in slices so a slow
spell of a shared machine hits both alike (`benchmarks/encode.py`). The encoder has random
weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode import interleaved, tiles

from napari_clipmed.models.loader import load_model
from napari_clipmed.models.registry import ModelSpec
from napari_clipmed.pathology.gate import Gate
from napari_clipmed.pathology.quality import measure
from napari_clipmed.models.cpuinfo import isa_summary




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="16 tiles, 2 rounds: a smoke test of the script")
    args = parser.parse_args()
    n, rounds = (16, 2) if args.quick else (args.n, args.rounds)

    spec = ModelSpec(name="bench", arch="ViT-B-32", description="benchmark", needs_weights=False, tokenizer="ViT-B-32")
    model = load_model(spec, device=args.device)
    gate = Gate.default()
    images = tiles(n)
    print(f"ViT-B/32 (random weights) on {model.device_label}, torch threads {torch.get_num_threads()}, "
          f"{len(images)} tiles of 224 x 224, CPU ISA: {isa_summary()}")

    def run_gate(x: np.ndarray) -> object:
        return gate.check(measure(x, batch_size=args.batch_size, device=args.device))

    model.encode_images(images[:4])  # warm-up both paths
    run_gate(images[:4])
    seconds = interleaved({"encoder": lambda x: model.encode_images(x, batch_size=args.batch_size),
                           "gate": run_gate}, images, rounds)
    per_tile = {k: v / len(images) * 1e3 for k, v in seconds.items()}
    ratio = seconds["gate"] / seconds["encoder"]
    print(f"encoder  {per_tile['encoder']:8.2f} ms/tile (baseline)")
    print(f"gate     {per_tile['gate']:8.2f} ms/tile   ratio {ratio:.3f} of the encoder "
          f"({'meets' if ratio < 0.10 else 'misses'} the < 0.10 target)")


if __name__ == "__main__":
    main()

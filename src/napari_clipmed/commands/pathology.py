"""`clipmed corrupt` and `clipmed tile`: the pathology corruptions and slide tiling from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from napari_clipmed.errors import InputError


def _save_png(image: np.ndarray, out: Path) -> None:
    """Write a PNG atomically: a temporary file in the same folder, then a rename."""
    from PIL import Image

    from napari_clipmed.io.atomic import atomic_path

    with atomic_path(out) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _corrupt(args: argparse.Namespace) -> int:
    from napari_clipmed.pathology.params import table_frame

    if args.list:
        frame = table_frame().drop(columns=["description", "source"])
        print(frame.to_string(index=False))
        return 0
    if args.image is None or args.out is None:
        raise InputError("give an IMAGE and --out FILE (or --list to see the corruptions)")
    from napari_clipmed.pathology.corrupt import corrupt
    from napari_clipmed.pathology.tiles import read_slide_level

    image = read_slide_level(args.image, args.level)
    out = corrupt(image, args.kind, args.severity, seed=args.seed)
    _save_png(out, Path(args.out))
    print(f"wrote {args.out} ({args.kind} at severity {args.severity:g}, {out.shape[1]} x {out.shape[0]} px)")
    return 0


def _tile(args: argparse.Namespace) -> int:
    from napari_clipmed.io.atomic import write_frame
    from napari_clipmed.pathology.tiles import read_slide_level, tile_image

    image = read_slide_level(args.slide, args.level)
    tiles = tile_image(image, args.size, stride=args.stride, min_tissue=args.min_tissue)
    folder = Path(args.out)
    names = []
    for (row, col), pixels in zip(tiles.coords, tiles.images):
        name = f"{Path(args.slide).stem}_r{row}_c{col}.png"
        _save_png(pixels, folder / name)
        names.append(name)
    frame = tiles.to_frame()
    frame.insert(0, "file", names)
    write_frame(folder / "tiles.csv", frame)
    print(f"wrote {len(tiles)} tiles of {args.size} px and tiles.csv to {folder}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from napari_clipmed.pathology.params import MAX_SEVERITY, list_corruptions

    p = subparsers.add_parser(
        "corrupt",
        help="corrupt an H&E image (PNG/JPEG/SVS/TIFF level) with one of the study's corruptions",
        description="Corrupt an image with brightness, contrast, blur, resolution, saturation, hue or markup ink.",
    )
    p.add_argument("image", nargs="?", help="image file (PNG, JPEG, SVS, TIFF)")
    p.add_argument("--kind", default="blur", help=f"one of: {', '.join(list_corruptions())} (default blur)")
    p.add_argument("--severity", type=float, default=2.0, help=f"0 (none) to {MAX_SEVERITY}, fractions allowed")
    p.add_argument("--seed", type=int, default=0, help="seed of the markup ink (default 0)")
    p.add_argument("--level", type=int, default=0, help="pyramid level of an SVS/TIFF (default 0)")
    p.add_argument("--out", help="output PNG")
    p.add_argument("--list", action="store_true", help="print the corruption table and exit")
    p.set_defaults(func=_corrupt)

    p = subparsers.add_parser(
        "tile",
        help="cut a slide level or image into tissue tiles (PNG files + tiles.csv)",
        description="Cut full tiles on a grid, keep those with enough tissue (Otsu on saturation).",
    )
    p.add_argument("slide", help="SVS/TIFF slide or PNG/JPEG image")
    p.add_argument("--size", type=int, default=224, help="tile side in pixels (default 224)")
    p.add_argument("--stride", type=int, default=None, help="step between tiles (default: the tile size)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="smallest tissue fraction kept (default 0.5)")
    p.add_argument("--level", type=int, default=0, help="pyramid level (default 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_tile)

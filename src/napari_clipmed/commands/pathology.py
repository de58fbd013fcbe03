"""`clipmed corrupt` and `clipmed tile`: the pathology corruptions and slide tiling from the command line."""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np

from napari_clipmed.commands._checks import preflight
from napari_clipmed.errors import InputError


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}


def _save_image(image: np.ndarray, out: Path) -> None:
    """Write an image atomically, in the format its suffix names (PNG, JPEG or TIFF)."""
    from PIL import Image

    from napari_clipmed.io.atomic import atomic_path

    fmt = IMAGE_FORMATS[out.suffix.lower()]
    with atomic_path(out) as tmp:
        Image.fromarray(image).save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def _corrupt(args: argparse.Namespace) -> int:
    from napari_clipmed.pathology.params import table_frame

    if args.list:
        frame = table_frame().drop(columns=["description", "source"])
        print(frame.to_string(index=False))
        return 0
    if args.image is None or args.out is None:
        raise InputError("give an IMAGE and --out FILE (or --list to see the corruptions)")
    preflight(args, out_files=[(args.out, tuple(IMAGE_FORMATS))])
    from napari_clipmed.ops.corrupt import CorruptRequest, run
    from napari_clipmed.ops.geometry import SourceImage
    from napari_clipmed.pathology.tiles import read_slide_level

    image = read_slide_level(args.image, args.level)
    out = run(CorruptRequest(SourceImage.of_array(image, Path(args.image).stem), args.kind, args.severity, args.seed)).pixels
    _save_image(out, Path(args.out))
    print(f"wrote {args.out} ({args.kind} at severity {args.severity:g}, {out.shape[1]} x {out.shape[0]} px)")
    return 0


def _tile(args: argparse.Namespace) -> int:
    from napari_clipmed.io.atomic import write_frame
    from napari_clipmed.io.runfolder import RunFolder
    from napari_clipmed.pathology.tiles import read_slide_level, tile_image

    preflight(args, out_dir=args.out)
    image = read_slide_level(args.slide, args.level)
    tiles = tile_image(image, args.size, stride=args.stride, min_tissue=args.min_tissue)
    if len(tiles) == 0:
        raise InputError(
            f"no {args.size} px tile of {Path(args.slide).name} has a tissue fraction of {args.min_tissue:g} or more; "
            "lower --min-tissue or --size (nothing was written)"
        )
    folder = Path(args.out)
    stem = Path(args.slide).stem
    names = [f"{stem}_r{row}_c{col}.png" for row, col in tiles.coords]
    with RunFolder(folder, command="tile"):  # an interrupted run stays marked "interrupted" in status.json
        (folder / "tiles.csv").unlink(missing_ok=True)  # the table lists complete runs only
        keep = set(names)
        for stale in folder.glob(f"{glob.escape(stem)}_r*_c*.png"):  # tiles of an earlier run at another size
            if stale.name not in keep:
                stale.unlink()
        for name, pixels in zip(names, tiles.images):
            _save_image(pixels, folder / name)
        frame = tiles.to_frame()
        frame.insert(0, "file", names)
        write_frame(folder / "tiles.csv", frame)
    print(f"wrote {len(tiles)} tiles of {args.size} px and tiles.csv to {folder}")
    return 0


def _label(args: argparse.Namespace) -> int:
    """Zero-shot labels on an image's tiles (as the Zero-shot labels widget): labels.csv + config.json."""
    from napari_clipmed.commands._progress import CliProgress
    from napari_clipmed.commands.models import model_from_args
    from napari_clipmed.ops import zeroshot as op
    from napari_clipmed.ops.geometry import SourceImage
    from napari_clipmed.pathology.tiles import read_slide_level
    from napari_clipmed.progress import run_generator
    from napari_clipmed.zeroshot import PromptSet

    if (args.classes is None) == (args.preset is None):
        raise InputError("give the classes with --classes or --preset (one of them)")
    prompts = PromptSet.parse(args.preset or args.classes, args.templates)
    image = read_slide_level(args.image, args.level)
    request = op.ZeroShotRequest(SourceImage.of_array(image, Path(args.image).stem), prompts,
                                 tile_size=args.tile_size, stride=args.stride, tissue_only=not args.all_tiles,
                                 batch_size=args.batch_size)
    model = model_from_args(args)
    printer = CliProgress(args.quiet)
    try:
        result = run_generator(op.iter_run(request, model), printer)
    finally:
        printer.close()
    files = result.save(args.out)
    print(f"labelled {len(result.boxes)} tiles; wrote {', '.join(p.name for p in files.values())} to {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from napari_clipmed.commands.models import add_model_arguments

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
    p.add_argument("--out", help="output image: .png, .jpg or .tif (the suffix sets the format)")
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

    p = subparsers.add_parser(
        "label",
        help="zero-shot labels on the tiles of an image (as the Zero-shot labels widget)",
        description="Cut an image into tiles (tissue only by default), classify each against text prompts, "
        "write labels.csv (label, probabilities, pixel box per tile) and config.json.",
    )
    p.add_argument("image", help="image file (PNG, JPEG, SVS, TIFF)")
    p.add_argument("--classes", help="classes: 'a, b' or 'name: synonym; synonym' per line, or a YAML/JSON file")
    p.add_argument("--preset", help="prompt preset name or YAML/JSON file")
    p.add_argument("--templates", help="prompt templates separated by ';', each with {}")
    p.add_argument("--tile-size", type=int, default=224, help="tile side in pixels (default 224)")
    p.add_argument("--stride", type=int, default=None, help="step between tiles (default: the tile size)")
    p.add_argument("--all-tiles", action="store_true", help="label every tile, not only those with tissue")
    p.add_argument("--level", type=int, default=0, help="pyramid level of an SVS/TIFF (default 0)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--out", required=True, help="output folder")
    add_model_arguments(p)
    p.set_defaults(func=_label)

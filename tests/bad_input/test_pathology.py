"""Bad input to `corrupt`, `tile`, `zeroshot` and the image readers: one line, exit code 2, nothing written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_clipmed.datasets import read_image, read_images
from napari_clipmed.io.runfolder import read_status
from napari_clipmed.pathology.tiles import read_slide_level

from .conftest import PATHOLOGY, one_line_error, tree

HE = PATHOLOGY / "he_carcinoma_tiatoolbox.png"
SVS = PATHOLOGY / "cmu_small_region.svs"
DOCS = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def he_crop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("he") / "he_crop.png"
    Image.open(HE).convert("RGB").crop((0, 0, 160, 120)).save(path)
    return path


@pytest.fixture(scope="module")
def grey16(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A real 16-bit greyscale PNG made from the H&E sample (the 8-bit luminance x 257) and its 8-bit original."""
    grey8 = np.asarray(Image.open(HE).convert("L").crop((0, 0, 96, 96)))
    path = tmp_path_factory.mktemp("g16") / "grey16.png"
    Image.fromarray(grey8.astype(np.uint16) * 257).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")
    return path, grey8


def test_sixteen_bit_png_reads_by_the_encoder_rule(grey16: tuple[Path, np.ndarray]) -> None:
    path, grey8 = grey16
    expected = np.repeat(grey8[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(read_image(path), expected)  # zeroshot, encode, robustness
    np.testing.assert_array_equal(read_slide_level(path), expected)  # corrupt, tile
    assert read_image(path).mean() < 250  # not the all-white image of Pillow's RGB conversion


def test_sixteen_bit_tile_through_tile_and_corrupt(cli, tmp_path: Path, grey16: tuple[Path, np.ndarray]) -> None:
    path, grey8 = grey16
    code, _, _ = cli("corrupt", path, "--kind", "brightness", "--severity", "0", "--out", tmp_path / "c.png")
    assert code == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "c.png"))[..., 0], grey8)


def test_tiny_and_truncated_images_are_skipped_and_reported(tmp_path: Path, he_crop: Path) -> None:
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (200, 100, 150)).save(tiny)
    cut = tmp_path / "cut.png"
    cut.write_bytes(he_crop.read_bytes()[:2000])
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        result = read_images([he_crop, tiny, cut])
    assert list(result.indices) == [0]
    reasons = dict(result.failed)
    assert "too small" in reasons[str(tiny)] and str(cut) in reasons


@pytest.mark.parametrize(
    ("out", "needle"),
    [("folder", "is an existing folder"), ("bmp", "must end in .png or .jpg"), ("proc", "cannot create files in /proc")],
)
def test_corrupt_output_paths(cli, tmp_path: Path, he_crop: Path, out: str, needle: str) -> None:
    target = {"folder": tmp_path, "bmp": tmp_path / "x.bmp", "proc": Path("/proc/x.png")}[out]
    before = tree(tmp_path)
    code, _, err = cli("corrupt", he_crop, "--out", target)
    assert code == 2
    one_line_error(err, "corrupt", needle)
    assert tree(tmp_path) == before


def test_corrupt_writes_the_format_its_suffix_names(cli, tmp_path: Path, he_crop: Path) -> None:
    for suffix, fmt in ((".jpg", "JPEG"), (".png", "PNG"), (".tif", "TIFF")):
        assert cli("corrupt", he_crop, "--out", tmp_path / f"c{suffix}")[0] == 0
        with Image.open(tmp_path / f"c{suffix}") as im:
            assert im.format == fmt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jpg", "c.png", "c.tif"]  # no temporary files


@pytest.mark.parametrize("command", ["corrupt", "tile"])
def test_truncated_svs_is_one_line(cli, tmp_path: Path, command: str) -> None:
    cut = tmp_path / "cut.svs"
    cut.write_bytes(SVS.read_bytes()[: SVS.stat().st_size // 2])
    out = tmp_path / ("out.png" if command == "corrupt" else "tiles")
    code, _, err = cli(command, cut, "--out", out)
    assert code == 2
    one_line_error(err, command, "cut.svs", "truncated or corrupt")
    assert not out.exists()


def test_tile_without_a_qualifying_tile_writes_nothing(cli, tmp_path: Path, he_crop: Path) -> None:
    code, _, err = cli("tile", he_crop, "--size", "100", "--min-tissue", "1.0", "--out", tmp_path / "tiles")
    assert code == 2
    one_line_error(err, "tile", "lower --min-tissue")
    assert tree(tmp_path / "tiles") == []


def test_retiling_at_another_size_leaves_no_stale_tiles(cli, tmp_path: Path, he_crop: Path) -> None:
    out = tmp_path / "tiles"
    assert cli("tile", he_crop, "--size", "32", "--min-tissue", "0", "--out", out)[0] == 0
    assert len(list(out.glob("*.png"))) == 15
    assert read_status(out)["status"] == "complete"
    assert cli("tile", he_crop, "--size", "64", "--min-tissue", "0", "--out", out)[0] == 0
    listed = set(np.genfromtxt(out / "tiles.csv", delimiter=",", dtype=str, skip_header=1)[:, 0])
    assert {p.name for p in out.glob("*.png")} == listed and len(listed) == 2
    with Image.open(out / min(listed)) as im:
        assert im.size == (64, 64)


def test_interrupted_tile_run_is_marked(cli, tmp_path: Path, he_crop: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import napari_clipmed.commands.pathology as command

    calls = []

    def interrupted(image, out):  # the third tile write is where Ctrl-C lands
        calls.append(out)
        if len(calls) == 3:
            raise KeyboardInterrupt
        Image.fromarray(image).save(out)

    monkeypatch.setattr(command, "_save_image", interrupted)
    out = tmp_path / "tiles"
    code, _, err = cli("tile", he_crop, "--size", "32", "--min-tissue", "0", "--out", out)
    assert code == 130 and "interrupted" in err
    status = read_status(out)
    assert status["status"] == "interrupted" and not (out / "tiles.csv").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--classes", ",,,"], "at least two classes"),
        (["--classes", "Tumour,tumour!"], "differ only in case or punctuation"),
        (["--classes", "a,b", "--templates", "a {} and {}"], "needs a {}"),
        (["--classes", "a,b", "--templates", ";;"], "at least one prompt template"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--device", "cuda"] if not __import__("torch").cuda.is_available() else ["--device", "cuda:99"], "cuda"),
    ],
)
def test_zeroshot_values_are_checked_before_the_model(cli, tmp_path: Path, tile_folder: Path, extra, needle) -> None:
    code, _, err = cli("zeroshot", "--data", tile_folder, "--model", "tiny-random", "--out", tmp_path / "z.csv", *extra)
    assert code == 2
    one_line_error(err, "zeroshot", needle)
    assert tree(tmp_path) == []


def test_zeroshot_manifest_encoding_and_duplicates(cli, tmp_path: Path, tile_folder: Path) -> None:
    tiles = sorted(tile_folder.rglob("*.png"))
    latin = tmp_path / "latin.csv"
    latin.write_bytes(("path,label\n" + "".join(f"{p},tumeur bénigne\n" for p in tiles[:2])
                       + "".join(f"{p},stroma\n" for p in tiles[-2:])).encode("latin-1"))
    code, _, err = cli("zeroshot", "--data", latin, "--model", "tiny-random", "--out", tmp_path / "z.csv")
    assert code == 2
    one_line_error(err, "zeroshot", "not UTF-8", "latin.csv")
    dup = tmp_path / "dup.csv"
    dup.write_text(f"path,label\n{tiles[0]},a\n{tiles[1]},b\n{tiles[0]},b\n", encoding="utf-8")
    code, _, err = cli("zeroshot", "--data", dup, "--model", "tiny-random", "--out", tmp_path / "z.csv")
    assert code == 2
    one_line_error(err, "zeroshot", "line 4 gives label 'b' against 'a' on line 2")
    assert not (tmp_path / "z.csv").exists()


def test_zeroshot_skips_a_one_pixel_tile_and_names_it(cli, tmp_path: Path, tile_folder: Path) -> None:
    data = tmp_path / "tiles"
    for cls in ("tumour", "stroma"):
        (data / cls).mkdir(parents=True)
        for p in sorted((tile_folder / cls).glob("*.png"))[:2]:
            (data / cls / p.name).write_bytes(p.read_bytes())
    Image.new("RGB", (1, 1)).save(data / "tumour" / "dot.png")
    code, _, err = cli("zeroshot", "--data", data, "--model", "tiny-random", "--out", tmp_path / "z.csv", "--quiet")
    assert code == 0, err
    assert "dot.png" in err and "Traceback" not in err and "warnings.warn" not in err
    assert re.search(r"clipmed zeroshot: warning: skipped 1 unreadable", err)


def test_documented_corrupt_import_works() -> None:
    import napari_clipmed.pathology.corrupt  # noqa: F401 - the submodule imported first, as in a real session
    from napari_clipmed.pathology import corrupt

    image = np.asarray(Image.open(HE).convert("RGB").crop((0, 0, 64, 64)))
    from napari_clipmed.pathology.corrupt import corrupt as function

    np.testing.assert_array_equal(corrupt(image, "blur", 2), function(image, "blur", 2))


SKIP = re.compile(r"<!--\s*snippet:\s*skip\s*\((?P<why>[^)]+)\)\s*-->\s*$")
STAND_IN = re.compile(r"<!--\s*snippet:\s*stand-ins=(?P<name>[\w-]+)\s*\((?P<why>[^)]+)\)\s*-->\s*$")


def snippets() -> list[tuple[str, str, str | None, str | None]]:
    """(file:line, code, skip reason, stand-ins name) of every ```python block in README.md and docs/*.md."""
    found = []
    for path in [DOCS / "README.md", *sorted((DOCS / "docs").glob("*.md"))]:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.strip() == "```python":
                end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
                before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "").strip()
                skip, stand_in = SKIP.match(before), STAND_IN.match(before)
                found.append((f"{path.name}:{i + 1}", "\n".join(lines[i + 1 : end]), skip and skip["why"],
                              stand_in and stand_in["name"]))
    return found


def _check_imports(code: str, where: str) -> None:
    """Compile a snippet and import every name it imports from napari_clipmed (docs rot there first)."""
    import ast
    import importlib
    import importlib.util

    for node in ast.walk(ast.parse(compile(code, where, "exec", flags=ast.PyCF_ONLY_AST))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("napari_clipmed"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
                    f"{where}: {node.module} has no {alias.name}")


def test_snippets_that_are_skipped_are_few_and_say_why() -> None:
    from doc_stand_ins import STAND_INS

    found = snippets()
    assert found and all(why is None or len(why) > 10 for _, _, why, _ in found)
    assert sum(why is not None for _, _, why, _ in found) <= 1  # only what needs a SLURM cluster
    assert {name for *_, name in found if name} == set(STAND_INS)  # every stand-in set is used, none is missing


@pytest.mark.parametrize(("where", "code", "why", "stand_ins"), snippets(), ids=[where for where, *_ in snippets()])
def test_doc_snippet_runs(where: str, code: str, why: str | None, stand_ins: str | None, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    if why:  # not runnable here, but what it imports must exist
        _check_imports(code, where)
        pytest.skip(f"{where}: {why}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / SVS.name).symlink_to(SVS)  # the docs name the sample files as if they were in the working folder
    (tmp_path / HE.name).symlink_to(HE)
    names: dict[str, object] = {"__name__": "__snippet__"}
    if stand_ins:  # real weights and the user's own files: tiny models and files built from the samples
        from doc_stand_ins import STAND_INS, model_stand_ins

        names |= STAND_INS[stand_ins](tmp_path)
        for real, tiny in model_stand_ins(tmp_path).items():
            code = code.replace(real, tiny)
    try:
        exec(compile(code, where, "exec"), names)  # noqa: S102 - our own documentation
    finally:  # a snippet that opens a napari window (the scripted API) runs under the suite's X display
        if "napari" in sys.modules and "napari.Viewer(" in code:
            sys.modules["napari"].Viewer.close_all()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("classes: [tumour, stroma\n", "not valid YAML/JSON"),
        ('{"classes": 5}', "classes must be a list of names or a mapping"),
        ("- a\n- b\n", "must be a mapping"),
        ("classes: [tumour, stroma]\ntemplates: ['a {} and {}']\n", "needs a {}"),
    ],
)
def test_malformed_preset_files(cli, tmp_path: Path, tile_folder: Path, text: str, needle: str) -> None:
    preset = tmp_path / "prompts.yaml"
    preset.write_text(text, encoding="utf-8")
    code, _, err = cli("zeroshot", "--data", tile_folder, "--model", "tiny-random", "--preset", preset,
                       "--out", tmp_path / "z.csv")
    assert code == 2
    one_line_error(err, "zeroshot", needle)
    assert not (tmp_path / "z.csv").exists()

"""`clipmed models`, `convert` and `encode` from the command line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_clipmed.cli import main
from napari_clipmed.models.loader import load_model


def test_models_lists_every_model_and_what_is_missing(tmp_path, capsys) -> None:
    assert main(["models", "--weights-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pathclip" in out and "missing: put pathclip-base.pt there" in out
    assert "tiny-random" in out and "no weights needed" in out


def test_models_shows_licence_and_gated_columns(tmp_path, capsys) -> None:
    assert main(["models", "--weights-dir", str(tmp_path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:] if line.startswith("  ") and
            line.split() and not line.startswith("   ")}
    assert rows["medsiglip"].split()[1] == "yes" and "Health AI Developer Foundations" in rows["medsiglip"]
    assert rows["pathgen-clip"].split()[1] == "yes"
    assert rows["biomedclip"].split()[1] == "no" and "MIT" in rows["biomedclip"]
    assert "missing: put bundle folder biomedclip there" in rows["biomedclip"]
    for name in ("quiltnet-b-16", "quiltnet-b-16-pmb", "omiclip"):
        assert rows[name].split()[1] == "no"


def test_convert_then_load_as_local(tmp_path, small_hf_clip) -> None:
    hf = small_hf_clip(4)
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "plip-open_clip.pt"
    assert main(["convert", str(tmp_path / "hf"), str(out)]) == 0
    direct = load_model("plip", weights=tmp_path / "hf", device="cpu")
    local = load_model("local", weights=out, device="cpu")
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(local.encode_images(images), direct.encode_images(images), atol=1e-6)


def test_encode_writes_npz_and_uses_cache(tmp_path, capsys) -> None:
    paths = []
    for i in range(3):
        path = tmp_path / f"tile{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    args = ["encode", *paths, "--out", str(tmp_path / "emb.npz"), "--model", "tiny-random", "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 0
    data = np.load(tmp_path / "emb.npz")
    assert data["embeddings"].shape == (3, 64)
    assert list(data["paths"]) == paths


def test_missing_weights_is_one_line_exit_2(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CLIPMED_OFFLINE", "1")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    code = main(["encode", str(image), "--out", str(tmp_path / "e.npz"), "--model", "pathclip", "--weights-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("clipmed encode: error: no weights for model 'pathclip'")
    assert "Traceback" not in err and not (tmp_path / "e.npz").exists()


def test_unknown_model_is_exit_2(tmp_path, capsys) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    with pytest.raises(SystemExit):
        main(["encode"])
    assert main(["encode", str(image), "--out", str(tmp_path / "e.npz"), "--model", "nope"]) == 2
    assert "known models" in capsys.readouterr().err

"""Weights bundles: `clipmed models pull` against a local hub (the real huggingface_hub client over HTTP on
127.0.0.1), `verify`, loading offline, and every bad case leaving nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_families
from hub_server import HubServer

from napari_clipmed.errors import BundleError, GatedModelError, WeightsNotFoundError
from napari_clipmed.models.bundle import read_manifest, sha256_of, verify
from napari_clipmed.models.loader import load_model
from napari_clipmed.models.offline import no_network

SRC = Path(__file__).resolve().parents[2] / "src"
BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
TOKEN = "hf_test_token"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    biomed, _ = tiny_families.biomedclip_like(root / "biomedclip")
    siglip, _, _ = tiny_families.siglip(root / "siglip")
    return biomed, siglip


@pytest.fixture()
def hub(published):
    biomed, siglip = published
    model_repo = {k: v for k, v in HubServer.folder(biomed).items() if not k.startswith("text/")}
    model_repo["README.md"] = b"# tiny BiomedCLIP-like model\n"
    text_repo = {k.removeprefix("text/"): v for k, v in HubServer.folder(biomed).items() if k.startswith("text/")}
    text_repo["pytorch_model.bin"] = b"BERT weights a bundle must not fetch (the CLIP checkpoint holds them)"
    repos = {BIOMEDCLIP_REPO: model_repo, tiny_families.BERT_HUB_ID: text_repo,
             "google/medsiglip-448": HubServer.folder(siglip)}
    with HubServer(repos, gated={"google/medsiglip-448"}, token=TOKEN) as server:
        yield server


def _cli(args: list[str], hub: HubServer, tmp_path: Path, token: str | None = None) -> subprocess.CompletedProcess:
    """`clipmed ...` in a fresh process whose hub endpoint is the local server (set by environment variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CLIPMED_OFFLINE"))}
    env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "PYTHONPATH": str(SRC),
            "HF_HUB_DISABLE_TELEMETRY": "1"}
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "napari_clipmed.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def _error_lines(done: subprocess.CompletedProcess) -> list[str]:
    """The CLI's error lines (progress lines aside): there must be exactly one."""
    return [line for line in done.stderr.splitlines() if "error:" in line or "Traceback" in line]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


def test_pull_makes_a_bundle_that_loads_and_verifies_offline(hub, published, tmp_path) -> None:
    target = tmp_path / "bundles" / "biomedclip"
    done = _cli(["models", "pull", "biomedclip", "--to", str(target)], hub, tmp_path)
    assert done.returncode == 0, done.stderr
    assert ("GET", f"api/models/{BIOMEDCLIP_REPO}") in hub.requests  # the real client talked to our server
    manifest = read_manifest(target)
    names = {f.path for f in manifest.files}
    assert names == {"open_clip_config.json", "open_clip_pytorch_model.bin", "text/config.json", "text/vocab.txt",
                     "text/tokenizer.json", "text/tokenizer_config.json"}
    assert not (target / "text" / "pytorch_model.bin").exists() and not (target / "README.md").exists()
    assert not (target / ".cache").exists()
    for entry in manifest.files:
        assert entry.sha256 == sha256_of(target / entry.path) and entry.size == (target / entry.path).stat().st_size
    assert manifest.model == "biomedclip" and manifest.licence.startswith("MIT") and manifest.gated is False
    assert manifest.revision == hub.shas[BIOMEDCLIP_REPO] and manifest.fetched
    assert manifest.files[0].source.startswith(f"{BIOMEDCLIP_REPO}@{manifest.revision}/")
    assert _leftovers(target.parent) == ["biomedclip"]

    biomed, _ = published
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    with no_network():
        ours = load_model("biomedclip", weights=target, device="cpu")
        direct = load_model("biomedclip", weights=biomed, device="cpu")
        np.testing.assert_array_equal(ours.encode_images(images), direct.encode_images(images))
        result = verify(target)
    assert result.files == 6 and result.embed_dim == 16
    checked = _cli(["models", "verify", str(target)], hub, tmp_path)
    assert checked.returncode == 0 and "6 files match" in checked.stdout, checked.stderr


def test_weights_folder_download_is_a_bundle(hub, tmp_path, monkeypatch) -> None:
    """A model missing from the weights folder is pulled there as a bundle when online (in this process)."""
    import huggingface_hub.constants

    for name in ("CLIPMED_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    model = load_model("biomedclip", weights_dir=tmp_path, device="cpu")
    assert model.weights_path == tmp_path / "biomedclip" and read_manifest(tmp_path / "biomedclip").model == "biomedclip"
    with no_network():  # and from now on it loads without the network
        again = load_model("biomedclip", weights_dir=tmp_path, device="cpu", allow_download=False)
    assert again.weights_hash == model.weights_hash


def test_gated_model_without_credentials_writes_nothing(hub, tmp_path) -> None:
    target = tmp_path / "out" / "medsiglip"
    done = _cli(["models", "pull", "medsiglip", "--to", str(target)], hub, tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert len(_error_lines(done)) == 1 and "gated" in done.stderr and "HF_TOKEN" in done.stderr
    assert not hub.requests and not target.parent.exists()


def test_gated_model_with_refused_credentials_writes_nothing(hub, tmp_path) -> None:
    target = tmp_path / "out" / "medsiglip"
    done = _cli(["models", "pull", "medsiglip", "--to", str(target)], hub, tmp_path, token="hf_wrong")
    assert done.returncode == 2 and "refused" in done.stderr and len(_error_lines(done)) == 1
    assert any(path.startswith("google/medsiglip-448/resolve/") for _, path in hub.requests)
    assert _leftovers(target.parent) == []


def test_gated_model_with_credentials_pulls_and_loads_as_siglip(hub, tmp_path) -> None:
    target = tmp_path / "medsiglip"
    done = _cli(["models", "pull", "medsiglip", "--to", str(target)], hub, tmp_path, token=TOKEN)
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(target)
    assert manifest.gated and manifest.backend == "hf_siglip" and "Health AI" in manifest.licence
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {
        f.path for f in manifest.files}
    with no_network():
        model = load_model("medsiglip", weights=target, device="cpu")
    assert model.scoring == "sigmoid" and model.spec.image_size == 32


def test_gated_check_in_process_before_any_request(hub, tmp_path, monkeypatch) -> None:
    from napari_clipmed.models.bundle import pull

    for name in ("CLIPMED_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no stored login
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(GatedModelError, match="gated"):
        pull("medsiglip", tmp_path / "b", endpoint=hub.url)
    assert not hub.requests and not (tmp_path / "b").exists()


def test_repository_missing_from_hub_is_one_error_and_nothing_written(hub, tmp_path) -> None:
    target = tmp_path / "out" / "quilt"
    done = _cli(["models", "pull", "quiltnet-b-16", "--to", str(target)], hub, tmp_path)
    assert done.returncode == 2 and "wisdomik/QuiltNet-B-16" in done.stderr
    assert len(_error_lines(done)) == 1 and _leftovers(target.parent) == []


def test_offline_pull_is_refused(tmp_path, monkeypatch) -> None:
    from napari_clipmed.models.bundle import pull

    monkeypatch.setenv("CLIPMED_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="downloads are off"):
        pull("biomedclip", tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.fixture()
def bundle(published, tmp_path):
    """A bundle made by hand from the published folder (as `pull` makes it), to damage."""
    from napari_clipmed.models.bundle import BundleFile, Manifest

    biomed, _ = published
    target = tmp_path / "biomedclip"
    shutil.copytree(biomed, target)
    files = tuple(BundleFile(p.relative_to(target).as_posix(), p.stat().st_size, sha256_of(p), "test")
                  for p in sorted(target.rglob("*")) if p.is_file())
    manifest = Manifest("biomedclip", "open_clip", "test", "0" * 40, "MIT", False, "2026-01-01T00:00:00+00:00", files)
    (target / "manifest.json").write_text(manifest.to_json())
    return target


def test_corrupt_file_fails_verify_by_hash(bundle) -> None:
    weights = bundle / "open_clip_pytorch_model.bin"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # same size, different content
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="open_clip_pytorch_model.bin does not match its sha256"):
        verify(bundle)


def test_missing_file_is_named_on_load_and_verify(bundle, tmp_path) -> None:
    (bundle / "text" / "vocab.txt").unlink()
    for attempt in (lambda: load_model("biomedclip", weights=bundle, device="cpu"), lambda: verify(bundle)):
        with pytest.raises(BundleError) as info:
            attempt()
        assert "text/vocab.txt is missing" in str(info.value) and str(bundle) in str(info.value)


def test_cli_verify_of_a_damaged_bundle_is_one_line_exit_2(bundle, tmp_path) -> None:
    (bundle / "open_clip_config.json").write_text("{}")
    from napari_clipmed.cli import main

    assert main(["models", "verify", str(bundle)]) == 2


def test_bundle_of_another_model_says_which(bundle) -> None:
    with pytest.raises(BundleError, match="holds model 'biomedclip', not 'quiltnet-b-16-pmb'"):
        load_model("quiltnet-b-16-pmb", weights=bundle, device="cpu")
    with no_network():
        assert load_model("local", weights=bundle, device="cpu").spec.name == "biomedclip"


def test_manifest_that_is_not_ours_is_refused(bundle) -> None:
    (bundle / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(BundleError, match="not a napari-clipmed bundle manifest"):
        load_model("biomedclip", weights=bundle, device="cpu")

"""`clipmed embed` (tiles and CT patches) and the shared embedding store, in-process (the cluster run is in
test_distributed.py).

Tiles are cut from the real H&E sample; the tiny random model embeds them. The store must give back
exactly what the model computes, resume without re-embedding, and its saved index must answer
`clipmed retrieve` like an index built directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_clipmed.cli import main
from napari_clipmed.errors import InputError
from napari_clipmed.models.cache import image_key
from napari_clipmed.models.store import EmbeddingStore
from napari_clipmed.ops.embed import EmbedRequest, run
from napari_clipmed.retrieval import EmbeddingIndex

HE = Path(__file__).resolve().parents[2] / "shared" / "data" / "pathology" / "he_carcinoma_tiatoolbox.png"
CHEST_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "chest_ct.nii.gz"


def write_tiles(root: Path, per_class: int = 6) -> Path:
    """ImageFolder with two classes of 48 x 48 tiles from two regions of the H&E image, plus one broken file."""
    image = np.asarray(Image.open(HE).convert("RGB"))
    for c, (name, y0) in enumerate((("tumour", 100), ("stroma", 600))):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.ascontiguousarray(image[y0 : y0 + 48, 100 + 60 * i : 148 + 60 * i])).save(
                root / name / f"t{i}.png")
    (root / "stroma" / "zz_broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def tiny():
    from napari_clipmed.models.loader import load_model

    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiles(tmp_path_factory.mktemp("embed") / "tiles")


def test_embed_fills_the_store_with_what_the_model_computes(tiny, tiles: Path, tmp_path: Path) -> None:
    result = run(EmbedRequest(tiles, tmp_path / "store", chunk_size=5, batch_size=4), tiny)
    assert result.n_images == 12 and len(result.run.keys) == 3 and not result.run.failed
    assert [Path(p).name for p, _ in result.skipped] == ["zz_broken.png"]
    index = EmbeddingIndex.load(result.index_path)
    assert result.index_path.parent == result.store_dir and index.model_id.startswith("tiny-random:")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in index.ids]
    np.testing.assert_allclose(index.embeddings, tiny.encode_images(images), atol=1e-6)
    assert sorted(set(index.labels)) == ["stroma", "tumour"]
    store = EmbeddingStore(tmp_path / "store").for_signature(tiny.signature)
    keys = [image_key(tiny.signature, im) for im in images]
    got = store.get_many(keys)
    assert len(store) == 12 and set(got) == set(keys)
    np.testing.assert_array_equal(np.stack([got[k] for k in keys]), index.embeddings)


def test_a_second_run_reuses_every_chunk_and_gives_the_same_index(tiny, tiles: Path, tmp_path: Path) -> None:
    first = run(EmbedRequest(tiles, tmp_path / "store", chunk_size=5), tiny)
    again = run(EmbedRequest(tiles, tmp_path / "store", chunk_size=5), tiny)
    assert set(again.run.reused) == set(first.run.keys) and not again.run.computed
    a, b = EmbeddingIndex.load(first.index_path), EmbeddingIndex.load(again.index_path)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    assert list(a.ids) == list(b.ids)


def test_the_store_serves_as_the_encoding_cache(tiny, tiles: Path, tmp_path: Path) -> None:
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((tiles / "tumour").glob("*.png"))]
    store = EmbeddingStore(tmp_path / "store")
    first = tiny.encode_images(images, cache=store)
    calls = []
    hook = tiny.module.visual.register_forward_hook(lambda *a: calls.append(1))
    try:
        second = tiny.encode_images(images, cache=store)
    finally:
        hook.remove()
    assert not calls  # every image came from the store
    np.testing.assert_array_equal(first, second)


def test_retrieve_reads_the_index_saved_next_to_the_store(tiny, tiles: Path, tmp_path: Path) -> None:
    assert main(["embed", str(tiles), "--store", str(tmp_path / "store"), "--model", "tiny-random", "--device", "cpu",
                 "--chunk-size", "4", "--quiet", "--report", str(tmp_path / "report")]) == 0
    index_path = next((tmp_path / "store").glob("*/index.npz"))
    assert len(pd.read_csv(tmp_path / "report" / "chunks.csv")) == 4  # 13 files (one broken), 4 per chunk
    query = tiles / "tumour" / "t0.png"
    assert main(["retrieve", "--gallery", str(index_path), "--query", str(query), "--model", "tiny-random",
                 "--device", "cpu", "--k", "3", "--out", str(tmp_path / "hits.csv"), "--quiet"]) == 0
    hits = pd.read_csv(tmp_path / "hits.csv")
    assert len(hits) == 3 and Path(hits.iloc[0]["id"]).name == "t0.png"


def test_bad_requests_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nothing to embed"):
        EmbedRequest(tmp_path / "missing", tmp_path / "store")
    with pytest.raises(InputError, match="chunk_size"):
        EmbedRequest(tmp_path, tmp_path / "store", chunk_size=0)
    assert not (tmp_path / "store").exists()


def test_ct_volumes_embed_one_vector_per_lung_patch(tiny, tmp_path: Path) -> None:
    import SimpleITK as sitk

    from napari_clipmed.ct.io import read_ct
    from napari_clipmed.ct.lung import lung_mask
    from napari_clipmed.ct.patches import PatchConfig, extract_patches

    ct = read_ct(CHEST_CT)
    for i, z0 in enumerate((50, 90)):
        img = sitk.GetImageFromArray(ct.array[z0 : z0 + 16 : 2, ::2, ::2])
        img.SetSpacing((3.0, 3.0, 3.0))
        sitk.WriteImage(img, str(tmp_path / f"v{i}.nii.gz"))
    (tmp_path / "volumes.csv").write_text("path,label\nv0.nii.gz,upper\nv1.nii.gz,lower\n")
    patch = PatchConfig(stride_mm=24.0, slice_stride_mm=24.0)
    result = run(EmbedRequest(tmp_path / "volumes.csv", tmp_path / "store", ct=True, patch=patch), tiny)
    index = EmbeddingIndex.load(result.index_path)
    volume = read_ct(tmp_path / "v1.nii.gz")
    patches = extract_patches(volume, lung_mask(volume), patch)
    rows = [i for i, name in enumerate(index.ids) if name.startswith(str((tmp_path / "v1.nii.gz").resolve()) + "#")]
    assert len(rows) == len(patches) > 0 and set(index.labels[rows]) == {"lower"}
    np.testing.assert_allclose(index.embeddings[rows], tiny.encode_images(patches.images(size=64)), atol=1e-6)
    assert len(result.run.keys) == 2 and not result.run.failed

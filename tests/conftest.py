"""Test session settings: no network and no user folders.

Every test runs with `CLIPMED_OFFLINE=1` and fresh temporary weights and embedding-cache folders,
so nothing reads or writes the user's `~/.cache/napari-clipmed` and no download is ever tried.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_clipmed_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    root = tmp_path_factory.mktemp("clipmed-env")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPMED_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("CLIPMED_WEIGHTS_DIR", str(root / "weights"))
        mp.setenv("CLIPMED_CACHE_DIR", str(root / "cache"))
        yield


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the test (restored after): tiny models gain nothing from threads, and on a
    shared 2-core machine they only oversubscribe. Modules ask for it with `pytestmark = usefixtures(...)`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

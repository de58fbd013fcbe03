"""Test session settings: no network, no user folders, no locale leaking from one test into the next.

Every test runs with `CLIPMED_OFFLINE=1` and fresh temporary weights and embedding-cache folders,
so nothing reads or writes the user's `~/.cache/napari-clipmed` and no download is ever tried.
"""

from __future__ import annotations

import locale
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


@pytest.fixture(autouse=True)
def _locale_restored() -> Iterator[None]:
    """Every test ends with the C library locale it started with. GDCM's DICOM writer (tests that build DICOM
    series) leaves it at "C", and Python then decodes a later test's subprocess output as ASCII; until now the
    first napari window happened to reset it."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the test (restored after): tiny models gain nothing from threads, and on a
    shared 2-core machine they only oversubscribe. Modules ask for it with `pytestmark = usefixtures(...)`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

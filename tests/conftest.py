"""Fixtures shared by the whole suite: offline Hub, a session image cache, local CIFAR-10."""

import os

import pytest

# Set before any test imports huggingface_hub or datasets, which read these once at import:
# tests never reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """One decoded-image cache for the session (``$SOMTOK_CACHE_DIR``), never ~/.cache."""
    folder = tmp_path_factory.mktemp("somtok-cache")
    previous = os.environ.get("SOMTOK_CACHE_DIR")
    os.environ["SOMTOK_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SOMTOK_CACHE_DIR", None)
    else:
        os.environ["SOMTOK_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def cifar10_dir():
    """The local CIFAR-10 parquet folder, found as ``load_images("cifar10")`` finds it."""
    from somtok.tokenizer.data import cifar10_dir

    folder = cifar10_dir()
    if folder is None:
        pytest.skip("no local CIFAR-10: set SOMTOK_CIFAR10_DIR or put it in ../shared/data")
    return folder

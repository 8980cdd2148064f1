"""Fixtures for the dataset tests: no test here may touch the network or the real cache."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from gradsight.data import download

_IDX_TYPE_CODES = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D}


def write_idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding written out by hand with struct, independent of the parser under test."""
    header = struct.pack(">BBBB", 0, 0, _IDX_TYPE_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Point the download cache at an empty folder and make every download fail.

    Returns the list of (dataset_class, root) download attempts, for tests to inspect.
    """
    monkeypatch.setenv(download.CACHE_DIR_ENV, str(tmp_path / "cache"))
    attempts: list[tuple[str, Path]] = []

    def refuse(dataset_class: str, root: Path) -> None:
        attempts.append((dataset_class, root))
        raise download.DownloadFailed("network disabled in tests")

    monkeypatch.setattr(download, "download_with_torchvision", refuse)
    return attempts


@pytest.fixture
def write_idx():
    """write_idx(path, array): write ``array`` as an IDX file, gzipped if ``path`` ends in .gz."""

    def write(path: Path, array: np.ndarray) -> Path:
        data = write_idx_bytes(array)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
        return path

    return write


@pytest.fixture
def make_idx_dataset(write_idx):
    """make_idx_dataset(folder, gz=False, n_train=30, n_test=12, seed=0) -> arrays dict.

    Writes the four MNIST-named IDX files of a small random dataset into ``folder`` and
    returns the uint8 arrays it wrote, keyed like ``train_images``.
    """

    def make(folder: Path, *, gz: bool = False, n_train: int = 30, n_test: int = 12, seed: int = 0):
        rng = np.random.default_rng(seed)
        arrays = {
            "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
            "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
        }
        names = {
            "train_images": "train-images-idx3-ubyte",
            "train_labels": "train-labels-idx1-ubyte",
            "test_images": "t10k-images-idx3-ubyte",
            "test_labels": "t10k-labels-idx1-ubyte",
        }
        for role, array in arrays.items():
            write_idx(folder / (names[role] + (".gz" if gz else "")), array)
        return arrays

    return make

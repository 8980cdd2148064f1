"""load_dataset's registry, lookup order and its error when no files can be found."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch

from gradsight.data import (
    FASHION_MNIST_CLASSES,
    SYSTEM_DATA_DIRS,
    DatasetError,
    download,
    list_datasets,
    load_dataset,
)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def test_list_datasets():
    assert list_datasets() == ["mnist5k", "mnist", "fashion-mnist", "pystdlib"]


def test_unknown_name_lists_valid_names():
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar10")
    assert isinstance(caught.value, ValueError)
    for name in list_datasets():
        assert name in str(caught.value)


def _assert_names_both_remedies(message: str) -> None:
    assert "internet" in message and "torchvision can download" in message
    assert "--data-dir" in message and "train-images-idx3-ubyte" in message


def test_mnist_offline_without_files_names_both_remedies(offline):
    with pytest.raises(DatasetError) as caught:
        load_dataset("mnist")
    message = str(caught.value)
    _assert_names_both_remedies(message)
    assert "network disabled in tests" in message  # why the download failed
    assert "apt-get" not in message
    assert [dataset_class for dataset_class, _ in offline] == ["MNIST"]


def test_fashion_mnist_offline_without_files_names_apt_package(offline, monkeypatch, tmp_path):
    monkeypatch.setitem(SYSTEM_DATA_DIRS, "fashion-mnist", (tmp_path / "no-such-dir",))
    with pytest.raises(DatasetError) as caught:
        load_dataset("fashion-mnist")
    message = str(caught.value)
    _assert_names_both_remedies(message)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "FashionMNIST/raw" in message
    assert [dataset_class for dataset_class, _ in offline] == ["FashionMNIST"]


def test_download_false_does_not_try_to_download(offline):
    with pytest.raises(DatasetError, match="download=False"):
        load_dataset("mnist", download=False)
    assert offline == []


def test_data_dir_that_is_not_a_directory(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset("mnist", data_dir=tmp_path / "typo", download=False)


def test_incomplete_data_dir_says_what_is_missing(tmp_path, make_idx_dataset):
    make_idx_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="incomplete, missing t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_successful_download_is_loaded_from_cache(monkeypatch, tmp_path, make_idx_dataset):
    attempts = []

    def fake_download(dataset_class, root):
        attempts.append(dataset_class)
        make_idx_dataset(root / dataset_class / "raw", seed=3)

    monkeypatch.setattr(download, "download_with_torchvision", fake_download)
    first = load_dataset("mnist")
    assert "just downloaded" in first.source
    assert str(download.default_cache_dir()) in first.source
    second = load_dataset("mnist")  # found in the cache, no second download
    assert "download cache" in second.source and "just downloaded" not in second.source
    assert attempts == ["MNIST"]
    assert torch.equal(first.train_x, second.train_x)


def test_partial_download_in_cache_is_not_trusted(offline, make_idx_dataset):
    # torchvision extracts only verified downloads; a lone .gz may be cut short.
    make_idx_dataset(download.default_cache_dir() / "MNIST" / "raw", gz=True)
    with pytest.raises(DatasetError):
        load_dataset("mnist")
    assert len(offline) == 1


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(download.CACHE_DIR_ENV, str(tmp_path / "here"))
    assert download.default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv(download.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.default_cache_dir() == tmp_path / "xdg" / "gradsight"


# The real function, bound at import, before the autouse fixture replaces the module attribute.
real_download_with_torchvision = download.download_with_torchvision


def test_download_with_torchvision_wraps_network_errors(monkeypatch, tmp_path):
    import torchvision.datasets

    class Unreachable:
        def __init__(self, root, train, download):
            assert socket.getdefaulttimeout() is not None  # so a firewalled machine cannot hang
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nName or service not known")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Unreachable)
    before = socket.getdefaulttimeout()
    with pytest.raises(download.DownloadFailed, match="RuntimeError: Error downloading .* Name or service"):
        real_download_with_torchvision("MNIST", tmp_path)
    assert socket.getdefaulttimeout() == before


def test_download_with_torchvision_without_torchvision(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(download.DownloadFailed, match="torchvision is not importable"):
        real_download_with_torchvision("MNIST", tmp_path)


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_full_fashion_mnist_from_debian_package(offline):
    splits = load_dataset("fashion-mnist", download=False)
    assert str(DEBIAN_FASHION_MNIST) in splits.source
    assert splits.train_x.shape == (60000, 1, 28, 28) and splits.test_x.shape == (10000, 1, 28, 28)
    assert splits.train_y.min() == 0 and splits.train_y.max() == 9
    assert splits.train_y.bincount().tolist() == [6000] * 10
    assert splits.test_y.bincount().tolist() == [1000] * 10
    assert splits.classes == FASHION_MNIST_CLASSES
    assert 0.28 < splits.train_x.mean() < 0.29  # the published 0.2860
    assert offline == []

"""Fixtures for the training tests: a small slice of mnist5k, one CPU thread, no downloads."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from gradsight.data import DatasetSplits, download, load_dataset

TRAIN_SAMPLES = 256
TEST_SAMPLES = 128


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """Tiny models run fastest on one thread, and the test machine is shared (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """An empty download cache, and every download refused."""
    monkeypatch.setenv(download.CACHE_DIR_ENV, str(tmp_path / "cache"))

    def refuse(dataset_class, root):
        raise download.DownloadFailed("network disabled in tests")

    monkeypatch.setattr(download, "download_with_torchvision", refuse)


@pytest.fixture(scope="session")
def small_data() -> DatasetSplits:
    """The first 256 training and 128 test images of mnist5k (all ten digits appear)."""
    data = load_dataset("mnist5k")
    return replace(data, train_x=data.train_x[:TRAIN_SAMPLES], train_y=data.train_y[:TRAIN_SAMPLES],
                   test_x=data.test_x[:TEST_SAMPLES], test_y=data.test_y[:TEST_SAMPLES])

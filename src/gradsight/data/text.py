"""Byte-level text corpora that exist offline: ``pystdlib`` and ``text:PATH``.

Every byte is a token (ids 0-255, ``vocab_size`` 256), so nothing is fitted and a loss in nats
per token converts to bits per byte by dividing by ln 2.

- ``pystdlib``: the ``.py`` files of the running interpreter's standard library
  (``sysconfig.get_paths()["stdlib"]``), without ``site-packages``/``dist-packages`` (third-party
  code) and without folders named ``test``, ``tests`` or ``idle_test``: whether a distribution
  installs the test suite varies, so leaving it out makes the corpus the same on every install
  of one Python version (CPython 3.11: 734 files, about 12 MB).
- ``text:PATH``: a text file, or a folder's text files (recursively; hidden files and folders
  skipped; a file is text when its first 8 KiB hold no NUL byte, as git and grep decide).

Files are taken in the order of their sorted relative paths. A corpus of several files is split
by file, 90/10: the 10th, 20th, 30th ... file is a test file, the others train, so both splits
sample the whole tree (with fewer than 10 files the last one is the test file). A single file is
split by position: its first 90% of bytes train, the rest test. Each split is its files' bytes
concatenated in order.

``limit`` keeps the first ``limit`` bytes of each split, and files past it are not read.
"""

from __future__ import annotations

import math
import os
import sys
import sysconfig
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from gradsight.data.errors import DatasetError

__all__ = ["PYSTDLIB_EXCLUDED_DIRS", "TEXT_PREFIX", "VOCAB_SIZE", "TextSplits", "is_text_dataset", "load_text"]

VOCAB_SIZE = 256
TEXT_PREFIX = "text:"
#: Folders of the standard-library tree that ``pystdlib`` leaves out.
PYSTDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
TEST_EVERY = 10  # every TEST_EVERY-th file is a test file: a 90/10 split by file
TEST_FRACTION = 0.1  # of a single file's bytes
_SNIFF_BYTES = 8192


@dataclass(frozen=True, eq=False)
class TextSplits:
    """A byte-level corpus in memory: ``train`` and ``test`` are uint8 [N] byte streams.

    A sample is one byte (token id = byte value); models read windows of it
    (:func:`gradsight.data.token_batch`). ``train_files``/``test_files`` count the corpus's files
    in each split (all of them, also under a ``limit``); ``python_version`` is set for ``pystdlib``.
    """

    train: torch.Tensor = field(repr=False)
    test: torch.Tensor = field(repr=False)
    name: str
    source: str
    train_files: int
    test_files: int
    python_version: str | None = None
    limit: int | None = None
    vocab_size: int = VOCAB_SIZE

    @property
    def num_train(self) -> int:
        """Training bytes."""
        return int(self.train.numel())

    @property
    def num_test(self) -> int:
        """Test bytes."""
        return int(self.test.numel())

    def config(self) -> dict[str, Any]:
        """What a run's config records about the corpus (JSON-serializable)."""
        return {
            "name": self.name, "source": self.source, "train_bytes": self.num_train, "test_bytes": self.num_test,
            "train_files": self.train_files, "test_files": self.test_files, "python_version": self.python_version,
            "limit": self.limit, "vocab_size": self.vocab_size,
        }

    def limited(self, limit: int) -> TextSplits:
        """The first ``limit`` bytes of each split."""
        return replace(self, train=self.train[:limit], test=self.test[:limit], limit=limit)

    def __repr__(self) -> str:
        return (f"TextSplits(name={self.name!r}, train={self.num_train} bytes, test={self.num_test} bytes, "
                f"files={self.train_files}/{self.test_files}, source={self.source!r})")


def is_text_dataset(name: str) -> bool:
    """Whether ``name`` names a byte-level corpus: ``pystdlib`` or ``text:PATH``."""
    return name.strip().lower() == "pystdlib" or name.strip().startswith(TEXT_PREFIX)


def load_text(name: str, *, limit: int | None = None, device: torch.device | str = "cpu") -> TextSplits:
    """Load ``pystdlib`` or ``text:PATH`` (see the module docstring) as uint8 byte streams on ``device``.

    Raises ``DatasetError`` for a missing path, a folder without text files, or a split with no bytes.
    """
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be at least 1 byte, got {limit}")
    if name.strip().lower() == "pystdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files = pystdlib_files(root)
        if not files:
            raise DatasetError(f"No .py files found in the standard library folder {root}.")
        version = ".".join(str(part) for part in sys.version_info[:3])
        source = f"{root} ({len(files)} .py files of Python {version}, tests and site-packages left out)"
        train, test, counts = _split_files(files, limit)
        corpus_name, python_version = "pystdlib", version
    else:
        path = Path(name.strip()[len(TEXT_PREFIX):]).expanduser()
        if not path.exists():
            raise DatasetError(f"text dataset path {str(path)!r} does not exist; write text:FILE or text:FOLDER.")
        if path.is_file():
            data = path.read_bytes()
            cut = len(data) - math.ceil(TEST_FRACTION * len(data))
            train, test, counts = data[:cut], data[cut:], (1, 1)
            if limit is not None:
                train, test = train[:limit], test[:limit]
            source = f"{path} (one file, first 90% of its bytes train, last 10% test)"
        else:
            files = text_files(path)
            if not files:
                raise DatasetError(f"folder {str(path)!r} holds no text files.")
            if len(files) == 1:
                return load_text(TEXT_PREFIX + str(files[0]), limit=limit, device=device)
            train, test, counts = _split_files(files, limit)
            source = f"{path} ({len(files)} text files, split by file 90/10)"
        corpus_name, python_version = name.strip(), None
    for split, data in (("train", train), ("test", test)):
        if not data:
            raise DatasetError(f"the {split} split of {corpus_name!r} is empty.")
    return TextSplits(
        train=_to_tensor(train, device), test=_to_tensor(test, device), name=corpus_name, source=source,
        train_files=counts[0], test_files=counts[1], python_version=python_version, limit=limit,
    )


def _files(root: Path, keep_dir, keep_file) -> list[Path]:
    """Files under ``root`` that ``keep_file(path)`` accepts, in folders ``keep_dir(name)``
    accepts, sorted by relative path (the same order on every machine)."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if keep_dir(d)]
        found += [path for path in (Path(folder) / n for n in names) if keep_file(path)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def pystdlib_files(root: Path) -> list[Path]:
    """The standard library's ``.py`` files under ``root``, sorted by relative path, the
    folders of :data:`PYSTDLIB_EXCLUDED_DIRS` left out."""
    return _files(root, lambda d: d not in PYSTDLIB_EXCLUDED_DIRS, lambda p: p.name.endswith(".py"))


def text_files(root: Path) -> list[Path]:
    """Text files under ``root`` (no NUL byte in the first 8 KiB), hidden ones skipped, sorted by relative path."""
    return _files(root, lambda d: not d.startswith("."),
                  lambda p: not p.name.startswith(".") and p.is_file() and _is_text(p))


def is_test_file(index: int, count: int) -> bool:
    """Whether the ``index``-th (0-based) of ``count`` sorted files is a test file."""
    if count < TEST_EVERY:
        return index == count - 1
    return index % TEST_EVERY == TEST_EVERY - 1


def _split_files(files: list[Path], limit: int | None) -> tuple[bytes, bytes, tuple[int, int]]:
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    sizes = {False: 0, True: 0}
    counts = {False: 0, True: 0}
    for index, path in enumerate(files):
        test = is_test_file(index, len(files))
        counts[test] += 1
        if limit is not None and sizes[test] >= limit:
            continue
        data = path.read_bytes()
        parts[test].append(data)
        sizes[test] += len(data)
    train, test = b"".join(parts[False]), b"".join(parts[True])
    if limit is not None:
        train, test = train[:limit], test[:limit]
    return train, test, (counts[False], counts[True])


def _is_text(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return b"\0" not in f.read(_SNIFF_BYTES)
    except OSError:
        return False


def _to_tensor(data: bytes, device: torch.device | str) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)

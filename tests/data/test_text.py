"""Byte-level corpora (``pystdlib``, ``text:PATH``) and next-token windows."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from gradsight.data import DatasetError, TextSplits, fixed_windows, load_dataset, token_batch
from gradsight.data.text import PYSTDLIB_EXCLUDED_DIRS, is_test_file, pystdlib_files


@pytest.fixture(scope="module")
def stdlib() -> TextSplits:
    return load_dataset("pystdlib")


def test_pystdlib_is_the_standard_library_split_by_file(stdlib):
    root = Path(sysconfig.get_paths()["stdlib"])
    files = pystdlib_files(root)
    relative = [p.relative_to(root).as_posix() for p in files]
    assert relative == sorted(relative) and "os.py" in relative
    assert not any(set(r.split("/")[:-1]) & PYSTDLIB_EXCLUDED_DIRS for r in relative)
    test_files = [p for i, p in enumerate(files) if is_test_file(i, len(files))]
    train_files = [p for i, p in enumerate(files) if not is_test_file(i, len(files))]
    assert (stdlib.train_files, stdlib.test_files) == (len(train_files), len(test_files))
    assert len(test_files) == len(files) // 10
    expected_train = b"".join(p.read_bytes() for p in train_files)
    expected_test = b"".join(p.read_bytes() for p in test_files)
    assert stdlib.train.dtype == torch.uint8 and stdlib.train.dim() == 1
    assert bytes(stdlib.train.numpy()) == expected_train and bytes(stdlib.test.numpy()) == expected_test
    assert stdlib.vocab_size == 256
    config = stdlib.config()
    assert config["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert (config["train_bytes"], config["test_bytes"]) == (len(expected_train), len(expected_test))


def test_pystdlib_limit_keeps_the_first_bytes_of_each_split(stdlib):
    small = load_dataset("pystdlib", limit=5000)
    assert (small.num_train, small.num_test, small.limit) == (5000, 5000, 5000)
    assert torch.equal(small.train, stdlib.train[:5000]) and torch.equal(small.test, stdlib.test[:5000])
    assert small.config()["train_bytes"] == 5000


def test_text_folder_is_split_by_file_in_sorted_order(tmp_path):
    for i in range(12):
        (tmp_path / "sub" if i % 2 else tmp_path).mkdir(exist_ok=True)
        folder = tmp_path / "sub" if i % 2 else tmp_path
        (folder / f"f{i:02d}.txt").write_bytes(f"<{i}>".encode())
    (tmp_path / "blob.bin").write_bytes(b"\0\1\2")  # not text
    (tmp_path / ".hidden").write_text("hidden")
    data = load_dataset(f"text:{tmp_path}")
    names = sorted([f"f{i:02d}.txt" for i in range(0, 12, 2)] + [f"sub/f{i:02d}.txt" for i in range(1, 12, 2)])
    texts = [f"<{int(n[-6:-4])}>".encode() for n in names]
    assert bytes(data.test.numpy()) == texts[9]  # the 10th file of 12
    assert bytes(data.train.numpy()) == b"".join(t for i, t in enumerate(texts) if i != 9)
    assert (data.train_files, data.test_files, data.python_version) == (11, 1, None)


def test_small_folder_tests_on_its_last_file(tmp_path):
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "b.txt").write_text("second")
    data = load_dataset(f"text:{tmp_path}")
    assert bytes(data.train.numpy()) == b"first" and bytes(data.test.numpy()) == b"second"


def test_one_file_is_split_90_10_by_position(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes(bytes(range(100)) * 3)
    data = load_dataset(f"text:{path}")
    assert (data.num_train, data.num_test) == (270, 30)
    assert bytes(data.train.numpy()) + bytes(data.test.numpy()) == path.read_bytes()


@pytest.mark.parametrize("name, message", [
    ("text:/no/such/place", "does not exist"),
    ("cifar10", "pystdlib"),
])
def test_bad_text_datasets_raise_dataset_error(name, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset(name)


def test_folder_without_text_files(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\0")
    with pytest.raises(DatasetError, match="no text files"):
        load_dataset(f"text:{tmp_path}")


def test_token_batch_targets_are_inputs_shifted_by_one():
    stream = torch.arange(100, dtype=torch.uint8)
    x, y = token_batch(stream, 8, 5, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x, x[:, :1] + torch.arange(8))  # contiguous windows of the stream
    assert int(y.max()) <= 99


def test_token_batch_is_reproducible_and_reaches_both_ends():
    stream = torch.arange(10, dtype=torch.uint8)
    first = token_batch(stream, 3, 400, generator=torch.Generator().manual_seed(1))
    again = token_batch(stream, 3, 400, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first[0], again[0])
    assert set(first[0][:, 0].tolist()) == set(range(7))  # offsets 0 .. N - context - 1


def test_fixed_windows_are_evenly_spaced_over_the_whole_stream():
    stream = torch.arange(101, dtype=torch.uint8)
    x, y = fixed_windows(stream, 10, 5)
    assert x[:, 0].tolist() == [0, 22, 45, 68, 90] and int(y[-1, -1]) == 100
    x, _ = fixed_windows(stream, 10, 1000)  # no more windows than fit side by side
    assert x.shape == (10, 10)


def test_windows_need_a_stream_longer_than_the_context():
    with pytest.raises(ValueError, match="too short"):
        token_batch(torch.zeros(8, dtype=torch.uint8), 8, 1)

"""The IDX parser, and loading full-size datasets from synthetic IDX files via data_dir."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from gradsight.data import DatasetError, load_dataset, read_idx
from gradsight.data import idx as idx_module


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28),
        np.array([0, 9, 3, 255], dtype=np.uint8),
        np.arange(-6, 6, dtype=np.int32).reshape(3, 4) * 1_000_000,
        np.linspace(-1, 1, 10, dtype=np.float32),
    ],
    ids=["uint8-3d", "uint8-1d", "int32-2d", "float32-1d"],
)
def test_read_idx_round_trip(tmp_path, write_idx, array, suffix):
    path = write_idx(tmp_path / f"file-idx{suffix}", array)
    parsed = read_idx(path)
    assert parsed.dtype == array.dtype
    np.testing.assert_array_equal(parsed, array)
    parsed[0] = 0  # a writable copy, not a view of the file bytes


def _write_truncated(tmp_path, write_idx, keep_bytes: int):
    path = write_idx(tmp_path / "images", np.zeros((3, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:keep_bytes])
    return path


@pytest.mark.parametrize(
    ("keep_bytes", "message"),
    [(0, "truncated"), (3, "truncated"), (10, "truncated inside its header"), (16 + 100, "truncated")],
)
def test_read_idx_rejects_truncated_file(tmp_path, write_idx, keep_bytes, message):
    path = _write_truncated(tmp_path, write_idx, keep_bytes)
    with pytest.raises(DatasetError, match=message) as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_read_idx_rejects_trailing_bytes(tmp_path, write_idx):
    path = write_idx(tmp_path / "labels", np.zeros(5, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00\x00")
    with pytest.raises(DatasetError, match="unexpected bytes"):
        read_idx(path)


@pytest.mark.parametrize(
    "header", [b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"\x00\x00\x08\x00", b"<htm"], ids=str
)
def test_read_idx_rejects_bad_magic(tmp_path, header):
    path = tmp_path / "not-idx"
    path.write_bytes(header + b"\x00" * 64)
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(path)


def test_read_idx_rejects_truncated_gzip(tmp_path, write_idx):
    path = write_idx(tmp_path / "images.gz", np.ones((4, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DatasetError, match="Cannot read IDX file"):
        read_idx(path)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(DatasetError):
        read_idx(path)


def _assert_matches(splits, arrays):
    train_bytes = splits.train_x.squeeze(1).mul(255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(train_bytes, arrays["train_images"])
    # Same values as torchvision's ToTensor: byte / 255 in float32.
    expected_x = torch.from_numpy(arrays["test_images"]).unsqueeze(1).float().div(255)
    assert torch.equal(splits.test_x, expected_x)
    assert torch.equal(splits.train_y, torch.from_numpy(arrays["train_labels"]).long())
    assert torch.equal(splits.test_y, torch.from_numpy(arrays["test_labels"]).long())


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize(
    ("name", "subfolder"),
    [
        ("mnist", "."),
        ("mnist", "MNIST/raw"),
        ("mnist", "raw"),
        ("fashion-mnist", "."),
        ("fashion-mnist", "FashionMNIST/raw"),
    ],
)
def test_load_idx_dataset_from_data_dir(tmp_path, make_idx_dataset, name, subfolder, gz):
    folder = tmp_path / "data" / subfolder
    arrays = make_idx_dataset(folder, gz=gz, n_train=30, n_test=12)
    splits = load_dataset(name, data_dir=tmp_path / "data", download=False)

    assert splits.train_x.shape == (30, 1, 28, 28) and splits.test_x.shape == (12, 1, 28, 28)
    assert splits.train_x.dtype == torch.float32 and splits.train_y.dtype == torch.int64
    assert splits.name == name and splits.num_classes == 10 and splits.input_shape == (1, 28, 28)
    assert str(folder) in splits.source
    _assert_matches(splits, arrays)


def test_load_idx_dataset_accepts_dotted_file_names(tmp_path, make_idx_dataset):
    arrays = make_idx_dataset(tmp_path)
    for path in list(tmp_path.iterdir()):
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))
    splits = load_dataset("mnist", data_dir=tmp_path, download=False)
    _assert_matches(splits, arrays)


def test_load_idx_dataset_prefers_data_dir_over_system_dir(tmp_path, make_idx_dataset, monkeypatch):
    from gradsight.data import SYSTEM_DATA_DIRS

    make_idx_dataset(tmp_path / "system", seed=1)
    monkeypatch.setitem(SYSTEM_DATA_DIRS, "fashion-mnist", (tmp_path / "system",))
    arrays = make_idx_dataset(tmp_path / "mine", seed=2)
    _assert_matches(load_dataset("fashion-mnist", data_dir=tmp_path / "mine", download=False), arrays)
    assert "system package" in load_dataset("fashion-mnist", download=False).source


def test_load_idx_dataset_reports_corrupt_file(tmp_path, make_idx_dataset):
    make_idx_dataset(tmp_path, gz=True)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-3]))
    with pytest.raises(DatasetError, match="truncated") as caught:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert "t10k-labels-idx1-ubyte.gz" in str(caught.value)


def test_load_idx_dataset_rejects_count_mismatch(tmp_path, make_idx_dataset, write_idx):
    make_idx_dataset(tmp_path, n_train=30)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(29, dtype=np.uint8))
    with pytest.raises(DatasetError, match="30 images but 29 labels"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_load_idx_dataset_rejects_wrong_image_size(tmp_path, make_idx_dataset, write_idx):
    make_idx_dataset(tmp_path, n_test=12)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((12, 32, 32), dtype=np.uint8))
    with pytest.raises(DatasetError, match="32x32"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_load_idx_dataset_rejects_images_in_labels_file(tmp_path, make_idx_dataset, write_idx):
    make_idx_dataset(tmp_path, n_test=12)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((12, 28, 28), dtype=np.uint8))
    with pytest.raises(DatasetError, match="not MNIST-style labels"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_load_idx_dataset_rejects_label_out_of_range(tmp_path, make_idx_dataset, write_idx):
    make_idx_dataset(tmp_path, n_test=12)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(12, 10, dtype=np.uint8))
    with pytest.raises(DatasetError, match="labels go up to 10"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_idx_files_are_parsed_once_and_reparsed_when_replaced(tmp_path, make_idx_dataset, monkeypatch):
    calls = []
    real_read_idx = idx_module.read_idx
    monkeypatch.setattr(idx_module, "read_idx", lambda path: calls.append(path) or real_read_idx(path))

    make_idx_dataset(tmp_path, n_train=30, seed=0)
    first = load_dataset("mnist", data_dir=tmp_path, download=False)
    second = load_dataset("mnist", data_dir=tmp_path, download=False)
    assert len(calls) == 4
    assert torch.equal(first.train_x, second.train_x)

    second.train_x.zero_()  # each load hands out its own tensors
    assert torch.equal(load_dataset("mnist", data_dir=tmp_path, download=False).train_x, first.train_x)

    arrays = make_idx_dataset(tmp_path, n_train=31, seed=1)
    _assert_matches(load_dataset("mnist", data_dir=tmp_path, download=False), arrays)
    assert len(calls) == 8

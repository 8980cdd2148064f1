"""Containers for a dataset's train/test splits: raw bytes as read, and tensors as returned."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch


class ArraySplits(NamedTuple):
    """A dataset as read from disk: uint8 images [N, H, W] (0-255) and uint8 labels [N]."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """A dataset loaded into memory, ready for a training loop with no per-sample Python.

    ``train_x``/``test_x`` are float32 [N, 1, 28, 28] in [0, 1] (pixel / 255, exactly what
    torchvision's ``ToTensor`` gives; not mean/std normalized). ``train_y``/``test_y`` are
    int64 [N] class indices into ``classes``. Each ``load_dataset`` call returns fresh
    tensors, so modifying them in place does not affect later loads.
    """

    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    name: str
    num_classes: int
    input_shape: tuple[int, ...]  # one sample, channels first: (1, 28, 28)
    classes: tuple[str, ...]
    source: str  # where the data was read from, for logs and reports

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_x.shape[0])

    def __repr__(self) -> str:
        return (
            f"DatasetSplits(name={self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"device={self.train_x.device}, source={self.source!r})"
        )


def images_to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 images [N, H, W] -> float32 [N, 1, H, W] in [0, 1] on ``device`` (a new tensor)."""
    # Move the bytes first (4x less to transfer), then convert on the device.
    pixels = torch.from_numpy(images).to(device)
    return pixels.unsqueeze(1).to(torch.float32, copy=True).div_(255)


def labels_to_tensor(labels: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Integer labels [N] -> int64 [N] on ``device`` (a new tensor)."""
    return torch.from_numpy(labels).to(device).to(torch.int64, copy=True)

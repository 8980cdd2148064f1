"""Fixtures for the model-zoo tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_single_thread() -> Iterator[None]:
    """Seed, and run on one thread: these models are tiny, and on a shared 2-core machine
    OpenMP's worker threads turn a 0.1 s backward pass into tens of seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)

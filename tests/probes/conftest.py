"""Fixtures for the probe tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_single_thread() -> Iterator[None]:
    """Seed, and run on one thread: the probes run many small passes, and on a shared 2-core
    machine OpenMP's worker threads make them slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def no_hooks_left(model: torch.nn.Module) -> bool:
    """Whether no module of ``model`` has a forward, forward-pre or backward hook."""
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks) for m in model.modules()
    )

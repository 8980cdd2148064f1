"""The devices a test runs on: the CPU always, CUDA where torch sees a GPU.

``@pytest.mark.parametrize("device", DEVICES)`` runs a test on both; its ``cuda`` case is
marked ``cuda``, which ``tests/conftest.py`` skips without a GPU and ``pytest -m cuda``
selects (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import pytest

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

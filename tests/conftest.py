"""Fixtures shared by every test folder. Plots render off-screen (Agg). Tests marked ``cuda``
(``tests/devices.py``) are skipped where no CUDA device is present."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import gradsight as gs  # noqa: E402


def load_benchmark(name: str, monkeypatch: pytest.MonkeyPatch):
    """``benchmarks/<name>.py`` as a module, registered under its name for the test (its
    dataclasses look their module up in ``sys.modules``)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``cuda`` when torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    """Directory of a finished run: a 4-8-3 MLP, 3 recorded SGD steps with their loss and update ratios,
    config ``{"lr": 0.1}`` and the metric ``accuracy`` logged once at step 2."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run_dir = tmp_path / "tiny_run"
    with gs.watch(model, run_dir, optimizer=optimizer, config={"lr": 0.1}, update_ratio=True) as monitor:
        for _ in range(3):
            loss = model(torch.randn(16, 4)).pow(2).mean()
            loss.backward()
            monitor.step(loss)
            optimizer.step()
            optimizer.zero_grad()
        monitor.log({"accuracy": 0.5})
    return run_dir

from __future__ import annotations

from pathlib import Path

import pytest

import gradsight as gs
from tests.plots.runs import make_run


@pytest.fixture(scope="package")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """plain4 (with a NaN gradient at step 5), plain8, residual4, residual8: 12 steps each."""
    root = tmp_path_factory.mktemp("plot_runs")
    make_run(root / "plain4", depth=2, nan_at=5)
    make_run(root / "plain8", depth=6)
    make_run(root / "residual4", depth=2, skip=True)
    make_run(root / "residual8", depth=6, skip=True)
    return root


@pytest.fixture
def nan_run(runs_dir: Path) -> gs.Run:
    with gs.open_run(runs_dir / "plain4") as run:
        yield run

"""The histograms table written by StoreWriter and read back by Run.histograms."""

from __future__ import annotations

import numpy as np

import gradsight as gs
from gradsight.store import StoreWriter


def _write(run_dir, steps):
    writer = StoreWriter(run_dir)
    for step in steps:
        dense = np.array([[0, 3, 1], [2, 0, 0]], dtype=np.int64) * (step + 1)
        writer.write_histograms(step, [("layer", "fc1"), ("model", "")], -4, dense)
    writer.close()


def test_histograms_read_back_sparse(tmp_path):
    _write(tmp_path / "run", [0, 5])
    frame = gs.open_run(tmp_path / "run").histograms(level="layer")
    assert frame["step"].tolist() == [0, 0, 5, 5]
    assert frame["log2_bucket"].tolist() == [-3, -2, -3, -2]
    assert frame["count"].tolist() == [3, 1, 18, 6]


def test_histograms_of_more_steps_and_names_than_sql_variables(tmp_path):
    """Lists past any build's variable limit (32,766 by default, 250,000 in some) are filtered after reading."""
    _write(tmp_path / "run", [0, 5, 7])
    run = gs.open_run(tmp_path / "run")
    frame = run.histograms(level=None, name=["fc1", ""] + [f"x{k}" for k in range(300_000)],
                           steps=range(0, 1_500_000, 5))
    assert sorted(set(zip(frame["step"], frame["name"]))) == [(0, ""), (0, "fc1"), (5, ""), (5, "fc1")]
    assert frame.equals(run.histograms(level=None, steps=[0, 5]))

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.compgraph import GRAPH_FILE
from gradsight.store.packed import PackedWriter
from tests.plots.runs import TinyNet, make_run

HOSTILE = "<script>alert(1)</script>"
RESULTS_CSV = (
    "network,layers,parameters,train_error,test_error,test_accuracy,time_s\n"
    "plain4,4,154,0.20,0.25,0.75,1.5\n"
    "residual4,4,154,0.18,0.23,0.77,1.6\n"
)


class HostileNet(nn.Module):
    """A network whose module names are HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.add_module(HOSTILE, nn.Linear(4, 5))
        self.add_module('"><img src=x onerror=alert(2)>', nn.Linear(5, 3))

    def forward(self, x):
        h = torch.tanh(getattr(self, HOSTILE)(x))
        return getattr(self, '"><img src=x onerror=alert(2)>')(h)


class _EncoderLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.Module()
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(6, 6)
        self.attention.output.LayerNorm = nn.LayerNorm(6)
        self.output = nn.Module()
        self.output.dense = nn.Linear(6, 6)

    def forward(self, x):
        h = self.attention.output.LayerNorm(torch.tanh(self.attention.output.dense(x)))
        return torch.tanh(self.output.dense(h))


class Bertish(nn.Module):
    """Long dotted names sharing the prefix ``bert.``: ``bert.encoder.layer.{0,1,2}.`` +
    ``attention.output.dense``, ``attention.output.LayerNorm``, ``output.dense``, then the
    head ``bert.pooler.dense``; a norm layer between each block's weighted layers."""

    def __init__(self) -> None:
        super().__init__()
        self.bert = nn.Module()
        self.bert.encoder = nn.Module()
        self.bert.encoder.layer = nn.ModuleList(_EncoderLayer() for _ in range(3))
        self.bert.pooler = nn.Module()
        self.bert.pooler.dense = nn.Linear(6, 3)

    def forward(self, x):
        for layer in self.bert.encoder.layer:
            x = layer(x)
        return self.bert.pooler.dense(x)


def add_module_stat(run_dir: Path, stat: str = "act_rms", names=("inp", "blocks", "head")) -> None:
    """Append a module-level statistic to a finished run, as activation hooks would record it."""
    conn = sqlite3.connect(run_dir / "gradsight.sqlite")
    with conn:
        (next_id,) = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM series").fetchone()
        steps = [r[0] for r in conn.execute("SELECT step FROM steps ORDER BY step")]
        ids = np.arange(next_id, next_id + len(names))
        conn.executemany("INSERT INTO series VALUES (?, 'module', ?, ?)", zip(ids.tolist(), names, [stat] * len(names)))
        values = PackedWriter(conn)
        for s in steps:
            values.write(s, ids, 0.5 + 0.1 * np.arange(len(names)) + 0.01 * s)
    conn.close()


@pytest.fixture(scope="package")
def report_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'compare' output directory: results.csv, plain4 (NaN at step 5, act_rms at module level,
    graph.json), residual4 (update ratios at every 4th step), and a run of a network with HTML
    in its module names."""
    root = tmp_path_factory.mktemp("report_runs") / "compare"
    root.mkdir()
    (root / "results.csv").write_text(RESULTS_CSV)
    make_run(root / "plain4", depth=2, nan_at=5)
    make_run(root / "residual4", depth=2, skip=True, update_ratio=4)
    add_module_stat(root / "plain4")
    torch.manual_seed(0)
    gs.graph(TinyNet(2, False), torch.randn(2, 4), probe=False).save(root / "plain4" / GRAPH_FILE)

    model = HostileNet()
    with gs.watch(model, root / "hostile") as mon:
        for _ in range(3):
            model(torch.randn(8, 4)).pow(2).mean().backward()
            mon.step()
            model.zero_grad()
    gs.graph(model, torch.randn(2, 4)).save(root / "hostile" / GRAPH_FILE)
    return root


@pytest.fixture(scope="package")
def report_html(report_runs: Path) -> Path:
    from gradsight.report import write_report

    return write_report([report_runs], report_runs.parent / "report.html")


@pytest.fixture(scope="package")
def bertish_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of one run of :class:`Bertish` with activation statistics (its ``module``
    rows are its layers, norm layers included)."""
    from gradsight.report import write_report

    root = tmp_path_factory.mktemp("bertish")
    torch.manual_seed(0)
    model = Bertish()
    with gs.watch(model, root / "bertish", activations=True) as mon:
        for _ in range(4):
            model(torch.randn(8, 6)).pow(2).mean().backward()
            mon.step()
            model.zero_grad()
    return write_report([root / "bertish"], root / "report.html")

"""One run view: one column order for every reader, and a report that reads each store once."""

from __future__ import annotations

import collections
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.report.html import build_report
from gradsight.store import query, reader
from gradsight.store.view import RunView, view_of


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


class _Net(nn.Module):
    """Container-owned parameter (``class_token``), residual blocks, modules without
    parameters and a norm layer."""

    def __init__(self) -> None:
        super().__init__()
        self.class_token = nn.Parameter(torch.randn(1, 6) * 0.1)
        self.stem = nn.Linear(6, 8)
        self.act = nn.ReLU()
        self.blocks = nn.Sequential(_Block(8), _Block(8))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x + self.class_token))
        return self.head(self.norm(self.blocks(x)))


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = _Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    run_dir = tmp_path_factory.mktemp("view") / "mixed"
    with gs.watch(net, run_dir, optimizer=opt, activations=True, update_ratio=2) as monitor:
        for _ in range(6):
            x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            monitor.step(loss)
            opt.step()
            opt.zero_grad()
    return run_dir


def test_every_reader_has_one_column_order(mixed_run):
    """Run.series, the query layer (one table or several at once) and the view give the same
    columns in the same order at every level, for every statistic."""
    with gs.open_run(mixed_run) as run:
        view = RunView(run)
        levels = ["layer", "param", "module", "block"]
        together = query.layer_matrices(run, level=levels, max_steps=None)
        checked = 0
        for level in levels:
            stats = run.stats(level)
            assert stats, level
            for stat in stats:
                series = run.series(stat, level)
                one = query.layer_matrix(run, stat, level=level, max_steps=None)
                viewed = view.matrix(level, stat, steps="all")
                assert list(series.columns) == list(one.columns) == list(viewed.columns), (level, stat)
                pd.testing.assert_frame_equal(series, one, check_dtype=False, check_index_type=False)
                pd.testing.assert_frame_equal(one, viewed, check_dtype=False, check_index_type=False)
                # several at once share the columns of their level, in the same order
                shared = list(together[(level, stat)].columns)
                assert [c for c in shared if c in set(one.columns)] == list(one.columns)
                checked += 1
        layers = list(run.layers()["name"])
        assert checked > 20
        assert layers[0] == "class_token" and layers[-1] == "head"
        assert list(run.series("grad_norm", "layer").columns) == layers
        # parameters follow their layer's rank, then named_parameters() order within a layer
        params = list(run.series("grad_norm", "param").columns)
        assert params.index("blocks.0.fc1.weight") + 1 == params.index("blocks.0.fc1.bias")
        assert params[0] == "class_token" and params[-2:] == ["head.weight", "head.bias"]
        # modules: a container before its contents, blocks in forward order
        modules = list(run.series("act_rms", "module").columns)
        assert modules == ["stem", "blocks.0", "blocks.0.fc1", "blocks.0.fc2", "blocks.1", "blocks.1.fc1",
                           "blocks.1.fc2", "norm", "head"]
        assert list(run.series("skip_grad_norm", "block").columns) == ["blocks.0", "blocks.1"]


def test_a_long_frame_and_the_run_give_the_same_tables(mixed_run):
    """A frame of every level holds the layers' order too, so its module tables line up."""
    with gs.open_run(mixed_run) as run:
        frame = run.frame()
        for level in ("layer", "param", "module", "block"):
            for stat in ("grad_norm", "act_rms", "skip_grad_norm"):
                from_frame = query.layer_matrix(frame, stat, level=level, max_steps=None)
                from_run = query.layer_matrix(run, stat, level=level, max_steps=None)
                assert list(from_frame.columns) == list(from_run.columns), (level, stat)


def test_a_view_reads_each_table_once_and_serves_every_reader(mixed_run, monkeypatch):
    with gs.open_run(mixed_run) as run:
        calls = collections.Counter()
        original = run.read_tables

        def counting(index, keys, steps=None, **kwargs):
            for key in keys:
                calls[(*key, None if steps is None else tuple(steps))] += 1
            return original(index, keys, steps, **kwargs)

        monkeypatch.setattr(run, "read_tables", counting)
        view = view_of(run)
        assert view_of(view) is view
        first = view.matrix("layer", "grad_norm")
        again = query.layer_matrix(view, "grad_norm")
        query.layer_profile(view, "grad_norm")
        query.first_last_ratio(view, "grad_norm")
        gs.diagnose(view)
        pd.testing.assert_frame_equal(first, again)
        assert calls and max(calls.values()) == 1, calls


def _count_store_access(monkeypatch) -> tuple[collections.Counter, dict[str, collections.Counter]]:
    """Connections opened per store, and the SQL statements run on each (with their values);
    ``connections.opened`` keeps the connections themselves."""
    connections: collections.Counter = collections.Counter()
    connections.opened = []
    statements: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    connect = reader.connect_readonly

    def counting(db_path: Path) -> sqlite3.Connection:
        key = str(Path(db_path).resolve())
        connections[key] += 1
        conn = connect(db_path)
        conn.set_trace_callback(lambda sql: statements[key].update([sql]))
        connections.opened.append(conn)
        return conn

    monkeypatch.setattr(reader, "connect_readonly", counting)
    return connections, statements


def test_the_report_reads_each_store_once(mixed_run, tmp_path, monkeypatch):
    other = tmp_path / "runs" / "other"
    torch.manual_seed(1)
    net = _Net()
    with gs.watch(net, other, activations=True, histograms=2) as monitor:
        for _ in range(5):
            net(torch.randn(4, 6)).square().mean().backward()
            monitor.step()
            net.zero_grad()
    connections, statements = _count_store_access(monkeypatch)
    html = build_report([mixed_run, other], diagnosis_timeout=120)
    assert "Diagnosis" in html and "did not finish" not in html
    assert sorted(connections.values()) == [1, 1], connections  # the diagnosis shares its run's connection
    for store, counter in statements.items():
        repeated = {sql: n for sql, n in counter.items() if n > 1}
        assert not repeated, (store, repeated)  # metadata once, each group of values once
    for conn in connections.opened:  # the runs the report opened, it closed
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")


def test_the_view_is_a_snapshot_and_its_tables_are_its_own(mixed_run):
    with RunView(mixed_run) as view:
        assert view.sample == view.steps == list(range(6))
        table = view.matrix("layer", "update_ratio")
        assert list(table.index) == [0, 2, 4]  # measured at every second recorded step
        assert view.at_step("layer", "update_ratio", 1) is None
        row = view.at_step("layer", "grad_norm", 3)
        np.testing.assert_array_equal(row.to_numpy(), view.matrix("layer", "grad_norm").loc[3].to_numpy())
        assert view.blocks == {"blocks.0", "blocks.1"}
        assert view.role("head") == "head" and view.role("norm") == "norm"
        with pytest.raises(ValueError, match="sample"):
            view.matrix("layer", "grad_norm", steps="most")
    small = RunView(mixed_run, max_steps=3)
    assert small.sample == [0, 2, 5] and list(small.matrix("layer", "grad_norm").index) == [0, 2, 5]
    small.close()



@pytest.mark.parametrize("name", ["display_name", "ROOT_DISPLAY_NAME", "display_path", "role_label", "forward_order",
                                  "RunData"])
def test_names_that_left_the_query_layer_still_import_with_a_warning(name):
    with pytest.warns(DeprecationWarning, match=f"query.{name} is deprecated"):
        value = getattr(query, name)
    assert value is not None
    with pytest.raises(AttributeError):
        query.no_such_name  # noqa: B018


def test_schema_kind_is_a_deprecated_name_of_row_kind():
    from gradsight.store import schema

    with pytest.warns(DeprecationWarning, match="RowKind"):
        assert schema.Kind is schema.RowKind


def test_arrays_at_given_steps_hold_the_values_the_long_frame_has(mixed_run):
    """``RunView.arrays`` (what a live page's poll reads) against ``Run.frame`` pivoted by hand:
    a row per step asked, in the order asked (one not recorded too), a column per name of the level."""
    steps = [5, 99, 2, 1]
    with RunView(mixed_run) as view:
        frame = view.run.frame()
        keys = [(lv, st) for lv in ("layer", "module", "block", "model", "metric") for st in view.stats(lv)]
        assert ("layer", "update_ratio") in keys and ("module", "act_rms") in keys
        for every_name in (True, False):
            got = view.arrays(keys, steps, every_name=every_name)
            for (level, stat), (values, written) in got.items():
                rows = frame[(frame["level"] == level) & (frame["stat"] == stat)]
                names = view.names(level) if every_name else [n for n in view.names(level) if n in set(rows["name"])]
                expected = np.full((len(steps), len(names)), np.nan)
                present = np.zeros_like(expected, dtype=bool)
                for step, name, value in zip(rows["step"], rows["name"], rows["value"]):
                    if step in steps:
                        expected[steps.index(step), names.index(name)] = value
                        present[steps.index(step), names.index(name)] = True
                np.testing.assert_array_equal(values, expected, err_msg=f"{level}:{stat}")
                np.testing.assert_array_equal(written, present, err_msg=f"{level}:{stat}")
        _, written = view.arrays([("layer", "update_ratio")], steps)[("layer", "update_ratio")]
        assert written.any(axis=1).tolist() == [False, False, True, False]  # measured every second step
        assert view.arrays([("layer", "no_such_stat")], steps)[("layer", "no_such_stat")][0].shape == (4, len(
            view.names("layer")))
        assert not view._tables  # nothing kept

"""The packed layout of values (schema version 4): exact round trips, last write wins,
groups by statistic, bytes per value, reading while written, and stores of the
row-per-value layout (schema version 3) read the same."""

from __future__ import annotations

import math
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.store import packed
from gradsight.store.query import layer_matrix
from gradsight.store.schema import DB_NAME, SCHEMA_VERSION, RowKind, Level
from gradsight.store.writer import StoreWriter
from tests.store.helpers import connect_readonly, store_files

SPECIAL = [0.0, -0.0, 1.0, -2.5, math.nan, math.inf, -math.inf, 1e-45, 3.4028234663852886e38]
NOT_FLOAT32 = [0.1, 1e300, -1e-310, 1 / 3, 2.0**-150, 3.5e38]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal values, NaN where NaN, and the same sign of zero."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all((a == b) & (np.signbit(a) == np.signbit(b)) | np.isnan(a) & np.isnan(b)))


# -- encoding --------------------------------------------------------------------------


@pytest.mark.parametrize("values", [
    SPECIAL,
    NOT_FLOAT32,
    SPECIAL + NOT_FLOAT32,
    [0.1] + [1.5] * 50,  # one value needs float64, the rest do not
    list(np.random.default_rng(0).normal(size=300)),  # float64 noise: none is a float32
    list(np.random.default_rng(1).lognormal(size=300).astype(np.float32)),
    [0.0] * 1000,
    [],
])
def test_encode_decode_is_exact(values):
    values = np.array(values, dtype=np.float64)
    data = packed.encode(values)
    assert _same(packed.decode(data, len(values)), values)


def test_decoding_many_segments_at_once_is_decoding_each():
    rng = np.random.default_rng(0)
    n = 40
    arrays = [rng.lognormal(size=n).astype(np.float32), np.zeros(n), np.arange(n, dtype=float),
              np.where(np.arange(n) == 3, 0.1, 1.5), rng.normal(size=n), np.full(n, math.nan),
              np.array((SPECIAL + NOT_FLOAT32) * 3)[:n]]
    data = [packed.encode(np.asarray(a, dtype=np.float64)) for a in arrays]
    assert {d[0] for d in data} >= {packed.F32, packed.F32_EXCEPT, packed.F64}
    many = packed.decode_many(data, n)
    for row, d, a in zip(many, data, arrays):
        assert _same(row, packed.decode(d, n)) and _same(row, a)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_many_short_segments_read_as_one_array_are_decoded_as_each(n):
    """The model and metric values of each step of a long run: 100s of rows of a few values,
    their byte planes constant in some rows and raw in others, NaN, inf and logged float64
    values among them."""
    rng = np.random.default_rng(n)
    arrays = [rng.lognormal(size=n).astype(np.float32).astype(np.float64) for _ in range(150)]
    arrays += [np.full(n, 2.0), np.zeros(n), np.full(n, math.nan), np.full(n, -math.inf), np.full(n, 0.1)]
    arrays += [np.array([7.0] + [3.0] * (n - 1)) for _ in range(30)] + [np.array([0.1] + [1.5] * (n - 1))]
    order = rng.permutation(len(arrays))
    arrays = [arrays[i] for i in order]
    data = [packed.encode(a) for a in arrays]
    layouts = {(len(d), d[1], d[3] if len(d) > 3 else None) for d in data}
    assert len(layouts) > 2 or n == 1  # one value: every byte plane is constant
    assert {d[0] for d in data} >= ({packed.F32, packed.F32_EXCEPT} if n == 5 else {packed.F32, packed.F64})
    many = packed.decode_many(data, n)
    for row, d, a in zip(many, data, arrays):
        assert _same(row, packed.decode(d, n)) and _same(row, a)
    rows = [(i, i, packed.encode_row(np.concatenate([a, a[::-1]]), [n, n])) for i, a in enumerate(arrays)]
    for k in (0, 1):
        assert [bytes(b) for b in packed._segments_of(rows, 2, k)] == \
            [bytes(packed.segment_bytes(r[2], 2, k)) for r in rows]


def test_float32_values_take_four_bytes_or_less_and_others_their_float64():
    f32 = np.random.default_rng(0).lognormal(size=1000).astype(np.float32).astype(np.float64)
    assert len(packed.encode(f32)) <= 1 + 4 * len(f32)
    one_inexact = f32.copy()
    one_inexact[7] = 0.1
    assert len(packed.encode(one_inexact)) <= 1 + 4 + 4 * len(f32) + 12
    f64 = np.random.default_rng(0).normal(size=1000)
    assert len(packed.encode(f64)) <= 1 + 8 * len(f64)
    assert len(packed.encode(np.zeros(1000))) < 100  # counts and zeros compress


# -- writing and reading through the store ----------------------------------------------


def _register(writer: StoreWriter, names: list[str], stats: list[str], level: str = Level.LAYER) -> dict:
    series = {}
    for name in names:
        for stat in stats:
            series[(level, name, stat)] = len(series) + 1
    writer.add_series([(i, *key) for key, i in series.items()])
    writer.write_layers([(n, d, "Linear", RowKind.LAYER) for d, n in enumerate(names)])
    return series


def _reference_frame(expected: dict[tuple[int, int], float], series: dict) -> pd.DataFrame:
    """What frame() must hold: ``(step, series id) -> value``, by step then series id."""
    key_of = {i: key for key, i in series.items()}
    rows = [(step, *key_of[sid], value) for (step, sid), value in sorted(expected.items())]
    return pd.DataFrame(rows, columns=["step", "level", "name", "stat", "value"])


def test_values_read_back_exactly_and_the_last_write_of_a_value_wins(tmp_path):
    """Random writes of random subsets (in random order, some series twice in one write,
    some steps written again) against a dict that keeps the last value written."""
    rng = np.random.default_rng(0)
    names = [f"l{i}" for i in range(40)]
    writer = StoreWriter(tmp_path / "run")
    series = _register(writer, names, ["a", "b", "c"])
    all_ids = np.array(sorted(series.values()))
    expected: dict[tuple[int, int], float] = {}
    pool = np.array(SPECIAL + NOT_FLOAT32 + list(rng.lognormal(size=50).astype(np.float32)), dtype=np.float64)
    for _ in range(200):
        step = int(rng.integers(0, 30))
        ids = rng.choice(all_ids, size=int(rng.integers(1, 60)), replace=True)
        values = rng.choice(pool, size=len(ids))
        writer.write_scalars(step, ids, values, 1.0)
        for i, v in zip(ids.tolist(), values.tolist()):
            expected[(step, i)] = v
    writer.close()
    want = _reference_frame(expected, series)
    with gs.open_run(tmp_path / "run") as run:
        got = run.frame()[["step", "level", "name", "stat", "value"]]
        assert got[["step", "level", "name", "stat"]].equals(want[["step", "level", "name", "stat"]])
        assert _same(got["value"].to_numpy(), want["value"].to_numpy())
        wide = run.series("b")
    for step in wide.index:
        for name in wide.columns:
            v = expected.get((step, series[(Level.LAYER, name, "b")]), math.nan)
            assert _same([wide.loc[step, name]], [v])


@pytest.mark.parametrize("one_group", [True, False])
def test_each_wide_statistic_is_a_segment_and_large_writes_several_groups(tmp_path, monkeypatch, one_group):
    monkeypatch.setattr(packed, "GROUP_MAX", 2 * packed.SEGMENT_MIN + 1 if one_group else packed.SEGMENT_MIN)
    names = [f"l{i}" for i in range(packed.SEGMENT_MIN)]
    writer = StoreWriter(tmp_path / "run")
    series = _register(writer, names, ["a", "b"])
    series[(Level.MODEL, "", "a")] = len(series) + 1
    writer.add_series([(series[(Level.MODEL, "", "a")], Level.MODEL, "", "a")])
    ids = np.array(list(series.values()))[::-1].copy()  # any order
    for step in range(3):
        writer.write_scalars(step, ids, ids * 10.0 + step, 1.0)
    writer.close()
    with closing(connect_readonly(tmp_path / "run")) as conn:
        groups = [(np.frombuffer(b, "<i8").tolist(), np.frombuffer(g, "<i4").tolist())
                  for b, g in conn.execute("SELECT series, segments FROM series_groups ORDER BY id")]
        rows = conn.execute("SELECT COUNT(*) FROM packed").fetchone()[0]
    by_stat = [sorted(i for (lv, _, st), i in series.items() if lv == Level.LAYER and st == s) for s in "ab"]
    segments = by_stat + [[series[(Level.MODEL, "", "a")]]]
    if one_group:  # a row per step of the layers, a segment per statistic; the model's series apart
        assert groups == [(sum(segments[:2], []), [len(s) for s in segments[:2]]), (segments[2], [1])]
    else:  # a group per segment
        assert groups == [(s, [len(s)]) for s in segments]
    assert rows == 3 * len(groups)
    with gs.open_run(tmp_path / "run") as run:
        for stat in "ab":
            wide = run.series(stat)
            assert wide.to_numpy().tolist() == [[series[(Level.LAYER, n, stat)] * 10.0 + s for n in names]
                                                for s in range(3)]
        assert run.series("a", level=Level.MODEL).to_numpy().tolist() == [[len(series) * 10.0 + s] for s in range(3)]
        frame = run.frame(name=names[:3] + [""], steps=[1, 2])
    want = sorted((s, series[k]) for s in (1, 2) for k in series if k[1] in names[:3] + [""])
    assert frame["value"].tolist() == [sid * 10.0 + s for s, sid in want]


def test_writes_after_a_rolled_back_transaction_keep_their_groups(tmp_path):
    """The writer rolls a batch back when the store fails and writes it again later."""
    writer = StoreWriter(tmp_path / "run")
    series = _register(writer, ["x", "y"], ["a"])
    writer.close()
    ids = np.array(list(series.values()))
    with closing(sqlite3.connect(tmp_path / "run" / DB_NAME, isolation_level=None)) as conn:
        values = packed.PackedWriter(conn)
        conn.execute("BEGIN")
        values.write(0, ids, np.array([1.0, 2.0]))
        conn.execute("ROLLBACK")  # takes the new group's row with it
        conn.execute("BEGIN")
        values.write(0, ids, np.array([1.0, 2.0]))
        values.write(1, ids, np.array([3.0, 4.0]))
        conn.execute("COMMIT")
    with gs.open_run(tmp_path / "run") as run:
        assert run.series("a").to_numpy().tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_a_closed_store_of_float32_values_takes_under_four_and_a_half_bytes_per_value(tmp_path):
    """The row-per-value layout took 28 to 32 bytes; random float32 mantissas do not compress."""
    rng = np.random.default_rng(0)
    names = [f"l{i}" for i in range(3000)]
    writer = StoreWriter(tmp_path / "run")
    series = _register(writer, names, ["grad_norm"])
    ids = np.array(list(series.values()))
    for step in range(600):
        writer.write_scalars(step, ids, rng.lognormal(-3, 1.5, len(ids)).astype(np.float32).astype(np.float64), 1.0)
    writer.close()
    assert (tmp_path / "run" / DB_NAME).stat().st_size / (600 * len(ids)) <= 4.5


def test_a_reader_sees_the_committed_steps_while_the_run_is_written(tmp_path):
    writer = StoreWriter(tmp_path / "run")
    series = _register(writer, ["x", "y"], ["a"])
    ids = np.array(list(series.values()))
    writer.write_scalars(0, ids, np.array([1.0, 2.0]), 1.0)
    writer.flush()
    with gs.open_run(tmp_path / "run") as run:
        assert run.series("a").to_numpy().tolist() == [[1.0, 2.0]]
        writer.write_scalars(1, ids, np.array([3.0, math.nan]), 2.0)
        writer.flush()
        assert _same(run.series("a").to_numpy(), [[1.0, 2.0], [3.0, math.nan]])
        assert run.steps() == [0, 1]
    writer.close()


# -- stores of schema version 3 (one row per value) ----------------------------------------


def _as_schema_version_3(run_dir: Path) -> None:
    """Rewrite a store's values as schema version 3 had them: one ``scalars`` row per value
    (NaN as NULL), from the store's own rows, not through the reader."""
    with closing(sqlite3.connect(run_dir / DB_NAME)) as conn:
        rows = []
        for step, data, blob, segments in conn.execute(
            "SELECT p.step, p.data, g.series, g.segments FROM packed p JOIN series_groups g ON g.id = p.grp ORDER BY p.rowid"
        ):  # in the order written: a later value of a series at a step replaces the earlier one
            values = packed.decode_row(data, np.frombuffer(segments, "<i4")).tolist()
            rows += [(step, i, None if math.isnan(v) else v) for i, v in zip(np.frombuffer(blob, "<i8").tolist(), values)]
        conn.executescript(packed.ROW_SCHEMA)
        conn.executemany("INSERT OR REPLACE INTO scalars VALUES (?,?,?)", rows)
        conn.execute("DROP TABLE packed")
        conn.execute("DROP TABLE series_groups")
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        conn.commit()
        conn.execute("VACUUM")


#: How schema version 3 read ``Run.frame()``: one SQL join over the ``scalars`` rows.
_VERSION_3_FRAME = """
    WITH depths(level, name, depth) AS (
        SELECT level, name, depth FROM (
            SELECT lv.level AS level, l.name AS name, l.depth AS depth,
                   ROW_NUMBER() OVER (PARTITION BY lv.level, l.name ORDER BY CASE WHEN l.kind = lv.level THEN 0
                       WHEN l.kind = 'block' THEN 1 WHEN l.kind = 'layer' THEN 2 ELSE 3 END) AS pick
            FROM layers l
            CROSS JOIN (SELECT 'layer' AS level UNION ALL SELECT 'block' UNION ALL SELECT 'module') lv
        ) WHERE pick = 1
    )
    SELECT s.step AS step, se.level AS level, se.name AS name,
           CASE se.level WHEN 'param' THEN p.layer WHEN 'model' THEN NULL WHEN 'metric' THEN NULL
                         ELSE se.name END AS layer,
           d.depth AS depth, se.stat AS stat, s.value AS value
    FROM scalars s
    JOIN series se ON se.id = s.series
    LEFT JOIN params p ON se.level = 'param' AND p.name = se.name
    LEFT JOIN depths d ON d.level = (CASE se.level WHEN 'param' THEN 'layer' ELSE se.level END)
                      AND d.name = (CASE se.level WHEN 'param' THEN p.layer ELSE se.name END)
    ORDER BY s.step, se.id
"""


@pytest.fixture
def recorded_run(tmp_path: Path) -> Path:
    """A real recording with NaN, +-inf, logged metrics (float64 ones among them) and update ratios."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run_dir = tmp_path / "run"
    with gs.watch(model, run_dir, optimizer=opt, update_ratio=True) as monitor:
        for step in range(6):
            opt.zero_grad()
            loss = model(torch.randn(4, 3)).pow(2).mean()
            loss.backward()
            if step == 2:
                model[0].weight.grad[0, 0] = math.nan
                model[2].bias.grad[0] = math.inf
            monitor.step(loss)
            opt.step()
            monitor.log({"lr": 0.1, "acc": 1 / 3, "neg_inf": -math.inf})
    return run_dir


def _everything(run_dir: Path) -> tuple:
    with gs.open_run(run_dir) as run:
        return (run.frame(), run.series("grad_norm"), run.series("grad_norm", level=Level.PARAM, steps=[1, 2, 9]),
                run.metrics(), run.layer_summary(), run.frame(stat="update_ratio", steps=[0, 3]),
                layer_matrix(run, "grad_rms"), run.steps(), run.stats())


def test_a_store_of_schema_version_3_reads_the_same_and_is_not_modified(recorded_run):
    want = _everything(recorded_run)
    with gs.open_run(recorded_run) as run:
        assert run.meta["schema_version"] == SCHEMA_VERSION == 4
    _as_schema_version_3(recorded_run)
    before = store_files(recorded_run)
    got = _everything(recorded_run)
    assert store_files(recorded_run) == before  # reading migrates nothing on disk
    with gs.open_run(recorded_run) as run:
        assert run.meta["schema_version"] == 3
    for g, w in zip(got, want):
        if isinstance(w, pd.DataFrame):
            pd.testing.assert_frame_equal(g, w)
        else:
            assert g == w


def test_frame_is_what_schema_version_3_returned(recorded_run):
    """The frame of a store equals the old SQL join over its version-3 rows (NaN, +-inf included)."""
    with gs.open_run(recorded_run) as run:
        frame = run.frame()
    _as_schema_version_3(recorded_run)
    with closing(connect_readonly(recorded_run)) as conn:
        old = pd.read_sql_query(_VERSION_3_FRAME, conn)
    old["value"] = old["value"].astype(float)
    old["depth"] = old["depth"].astype(float)
    assert np.isinf(old["value"]).any() and old["value"].isna().any() and (old["value"] == 1 / 3).any()
    pd.testing.assert_frame_equal(frame.drop(columns="role"), old)

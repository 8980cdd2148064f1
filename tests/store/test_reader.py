"""Reading a run store: open_run errors, metadata, frame() contents and filters, metrics, list_runs."""

from __future__ import annotations

import json
import math
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.store.schema import DB_NAME
from tests.store.helpers import connect_readonly, corrupt_table, store_files

FRAME_COLUMNS = ["step", "level", "name", "layer", "depth", "role", "stat", "value"]


class Reordered(nn.Module):
    """Registration order (late, early) differs from execution order (early, late); ``frozen`` is never trained."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Linear(6, 2)
        self.early = nn.Linear(3, 6)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen(self.late(torch.tanh(self.early(x))))


def _train(model: nn.Module, monitor: gs.Monitor, steps: int, in_features: int) -> None:
    for _ in range(steps):
        loss = model(torch.randn(8, in_features)).pow(2).mean()
        loss.backward()
        monitor.step(loss)
        model.zero_grad()


@pytest.fixture
def reordered_run(tmp_path: Path) -> tuple[Path, Reordered]:
    torch.manual_seed(0)
    model = Reordered()
    run_dir = tmp_path / "reordered"
    with gs.watch(model, run_dir, config={"lr": 0.01, "layers": [3, 6, 2], "opt": {"name": "sgd"}}) as monitor:
        _train(model, monitor, 4, in_features=3)
    return run_dir, model


# -- open_run errors ---------------------------------------------------------------


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "no_such_run"


def _dir_without_store(tmp_path: Path) -> Path:
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "notes.txt").write_text("not a run")
    return tmp_path / "empty_dir"


def _empty_store(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / DB_NAME).touch()
    return tmp_path / "run"


def _empty_file(tmp_path: Path) -> Path:
    (tmp_path / "empty.sqlite").touch()
    return tmp_path / "empty.sqlite"


def _random_bytes(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / DB_NAME).write_bytes(np.random.default_rng(0).bytes(8192))
    return tmp_path / "run"


def _sqlite_header_then_garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + np.random.default_rng(1).bytes(8192))
    return path


def _other_sqlite_db(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    with closing(sqlite3.connect(tmp_path / "run" / DB_NAME)) as conn:
        conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
        conn.execute("CREATE TABLE users (id INTEGER, name TEXT)")
        conn.commit()
    return tmp_path / "run"


def _store_path_is_a_directory(tmp_path: Path) -> Path:
    (tmp_path / "run" / DB_NAME).mkdir(parents=True)
    return tmp_path / "run"


@pytest.mark.parametrize(
    "make, message",
    [
        (_missing, "does not exist"),
        (_dir_without_store, f"no {DB_NAME}"),
        (_empty_store, "empty"),
        (_empty_file, "empty"),
        (_random_bytes, "not a SQLite database"),
        (_sqlite_header_then_garbage, "not a SQLite database"),
        (_other_sqlite_db, "not a gradsight store"),
        (_store_path_is_a_directory, "not a SQLite database"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_open_run_raises_run_error_saying_what_is_wrong(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(gs.RunError) as info:
        gs.open_run(path)
    assert type(info.value) is gs.RunError
    text = str(info.value)
    assert message in text
    assert path.name in text
    assert "\n" not in text


def test_open_run_error_on_other_sqlite_db_names_the_missing_tables(tmp_path):
    with pytest.raises(gs.RunError, match="missing tables: layers, packed, params, series, series_groups, steps"):
        gs.open_run(_other_sqlite_db(tmp_path))


def test_run_error_is_a_gradsight_error():
    assert issubclass(gs.RunError, gs.GradsightError)


def test_open_run_accepts_the_run_dir_or_its_database_file(tiny_run):
    by_dir = gs.open_run(tiny_run)
    by_file = gs.open_run(tiny_run / DB_NAME)
    by_str = gs.open_run(str(tiny_run))
    assert by_dir.path == by_file.path == by_str.path == tiny_run
    assert by_dir.steps() == by_file.steps() == [0, 1, 2]


def test_open_run_handles_special_characters_in_the_path(tmp_path):
    run_dir = tmp_path / "odd name #1 %20 ?x"
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    with gs.watch(model, run_dir) as monitor:
        model(torch.randn(3, 2)).sum().backward()
        monitor.step()
    with gs.open_run(run_dir) as run:
        assert run.steps() == [0]


@pytest.mark.parametrize("table", ["steps", "series", "packed", "series_groups", "params", "layers"])
def test_corrupted_table_raises_run_error_from_every_reader(tiny_run, table):
    """The store opens (meta is sound) but one table's pages are garbage."""
    corrupt_table(tiny_run, table)
    run = gs.open_run(tiny_run)
    readers = {
        "steps": run.steps,
        "stats": run.stats,
        "frame": run.frame,
        "params": run.params,
        "layers": run.layers,
        "metrics": run.metrics,
        "layer_summary": run.layer_summary,
        "series": lambda: run.series("grad_norm"),
    }
    failed = []
    for name, read in readers.items():
        try:
            read()
        except gs.RunError as exc:
            assert "\n" not in str(exc), f"{name}() gave a multi-line message: {exc}"
            assert "malformed" in str(exc)
            failed.append(name)
    assert failed, f"no reader noticed the corrupted {table} table"


# -- reading never modifies the store --------------------------------------------------


def _read_everything(run_dir: Path) -> None:
    with gs.open_run(run_dir) as run:
        repr(run)
        run.frame()
        run.params()
        run.layers()
        run.metrics()
        run.steps()
        run.stats()
        run.series("grad_norm")
        run.layer_summary()


def test_reading_a_finished_run_changes_no_file(tiny_run):
    before = store_files(tiny_run)
    mtime = (tiny_run / DB_NAME).stat().st_mtime_ns
    _read_everything(tiny_run)
    _read_everything(tiny_run)
    assert store_files(tiny_run) == before  # same bytes, and no -wal/-shm/-journal created
    assert (tiny_run / DB_NAME).stat().st_mtime_ns == mtime


def test_reading_a_running_run_does_not_change_its_data_files(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    run_dir = tmp_path / "run"
    with gs.watch(model, run_dir) as monitor:
        model(torch.randn(4, 3)).sum().backward()
        monitor.step()
        monitor.flush()
        before = store_files(run_dir)
        _read_everything(run_dir)
        after = store_files(run_dir)
        # the -shm file is SQLite's shared-memory index, not data: readers may update it
        assert {k: v for k, v in after.items() if not k.endswith("-shm")} == {
            k: v for k, v in before.items() if not k.endswith("-shm")
        }


# -- metadata ---------------------------------------------------------------------------


def test_metadata_is_stored(reordered_run):
    run_dir, model = reordered_run
    with gs.open_run(run_dir) as run:
        meta = run.meta
        assert meta["model_class"] == f"{Reordered.__module__}.{Reordered.__qualname__}"
        assert meta["torch_version"] == torch.__version__
        assert meta["gradsight_version"] == gs.__version__
        assert run.config == {"lr": 0.01, "layers": [3, 6, 2], "opt": {"name": "sgd"}}
        assert run.status == "finished"
        assert time.time() - 300 < meta["start_time"] <= meta["end_time"] <= time.time()
        assert meta["num_params"] == sum(p.numel() for p in model.parameters())
        assert meta["num_trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert run.name == "reordered"


def test_params_table_matches_named_parameters(reordered_run):
    run_dir, model = reordered_run
    with gs.open_run(run_dir) as run:
        params = run.params()
    named = list(model.named_parameters())
    assert list(params["name"]) == [n for n, _ in named]
    assert list(params["shape"]) == [tuple(p.shape) for _, p in named]
    assert list(params["numel"]) == [p.numel() for _, p in named]
    assert list(params["layer"]) == [n.rsplit(".", 1)[0] for n, _ in named]
    assert list(params["trainable"]) == [p.requires_grad for _, p in named]
    assert list(params["position"]) == list(range(len(named)))
    assert set(params["dtype"]) == {"float32"}


def test_layers_are_in_forward_execution_order(reordered_run):
    run_dir, _ = reordered_run
    with gs.open_run(run_dir) as run:
        layers = run.layers()
        assert list(layers["name"]) == ["early", "late"]  # 'frozen' has no trainable parameters
        assert list(layers["depth"]) == [0, 1]
        assert list(layers["module_type"]) == ["Linear", "Linear"]
        assert run.meta["depth_source"] == "forward"
        params = run.params().set_index("name")
    assert params.loc["early.weight", "depth"] == 0
    assert params.loc["late.bias", "depth"] == 1


def test_meta_values_are_json(tiny_run):
    with closing(connect_readonly(tiny_run)) as conn:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
    assert {k for k, _ in rows} >= {"model_class", "torch_version", "config", "start_time", "end_time", "status"}
    for _, value in rows:
        json.loads(value)


# -- frame() ------------------------------------------------------------------------------


def test_frame_columns_and_levels(tiny_run):
    with gs.open_run(tiny_run) as run:
        frame = run.frame()
    assert list(frame.columns) == FRAME_COLUMNS
    assert set(frame["level"]) == {"param", "layer", "model", "metric"}
    assert sorted(frame["step"].unique()) == [0, 1, 2]
    assert frame["value"].dtype == np.float64
    assert frame["depth"].dtype == np.float64


def test_frame_names_per_level(reordered_run):
    run_dir, model = reordered_run
    with gs.open_run(run_dir) as run:
        frame = run.frame()
    param_rows = frame[frame.level == "param"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(param_rows["name"].unique()) == sorted(trainable)
    assert list(param_rows["layer"]) == [n.rsplit(".", 1)[0] for n in param_rows["name"]]

    layer_rows = frame[frame.level == "layer"]
    assert set(layer_rows["name"]) == {"early", "late"}
    assert (layer_rows["layer"] == layer_rows["name"]).all()
    assert set(layer_rows.loc[layer_rows.name == "late", "depth"]) == {1.0}

    model_rows = frame[frame.level == "model"]
    assert set(model_rows["name"]) == {""}
    assert model_rows["depth"].isna().all()
    assert set(model_rows["stat"]) >= set(gs.GRAD_STATS)

    metric_rows = frame[frame.level == "metric"]
    assert set(metric_rows["name"]) == {"loss"}
    assert metric_rows["depth"].isna().all()


def test_frame_has_every_stat_for_every_param_and_step(reordered_run):
    run_dir, model = reordered_run
    with gs.open_run(run_dir) as run:
        frame = run.frame(level="param")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    counts = frame.groupby(["step", "name"])["stat"].apply(set)
    assert len(counts) == 4 * len(trainable)
    dims = {n: p.dim() for n, p in model.named_parameters()}
    for (_, name), stats in counts.items():  # rows (dim 0) are counted for tensors of >= 2 dims
        assert stats == set(gs.GRAD_STATS) | ({"grad_dead_rows"} if dims[name] >= 2 else set())


def test_frame_grad_norm_matches_the_gradients(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 1))
    with gs.watch(model, tmp_path / "run") as monitor:
        model(torch.randn(7, 3)).sum().backward()
        monitor.step()
        expected = {n: p.grad.norm().item() for n, p in model.named_parameters()}
    with gs.open_run(tmp_path / "run") as run:
        got = run.frame(level="param", stat="grad_norm").set_index("name")["value"].to_dict()
    assert got == pytest.approx(expected, rel=1e-5)


def test_frame_filters(reordered_run):
    run_dir, _ = reordered_run
    with gs.open_run(run_dir) as run:
        frame = run.frame()

        by_level = run.frame(level="layer")
        assert set(by_level["level"]) == {"layer"}
        assert len(by_level) == (frame.level == "layer").sum()

        by_levels = run.frame(level=["model", "metric"])
        assert set(by_levels["level"]) == {"model", "metric"}

        by_stat = run.frame(stat="grad_norm")
        assert set(by_stat["stat"]) == {"grad_norm"}
        assert set(by_stat["level"]) == {"param", "layer", "model"}
        assert len(by_stat) == (frame.stat == "grad_norm").sum()

        by_name = run.frame(name=["early.weight", "late"])
        assert set(zip(by_name["level"], by_name["name"])) == {("param", "early.weight"), ("layer", "late")}

        by_steps = run.frame(steps=[1, 3])
        assert set(by_steps["step"]) == {1, 3}
        assert len(by_steps) == frame.step.isin([1, 3]).sum()

        combined = run.frame(level="param", stat=["grad_norm", "weight_norm"], name="late.weight", steps=range(2))
        assert len(combined) == 4
        expected = frame[
            (frame.level == "param")
            & frame.stat.isin(["grad_norm", "weight_norm"])
            & (frame.name == "late.weight")
            & frame.step.isin([0, 1])
        ]
        assert combined.reset_index(drop=True).equals(expected.reset_index(drop=True))


@pytest.mark.parametrize(
    "filters", [{"level": "nonexistent"}, {"stat": []}, {"name": "no.such.param"}, {"steps": []}, {"steps": [99]}]
)
def test_frame_filter_with_no_match_is_empty_with_the_same_columns(tiny_run, filters):
    with gs.open_run(tiny_run) as run:
        frame = run.frame(**filters)
    assert frame.empty
    assert list(frame.columns) == FRAME_COLUMNS


def test_nan_and_inf_round_trip(tmp_path):
    model = nn.Linear(3, 2)
    run_dir = tmp_path / "run"
    with gs.watch(model, run_dir) as monitor:
        model.weight.grad = torch.full_like(model.weight, math.nan)
        model.bias.grad = torch.tensor([math.inf, 1.0])
        monitor.step()
        monitor.log({"nan_metric": math.nan, "plus_inf": math.inf, "minus_inf": -math.inf, "finite": 2.5})

    with gs.open_run(run_dir) as run:
        frame = run.frame().set_index(["level", "name", "stat"])["value"]
    assert math.isnan(frame["param", "weight", "grad_norm"])
    assert frame["param", "weight", "grad_nonfinite"] == 6
    assert frame["param", "bias", "grad_norm"] == math.inf
    assert frame["param", "bias", "grad_abs_max"] == math.inf
    assert frame["param", "bias", "grad_nonfinite"] == 1
    assert frame["model", "", "grad_nonfinite"] == 7
    assert math.isnan(frame["metric", "nan_metric", "nan_metric"])
    assert frame["metric", "plus_inf", "plus_inf"] == math.inf
    assert frame["metric", "minus_inf", "minus_inf"] == -math.inf
    assert frame["metric", "finite", "finite"] == 2.5


# -- metrics ------------------------------------------------------------------------------


def test_logged_metrics_appear_in_metrics(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    run_dir = tmp_path / "run"
    losses = []
    with gs.watch(model, run_dir) as monitor:
        for step in range(3):
            loss = model(torch.randn(4, 3)).pow(2).mean()
            loss.backward()
            monitor.step(loss)
            losses.append(loss.item())
            model.zero_grad()
            monitor.log({"lr": 0.1 * (step + 1)})
        monitor.log({"val_acc": torch.tensor(0.75)}, step=10)

    with gs.open_run(run_dir) as run:
        metrics = run.metrics()
    assert sorted(metrics.columns) == ["loss", "lr", "val_acc"]
    assert list(metrics.index) == [0, 1, 2, 10]
    assert list(metrics["loss"].iloc[:3]) == pytest.approx(losses)
    assert list(metrics["lr"].iloc[:3]) == pytest.approx([0.1, 0.2, 0.3])
    assert metrics.loc[10, "val_acc"] == 0.75


def test_metrics_keep_nan_values(tmp_path):
    """A loss that turned NaN is what one looks for; metrics() must not drop it."""
    model = nn.Linear(2, 1)
    run_dir = tmp_path / "run"
    with gs.watch(model, run_dir) as monitor:
        monitor.log({"loss": 1.0}, step=0)
        monitor.log({"loss": math.nan}, step=1)
        monitor.log({"loss": 0.5, "diverged": math.nan}, step=2)
    with gs.open_run(run_dir) as run:
        metrics = run.metrics()
    assert list(metrics.index) == [0, 1, 2]
    assert sorted(metrics.columns) == ["diverged", "loss"]
    assert math.isnan(metrics.loc[1, "loss"])
    assert metrics["diverged"].isna().all()


def test_metrics_of_a_run_without_metrics_is_empty(tmp_path):
    model = nn.Linear(2, 1)
    with gs.watch(model, tmp_path / "run") as monitor:
        model(torch.randn(3, 2)).sum().backward()
        monitor.step()
    with gs.open_run(tmp_path / "run") as run:
        assert run.metrics().empty


# -- list_runs ----------------------------------------------------------------------------


def test_list_runs_finds_every_run_below_a_parent(tmp_path):
    parent = tmp_path / "runs"
    run_dirs = [parent / "a", parent / "b", parent / "group" / "c"]
    for run_dir in run_dirs:
        model = nn.Linear(2, 1)
        with gs.watch(model, run_dir) as monitor:
            model(torch.randn(3, 2)).sum().backward()
            monitor.step()
    (parent / "not_a_run").mkdir()
    (parent / "not_a_run" / "notes.txt").write_text("hello")

    found = gs.list_runs(parent)
    assert found == sorted(run_dirs)
    assert all(isinstance(p, Path) for p in found)
    assert [gs.open_run(p).steps() for p in found] == [[0], [0], [0]]
    assert gs.list_runs(str(parent)) == found
    assert gs.list_runs(parent / "group") == [parent / "group" / "c"]
    assert gs.list_runs(parent / "a") == [parent / "a"]  # the parent itself may be a run
    assert gs.list_runs(parent / "not_a_run") == []


def _as_schema_version_1(run_dir: Path) -> None:
    """Rewrite a store's ``layers`` table as schema version 1 had it: keyed on ``name`` alone."""
    with closing(sqlite3.connect(run_dir / DB_NAME)) as conn:
        rows = conn.execute("SELECT name, depth, module_type, kind FROM layers WHERE kind = 'layer'").fetchall()
        conn.execute("DROP TABLE layers")
        conn.execute("CREATE TABLE layers (name TEXT PRIMARY KEY, depth INTEGER, module_type TEXT NOT NULL, "
                     "kind TEXT NOT NULL)")
        conn.executemany("INSERT INTO layers VALUES (?,?,?,?)", rows)
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        conn.commit()


def test_stores_of_schema_version_1_read_the_same(reordered_run, tmp_path):
    run_dir, _ = reordered_run
    with gs.open_run(run_dir) as run:
        assert run.meta["schema_version"] == 4
        want = (run.frame(), run.series("grad_norm"), run.params(), run.layers())
    _as_schema_version_1(run_dir)
    with gs.open_run(run_dir) as run:
        assert run.meta["schema_version"] == 1
        got = (run.frame(), run.series("grad_norm"), run.params(), run.layers())
    for g, w in zip(got, want):
        assert g.equals(w)

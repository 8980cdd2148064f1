"""The query layer against slow, obvious references built from ``Run.frame()``, and the
readers (plots, report, diagnosis, graph colouring) agreeing on what they read."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gradsight as gs
from gradsight import plots
from gradsight.compgraph.nodes import OP, PARAM, Node
from gradsight.compgraph.structure import Graph
from gradsight.display import format_time, summary_rows
from gradsight.report.payload import run_payload
from gradsight.store import query
from gradsight.store.view import RunView
from gradsight.store.query import (
    DEFAULT_MAX_STEPS,
    family_and_depth,
    first_last_ratio,
    first_last_ratios,
    layer_matrices,
    layer_matrix,
    run_summary,
    step_sample,
)
from tests.plots.runs import make_run

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "report_scale.py"


def _build_store(run_dir: Path, layers: int, steps: int) -> Path:
    spec = importlib.util.spec_from_file_location("report_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_store(run_dir, layers=layers, steps=steps)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """TinyNet with 4 hidden layers (6 layers), 12 steps, a NaN gradient at step 5."""
    return make_run(tmp_path_factory.mktemp("query") / "plain6", depth=4, nan_at=5)


@pytest.fixture(scope="module")
def long_run(tmp_path_factory) -> Path:
    """A synthetic run of 6 layers and 1,000 recorded steps (non-finite gradients at 333, 334, 666)."""
    return _build_store(tmp_path_factory.mktemp("query") / "long", layers=6, steps=1000)


def _reference_matrix(run: gs.Run, stat: str, level: str, steps: list[int]) -> pd.DataFrame:
    """steps x names from the long frame, one value at a time, names by their layer's depth."""
    frame = run.frame(level=level, stat=stat)
    depth = {}
    for row in frame.itertuples():
        depth.setdefault(row.name, row.depth)
    names = sorted(depth, key=lambda n: depth[n])
    out = pd.DataFrame(np.nan, index=steps, columns=names)
    for row in frame.itertuples():
        if row.step in steps:
            out.loc[row.step, row.name] = row.value
    return out


# -- step_sample -----------------------------------------------------------------------------


def test_step_sample_keeps_first_and_last_and_spaces_evenly():
    steps = list(range(0, 3000, 3))  # 1,000 recorded steps, every third
    picked = step_sample(steps)
    assert len(picked) == DEFAULT_MAX_STEPS
    assert picked[0] == 0 and picked[-1] == 2997
    assert picked == sorted(set(picked)) and set(picked) <= set(steps)
    gaps = np.diff([steps.index(s) for s in picked])
    assert gaps.min() >= 2 and gaps.max() <= 3  # 999 / 399 = 2.5 positions apart
    assert step_sample(steps, 5) == [0, 750, 1500, 2247, 2997]  # positions round(k * 999 / 4): 0, 250, 500, 749, 999


def test_step_sample_of_few_steps_none_and_one():
    assert step_sample([4, 8, 9]) == [4, 8, 9]
    assert step_sample(list(range(1000)), None) == list(range(1000))
    assert step_sample(list(range(10)), 1) == [9]
    assert step_sample([], 5) == []


# -- layer_matrix ----------------------------------------------------------------------------


@pytest.mark.parametrize(("stat", "level"), [("grad_norm", "layer"), ("grad_rms", "layer"), ("grad_norm", "param")])
def test_layer_matrix_is_steps_by_names_in_forward_order(small_run, stat, level):
    with gs.open_run(small_run) as run:
        m = layer_matrix(run, stat, level=level)
        expected = _reference_matrix(run, stat, level, run.steps())
        layers = list(run.layers()["name"])
    assert m.index.name == "step" and m.columns.name == "name"
    assert list(m.index) == list(range(12))
    assert list(m.columns) == list(expected.columns)
    if level == "layer":
        assert list(m.columns) == layers == ["inp", "blocks.fc0", "blocks.fc1", "blocks.fc2", "blocks.fc3", "head"]
    np.testing.assert_array_equal(m.to_numpy(), expected.to_numpy())


def test_layer_matrix_of_a_long_frame_equals_that_of_the_run(small_run):
    with gs.open_run(small_run) as run:
        from_run = layer_matrix(run, max_steps=5)
        from_frame = layer_matrix(run.frame(), max_steps=5)
    pd.testing.assert_frame_equal(from_run, from_frame)
    assert list(from_run.index) == step_sample(list(range(12)), 5)


def test_layer_matrix_samples_steps_for_display(long_run):
    with gs.open_run(long_run) as run:
        all_steps = run.steps()
        m = layer_matrix(run, "update_ratio")
        expected = _reference_matrix(run, "update_ratio", "layer", step_sample(all_steps))
        exact = layer_matrix(run, "update_ratio", steps=[0, 500, 999])
    assert len(all_steps) == 1000
    assert list(m.index) == step_sample(all_steps)
    np.testing.assert_array_equal(m.to_numpy(), expected.to_numpy())
    assert list(exact.index) == [0, 500, 999]


def test_layer_matrices_read_at_once_equal_one_at_a_time(small_run):
    with gs.open_run(small_run) as run:
        tables = layer_matrices(run, level=["layer", "param"])
        stats = {(lv, st) for lv in ("layer", "param") for st in run.stats(lv)}
        assert set(tables) == stats
        for (level, stat), table in tables.items():
            alone = layer_matrix(run, stat, level=level)
            assert list(table.index) == run.steps()  # one index for all; alone: the steps holding the stat
            pd.testing.assert_frame_equal(table.loc[alone.index, alone.columns], alone, obj=f"{level}:{stat}")
            assert table.drop(alone.index).isna().all().all()
            assert table.drop(columns=alone.columns).isna().all().all()  # e.g. grad_dead_rows of a vector
        assert len(layer_matrix(run, "update_ratio")) == 11  # no update at the skipped step 5
    assert layer_matrix(small_run, "no_such_stat").empty


# -- the first/last-layer ratio --------------------------------------------------------------


def test_first_last_ratios_by_hand():
    m = pd.DataFrame({"a": [np.nan, np.nan, np.nan], "b": [2.0, 0.0, 3.0], "c": [1.0, 4.0, 5.0],
                      "d": [4.0, np.inf, 6.0], "e": [0.0, -1.0, np.nan]}, index=[0, 10, 20])
    # first and last columns with a positive finite value: b and d ('a' is empty, 'e' never positive)
    ratios = first_last_ratios(m)
    assert list(ratios.index) == [0, 10, 20]
    assert ratios[0] == 0.5 and np.isnan(ratios[10]) and ratios[20] == 0.5
    assert query.first_last_columns(m) == ("b", "d")
    assert first_last_ratios(m[["a", "b"]]).isna().all()
    assert first_last_ratios(pd.DataFrame()).empty


@pytest.mark.parametrize("stat", ["grad_rms", "grad_norm"])
def test_first_last_ratio_is_the_median_over_steps_of_the_per_step_ratio_of_weighted_layers(small_run, stat):
    with gs.open_run(small_run) as run:
        wide = run.series(stat)  # step x layer, all steps, forward order
        # the weighted layers: 'inp' to 'blocks.fc3'; the head is left out
        assert dict(zip(run.layers().name, run.layers().role))["head"] == "head"
        by_hand = [wide.loc[s, "inp"] / wide.loc[s, "blocks.fc3"] for s in wide.index]
        by_hand = [r for r in by_hand if np.isfinite(r)]
        kwargs = {} if stat == query.DEFAULT_STAT else {"stat": stat}
        assert first_last_ratio(run, **kwargs) == pytest.approx(float(np.median(by_hand)), rel=1e-12)
        assert first_last_ratio(run, stat, agg="max") == pytest.approx(max(by_hand), rel=1e-12)
        weighted = layer_matrix(run, stat, role="weighted", max_steps=None)
        assert list(weighted.columns) == ["inp", "blocks.fc0", "blocks.fc1", "blocks.fc2", "blocks.fc3"]
        assert plots.first_last_ratio is first_last_ratio
        with pytest.raises(ValueError, match="agg"):
            first_last_ratio(run, agg="mode")


# -- run_summary -----------------------------------------------------------------------------


def test_run_summary_against_the_store(small_run):
    with gs.open_run(small_run) as run:
        s = run_summary(run)
        assert (s.name, s.status, s.model) == ("plain6", "finished", run.meta["model_class"])
        assert s.steps == run.steps() and s.num_layers == len(run.layers()) == 6
        assert s.num_tensors == len(run.params()) == 12
        assert s.num_params == run.meta["num_params"]
        assert s.stat == "grad_rms" and s.roles == ("weighted", "head")
        pd.testing.assert_frame_equal(s.layers, run.layer_summary("grad_rms", role=("weighted", "head")))
        assert list(s.layers["role"]) == ["weighted"] * 5 + ["head"]
        assert s.start == format_time(run.meta["start_time"]) and s.end == format_time(run.meta["end_time"])
        assert run_summary(run, with_layers=False).layers is None
    rows = dict(summary_rows(s, base=small_run.parent))
    assert rows["run"] == "plain6"
    assert rows["steps recorded"] == "12 (steps 0…11)"
    assert rows["layers"] == "6 (depth order from forward)"
    assert format_time(None) == "-" and format_time("x") == "-"


def test_family_and_depth_from_the_config(small_run, long_run):
    with gs.open_run(small_run) as run:
        assert family_and_depth(run) == ("plain", 6)
    with gs.open_run(long_run) as run:  # a depth but no family in its config: nothing is guessed
        assert run.config == {"depth": 6} and family_and_depth(run) is None


# -- every reader looks at the same steps ----------------------------------------------------


def test_plots_report_diagnosis_and_graph_read_the_same_step_sample(long_run):
    with gs.open_run(long_run) as run:
        all_steps = run.steps()
        sample = step_sample(all_steps)
        assert len(all_steps) == 1000 and len(sample) == DEFAULT_MAX_STEPS
        wide = run.series("grad_norm", steps=sample)
        values = np.where(np.isfinite(wide.to_numpy()) & (wide.to_numpy() > 0), wide.to_numpy(), np.nan)

        # report: the displayed steps, and the five the gradient-flow chart overlays
        report = run_payload(run, 0).data
        assert report["steps"] == sample
        overlaid = [sample[c] for c in report["flow_columns"]]
        assert overlaid == step_sample(sample, 5) and len(overlaid) == 5

        # flow: the median over steps is the median over exactly those steps; the same steps overlaid
        median, *lines = plots.flow(run, "grad_norm").axes[0].get_lines()
        assert median.get_label() == "median over steps"
        np.testing.assert_allclose(median.get_ydata(), np.nanmedian(values, axis=0), rtol=1e-12)
        assert [line.get_label() for line in lines] == [f"step {s}" for s in overlaid]

        # heatmap: one column per sampled step
        image = plots.heatmap(run, "grad_norm").axes[0].get_images()[0]
        assert image.get_array().shape == (6, len(sample))
        np.testing.assert_allclose(np.ma.filled(image.get_array().astype(float), np.nan), values.T, rtol=1e-12)

        # diagnosis: the per-layer tables
        data = RunView(run)
        assert data.sample == sample
        assert list(data.matrix("layer", "grad_norm").index) == sample

        # graph colouring: the mean over those steps
        layer = "blocks.0.fc1"
        graph = Graph(nodes=[Node("op0", OP, "AddmmBackward0", layer=layer), Node("param:w", PARAM, f"{layer}.weight")],
                      edges=[]).color_by(run, "grad_norm")
        means = run.frame(level="layer", stat="grad_norm", steps=sample).groupby("name")["value"].mean()
        assert graph.stat_label == f"grad_norm, mean over {len(sample)} steps of long"
        assert graph.node("op0").value == pytest.approx(means[layer], rel=1e-12)


def test_nonfinite_steps_are_found_over_all_steps_not_the_sample(long_run):
    with gs.open_run(long_run) as run:
        events = query.nonfinite_events(run)
        sample = step_sample(run.steps())
    assert sorted(set(events["step"])) == [333, 334, 666]
    assert {333, 334} - set(sample)  # at least one of them is not a displayed step


def test_the_default_view_of_module_rows_is_their_layers_weighted_and_head(tmp_path):
    """view_roles left module rows (activation statistics) unfiltered by default: a
    figure or the report of act_rms showed norm modules among the weighted ones. Module
    rows have their layer's role; blocks (residual additions) are all shown."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        model(torch.randn(3, 4)).sum().backward()
        mon.step()
    kinds = {name: type(m).__name__ for name, m in model.named_children()}
    with gs.open_run(tmp_path / "run") as run:
        assert query.view_roles(run, level="module") == ("weighted", "head")
        assert query.view_roles(run, level="block") is None
        shown = query.layer_matrix(run, "act_rms", level="module", role=query.view_roles(run, level="module"))
        assert list(shown.columns) == [n for n, k in kinds.items() if k == "Linear"]  # 0, 2 and the head 4
        assert list(query.layer_matrix(run, "act_rms", level="module").columns) == list(kinds)

"""Every figure against the numbers it should show, recomputed the slow, obvious way from the store."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.colors import LogNorm, to_hex
from matplotlib.figure import Figure

import gradsight as gs
from gradsight import plots
from gradsight.display import NONFINITE_COLOR
from tests.plots.runs import make_normed_run

LAYERS4 = ["inp", "blocks.fc0", "blocks.fc1", "head"]


def _nonfinite_markers(ax) -> list[PathCollection]:
    return [c for c in ax.collections if isinstance(c, PathCollection)
            and len(c.get_facecolor()) and to_hex(c.get_facecolor()[0]) == NONFINITE_COLOR]


def test_flow_draws_layers_in_forward_order_on_a_log_axis(nan_run):
    fig = plots.flow(nan_run, "grad_norm", n_steps=3)
    ax = fig.axes[0]
    assert isinstance(fig, Figure)
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS4
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["median over steps", "step 0", "step 6", "step 11"]


def test_flow_lines_equal_the_stored_values(nan_run):
    wide = nan_run.series("grad_norm")  # step x layer, depth order
    ax = plots.flow(nan_run, "grad_norm", steps=[3, 7]).axes[0]
    median, step3, step7 = ax.get_lines()
    np.testing.assert_allclose(step3.get_ydata(), wide.loc[3].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(step7.get_ydata(), wide.loc[7].to_numpy(), rtol=1e-6)
    expected = [np.nanmedian(wide[c].to_numpy()) for c in wide.columns]
    np.testing.assert_allclose(median.get_ydata(), expected, rtol=1e-6)


def test_flow_marks_the_layer_whose_gradient_went_nan(nan_run):
    ax = plots.flow(nan_run).axes[0]
    (markers,) = _nonfinite_markers(ax)
    assert markers.get_offsets()[:, 0].tolist() == [LAYERS4.index("blocks.fc1")]


def test_flow_of_a_long_frame_matches_flow_of_the_run(nan_run):
    from_run = plots.flow(nan_run).axes[0].get_lines()
    from_frame = plots.flow(nan_run.frame()).axes[0].get_lines()
    assert len(from_run) == len(from_frame) == 6  # the median and five overlaid steps
    for a, b in zip(from_run, from_frame, strict=True):
        assert a.get_label() == b.get_label()
        np.testing.assert_allclose(a.get_ydata(), b.get_ydata())


def test_plots_draw_into_a_given_ax_and_never_touch_pyplot(nan_run):
    plt.close("all")
    fig = Figure()
    ax = fig.add_subplot()
    assert plots.heatmap(nan_run, ax=ax) is fig
    for fn in (plots.flow, plots.quantile_bands, plots.update_ratio, plots.nonfinite):
        assert isinstance(fn(nan_run), Figure)
    assert plt.get_fignums() == []


def test_heatmap_cells_are_the_layer_by_step_values_on_a_log_scale(nan_run):
    ax = plots.heatmap(nan_run, "grad_rms").axes[0]
    image = ax.get_images()[0]
    wide = nan_run.series("grad_rms").T  # layer x step
    shown = np.ma.filled(image.get_array().astype(float), np.nan)
    expected = wide.to_numpy().copy()
    expected[~np.isfinite(expected) | (expected <= 0)] = np.nan
    np.testing.assert_allclose(shown, expected, rtol=1e-6)
    assert isinstance(image.norm, LogNorm)
    assert [t.get_text() for t in ax.get_yticklabels()] == LAYERS4


def test_heatmap_of_a_share_draws_its_zeros(tmp_path):
    """``act_saturated`` is a share: 0 is a value (no unit saturated), drawn as the scale's low end
    on a linear 0..1 scale, not greyed out as nothing recorded."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight.mul_(30)  # the first tanh saturates, the second does not
    with gs.watch(model, tmp_path / "run", activations=True) as mon:
        for _ in range(3):
            model(torch.randn(16, 8)).sum().backward()
            mon.step()
    ax = plots.heatmap(tmp_path / "run", "act_saturated", level="module").axes[0]
    image = ax.get_images()[0]
    shown = np.ma.filled(image.get_array().astype(float), np.nan)
    want = gs.store.view.RunView(tmp_path / "run").matrix("module", "act_saturated")[["0", "2"]].T.to_numpy()
    np.testing.assert_allclose(shown, want, rtol=1e-6)
    assert (want[0] > 0.5).all() and (want[1] == 0).all()  # the case is what it says
    assert not isinstance(image.norm, LogNorm) and (image.norm.vmin, image.norm.vmax) == (0.0, 1.0)
    assert "share" in ax.figure.axes[-1].get_ylabel()
    # the flow chart: a linear axis from 0 to 1, the unsaturated layer's zeros drawn
    ax = plots.flow(tmp_path / "run", "act_saturated", level="module").axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylim() == (0.0, 1.0)
    last = [line for line in ax.get_lines() if line.get_label().startswith("step")][-1]
    np.testing.assert_allclose(np.asarray(last.get_ydata(), dtype=float), want[:, -1], rtol=1e-6)


def test_heatmap_crosses_the_nan_cell(nan_run):
    ax = plots.heatmap(nan_run).axes[0]
    (cross,) = _nonfinite_markers(ax)
    assert cross.get_offsets().tolist() == [[5, LAYERS4.index("blocks.fc1")]]


def test_layer_matrix_downsamples_for_display_never_in_the_store(nan_run):
    m = plots.layer_matrix(nan_run, "grad_norm", max_steps=4)  # steps x names
    assert list(m.index) == [0, 4, 7, 11]  # evenly spaced, first and last kept
    assert list(m.columns) == LAYERS4
    assert len(nan_run.steps()) == 12


def test_quantile_bands_are_quantiles_across_layers(nan_run):
    ax = plots.quantile_bands(nan_run, "grad_norm").axes[0]
    median = ax.get_lines()[0]
    wide = nan_run.series("grad_norm")
    vals = wide.to_numpy().copy()
    vals[~np.isfinite(vals) | (vals <= 0)] = np.nan
    np.testing.assert_allclose(median.get_ydata(), np.nanquantile(vals, 0.5, axis=1), rtol=1e-6)
    assert len(ax.collections) >= 2  # 5-95% and 25-75% bands
    with pytest.raises(ValueError, match="odd"):
        plots.quantile_bands(nan_run, quantiles=(0.25, 0.75))


def test_update_ratio_has_one_line_per_layer_and_the_reference(nan_run):
    ax = plots.update_ratio(nan_run).axes[0]
    lines = ax.get_lines()
    assert len(lines) == len(LAYERS4) + 1
    assert list(lines[-1].get_ydata()) == [1e-3, 1e-3]
    np.testing.assert_allclose(lines[0].get_ydata(), nan_run.series("update_ratio")["inp"].to_numpy(), rtol=1e-6)


def test_update_ratio_joins_a_layers_own_steps_under_rotating_snapshots(tmp_path, monkeypatch):
    """Each layer measured at one step in three (rotating snapshots): its line joins its own
    values, with no gaps at the other layers' steps."""
    from gradsight.instrument import update_ratio as ur

    monkeypatch.setattr(ur, "SNAPSHOT_FLOOR_BYTES", 0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "run", optimizer=opt, update_ratio=True) as mon:
        for _ in range(9):
            model(torch.randn(4, 8)).pow(2).mean().backward()
            mon.step()
            opt.step()
            opt.zero_grad()
    lines = plots.update_ratio(tmp_path / "run", role=None).axes[0].get_lines()[:-1]
    assert [list(line.get_xdata()) for line in lines] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert all(np.isfinite(line.get_ydata()).all() for line in lines)


def test_nonfinite_timeline_names_the_first_layer(nan_run):
    ax = plots.nonfinite(nan_run).axes[0]
    assert any("step 5: blocks.fc1" in t.get_text() for t in ax.texts)


def test_compare_lines_up_depths_and_sweep_reports_first_over_last(runs_dir):
    runs = [runs_dir / n for n in ("plain4", "plain8", "residual4", "residual8")]
    ax = plots.depth_overlay(runs).axes[0]
    lines = ax.get_lines()
    assert len(lines) == 4
    assert all(line.get_xdata()[0] == 0 and line.get_xdata()[-1] == 1 for line in lines)
    assert {len(line.get_xdata()) for line in lines} == {4, 8}

    sweep = plots.depth_sweep(runs).axes[0]
    fams = {line.get_label(): line for line in sweep.get_lines() if not line.get_label().startswith("equal")}
    assert set(fams) == {"plain", "residual"}
    with gs.open_run(runs_dir / "plain8") as run:
        wide = run.series("grad_rms")  # inp, blocks.fc0..fc5, head: the ratio is inp / blocks.fc5
        assert list(wide.columns)[-2:] == ["blocks.fc5", "head"]
        expected = np.median([wide.loc[s, "inp"] / wide.loc[s, "blocks.fc5"] for s in wide.index])
    assert list(fams["plain"].get_xdata()) == [4, 8]
    assert fams["plain"].get_ydata()[1] == pytest.approx(expected, rel=1e-6)
    assert sweep.get_ylabel() == "grad_rms: first / last weighted layer"
    assert any("head left out" in t.get_text() for t in sweep.texts)


def test_depth_sweep_leaves_out_runs_without_a_recorded_family_and_says_so(runs_dir, tmp_path):
    from tests.plots.runs import make_run

    unnamed = make_run(tmp_path / "resnet18", depth=3, steps=3)
    with gs.open_run(unnamed) as run:  # no family or depth in its config, whatever its name says
        run.meta["config"] = {}
        runs = {"plain4": runs_dir / "plain4", "plain8": runs_dir / "plain8", "resnet18": run}
        sweep = plots.depth_sweep(runs).axes[0]
        fams = [line.get_label() for line in sweep.get_lines() if not line.get_label().startswith("equal")]
        assert fams == ["plain"]
        assert any("left out" in t.get_text() and "resnet18" in t.get_text() for t in sweep.texts)
        compared = plots.depth_overlay(runs).axes[0]  # the overlay by relative depth still draws it
        assert {line.get_label() for line in compared.get_lines()} == {
            "plain4 (4 layers)", "plain8 (8 layers)", "resnet18 (5 layers)"}


def test_family_and_depth_come_from_the_config_never_from_the_name():
    from gradsight.store.query import family_and_depth

    class FakeRun:
        def __init__(self, name, config):
            self.name, self.config, self.meta = name, config, {"model_class": "pkg.DeepNet"}

        def layers(self):
            return [0] * 7

    assert family_and_depth(FakeRun("x", {"family": "plain", "depth": 32})) == ("plain", 32)
    assert family_and_depth(FakeRun("plain56", {})) is None
    assert family_and_depth(FakeRun("resnet-20", {"depth": 20})) is None
    assert family_and_depth(FakeRun("gpt2", {"family": "gpt", "depth": "two"})) is None


def test_figures_render_to_every_format(nan_run, tmp_path):
    fig = plots.flow(nan_run)
    for suffix in ("png", "svg", "pdf"):
        fig.savefig(tmp_path / f"flow.{suffix}")
        assert (tmp_path / f"flow.{suffix}").stat().st_size > 1000


def test_missing_statistic_gives_an_empty_figure_not_an_error(nan_run):
    ax = plots.flow(nan_run, "act_rms", level="module").axes[0]
    assert any("no act_rms" in t.get_text() for t in ax.texts)
    assert matplotlib.get_backend().lower() == "agg"


class Custom(torch.nn.Module):
    """A layer of a type no role knows."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(5, 5) / 2)

    def forward(self, x):
        return torch.tanh(x @ self.w)


@pytest.fixture(scope="module")
def normed_run(tmp_path_factory):
    with gs.open_run(make_normed_run(tmp_path_factory.mktemp("normed") / "run", steps=3)) as run:
        yield run


def test_depth_figures_show_weighted_layers_and_the_head_by_default(normed_run):
    ax = plots.flow(normed_run).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["c1", "c2", "fc"]
    assert ax.get_ylabel() == "grad_rms (log scale)"
    assert ax.get_xlabel() == "weighted layers and head, in forward order (input → output)"
    wide = normed_run.series("grad_rms", role=("weighted", "head"))
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), np.nanmedian(wide.to_numpy(), axis=0), rtol=1e-6)
    heat = plots.heatmap(normed_run).axes[0]
    assert [t.get_text() for t in heat.get_yticklabels()] == ["c1", "c2", "fc"]
    assert len(plots.update_ratio(normed_run).axes[0].get_lines()) <= 1  # no optimizer: nothing but no error
    (line,) = plots.depth_overlay([normed_run]).axes[0].get_lines()
    assert len(line.get_xdata()) == 3


def test_every_role_is_one_argument_away(normed_run):
    every = plots.flow(normed_run, role=None).axes[0]
    assert [t.get_text() for t in every.get_xticklabels()] == ["c1", "b1", "c2", "b2", "fc"]
    assert every.get_xlabel().startswith("all layers")
    norms = plots.heatmap(normed_run, "grad_norm", role="norm").axes[0]
    assert [t.get_text() for t in norms.get_yticklabels()] == ["b1", "b2"]
    assert plots.layer_matrix(normed_run, "grad_rms", role=["head"]).columns.tolist() == ["fc"]
    with pytest.raises(ValueError, match="unknown role"):
        plots.flow(normed_run, role="convolution")


def test_a_network_without_weighted_layers_shows_all_its_layers_by_default(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(Custom(), Custom())
    with gs.watch(model, tmp_path / "run") as mon:
        model(torch.randn(3, 5)).sum().backward()
        mon.step()
    with gs.open_run(tmp_path / "run") as run:
        assert set(run.layers().role) == {"other"}
        ax = plots.flow(run).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"]
    assert ax.get_xlabel().startswith("all layers")


def test_plots_compare_is_a_deprecated_alias_of_depth_overlay(runs_dir):
    runs = sorted(runs_dir.iterdir())
    with pytest.warns(DeprecationWarning, match="depth_overlay"):
        old = plots.compare(runs).axes[0]
    new = plots.depth_overlay(runs).axes[0]
    assert [line.get_label() for line in old.get_lines()] == [line.get_label() for line in new.get_lines()]
    assert plots.KINDS["compare"] is plots.depth_overlay


def test_heatmap_step_ticks_are_round_numbers_at_their_columns(tmp_path):
    """The step axis used to label eight evenly spaced columns (0, 21, 43, ...); now round
    step numbers, each placed where that step falls between the shown columns."""
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with gs.watch(model, tmp_path / "run") as mon:
        for _ in range(87):
            model(torch.randn(3, 4)).sum().backward()
            mon.step()
            model.zero_grad()
    ax = gs.plots.heatmap(tmp_path / "run", max_steps=30).axes[0]
    labels = [int(t.get_text()) for t in ax.get_xticklabels()]
    assert labels == [0, 20, 40, 60, 80]
    with gs.open_run(tmp_path / "run") as run:
        shown = gs.RunView(run, max_steps=30).sample
    for value, x in zip(labels, ax.get_xticks()):  # each label sits where its step falls between columns
        assert np.interp(x, range(len(shown)), shown) == pytest.approx(value)


def test_flow_legend_sits_beside_the_lines(tmp_path):
    """The flow figure's legend used to sit inside the axes ("best"), over the data points
    when a dozen steps are overlaid; it sits to the right of the axes."""
    from torch import nn

    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(6)])
    with gs.watch(model, tmp_path / "run") as mon:
        for _ in range(12):
            model(torch.randn(4, 8)).sum().backward()
            mon.step()
            model.zero_grad()
    fig = gs.plots.flow(tmp_path / "run")
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # entirely to the right of the plotting area


def _labelled_ticks(axis) -> list[tuple[float, str]]:
    """``(value, label)`` of the major ticks inside the view that carry a label."""
    lo, hi = sorted(axis.get_view_interval())
    out = []
    for tick in axis.get_major_ticks():
        text = tick.label1.get_text() or tick.label2.get_text()
        if text and lo * (1 - 1e-9) <= tick.get_loc() <= hi * (1 + 1e-9):
            out.append((float(tick.get_loc()), text))
    return out


@pytest.mark.parametrize("lo, hi", [(0.31, 0.39), (3.0, 40.0), (0.95, 1.5)])
def test_a_log_axis_within_one_or_two_decades_has_two_labelled_ticks(nan_run, lo, hi):
    """A log axis spanning less than a decade, or one power of ten, used to carry a single
    labelled tick (or none): every figure's log axes, colour bars included, now have two or
    more, each label the number at its tick."""
    frame = nan_run.frame(stat="grad_rms")
    frame["value"] = np.linspace(lo, hi, len(frame))
    figures = {"flow": plots.flow(frame), "bands": plots.quantile_bands(frame), "heatmap": plots.heatmap(frame)}
    for kind, fig in figures.items():
        fig.draw_without_rendering()
        log_axes = [axis for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) if axis.get_scale() == "log"]
        assert log_axes, kind
        for axis in log_axes:
            ticks = _labelled_ticks(axis)
            assert len(ticks) >= 2, (kind, lo, hi, ticks)
            assert len({text for _, text in ticks}) == len(ticks)
            for value, text in ticks:
                assert float(text) == pytest.approx(value, rel=0.01), (kind, text, value)


def test_log_ticks_keep_two_inside_any_range():
    from gradsight.plots._figure import log_ticks

    for lo, hi in [(0.31, 0.39), (3.0, 40.0), (0.30012, 0.30031), (2e-3, 9e-3), (1e-7, 1e2), (0.999, 1.001)]:
        ticks = log_ticks(lo, hi)
        assert len(ticks) >= 2 and all(lo <= t <= hi for t in ticks), (lo, hi, ticks)
    assert all(float(np.log10(t)).is_integer() for t in log_ticks(1e-7, 1e2))  # two decades or more: powers of ten
    assert log_ticks(3.0, 40.0) == [5.0, 10.0, 20.0]  # one power of ten inside: 1, 2, 5 x 10^k

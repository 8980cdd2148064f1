"""The figures ``compare`` writes: gradient norm by weighted layer, all runs overlaid, training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

import gradsight as gs
from gradsight.train import compare as compare_module
from gradsight.train import figures, train


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, small_data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fig")
    out = {}
    for name, depth in (("plain", 8), ("resnet", 14)):
        out[f"{name}-{depth}"] = train(name, small_data, "lecture", depth=depth, epochs=2, run_dir=root / name,
                                       progress=False).run_dir
    return out


def test_grad_flow_is_log_scale_over_the_weighted_layers_in_forward_order(two_runs):
    with gs.open_run(two_runs["plain-8"]) as run:
        names = figures.weighted_layers(run)
        assert names[0] == "stem.conv" and names[-1] == "head.fc" and len(names) == 8  # 7 convs + fc
        assert not any("bn" in n for n in names)
        fig = figures.grad_flow(run)
        first, late = figures.first_and_late_steps(run)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()][:2] == ["stem.conv", "s1.b0.conv1"]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == [f"step {first} (initialization)", f"step {late}"] and first == 0 and late == 7


def test_overlay_puts_every_run_on_relative_depth(two_runs):
    fig = figures.grad_flow_overlay(list(two_runs.values()))
    first_ax, late_ax = fig.axes[:2]
    for ax in (first_ax, late_ax):
        assert ax.get_yscale() == "log"
        lines = ax.get_lines()
        assert len(lines) == 2
        for line in lines:
            x = np.asarray(line.get_xdata())
            assert x[0] == 0.0 and x[-1] == 1.0
    assert {len(line.get_xdata()) for line in first_ax.get_lines()} == {8, 14}


def test_training_curves(two_runs):
    fig = figures.training_curves(list(two_runs.values()))
    assert len(fig.axes) == 2 and len(fig.axes[1].get_lines()) == 4  # train and test error per run


def test_compare_falls_back_to_its_own_figures(two_runs, tmp_path, monkeypatch):
    monkeypatch.setattr(compare_module, "_plots_flow", lambda: None)
    written = compare_module._write_figures(tmp_path, two_runs)
    assert {p.name for p in written} == {"gradflow-plain-8.png", "gradflow-resnet-14.png", "gradflow-all.png",
                                         "training-curves.png"}
    assert all(p.stat().st_size > 10_000 for p in written)

"""Log2 histogram figures (``gradsight.plots.histograms``) and ``gradsight plot --kind hist``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.cli import main
from gradsight.plots.histograms import format_lines, log2_histogram, log2_histograms
from gradsight.store import histograms as store_histograms


@pytest.fixture(scope="module")
def hist_run(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hist") / "run"
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    with gs.watch(model, path, histograms=2) as mon:
        for _ in range(6):
            model.zero_grad()
            (model(torch.randn(4, 8)).pow(2).mean() * 1e-4).backward()
            mon.step()
    return path


def test_matrix_is_the_stored_counts(hist_run):
    run = gs.open_run(hist_run)
    frame = run.histograms(level="model")
    steps, buckets, counts = store_histograms.matrix(frame, "")
    assert steps == [0, 2, 4]
    for k, s in enumerate(steps):
        part = frame[frame.step == s]
        want = dict(zip(part.log2_bucket, part["count"]))
        got = {b: int(c) for b, c in zip(buckets, counts[:, k]) if c}
        assert got == want
    zero_frac = run.series("grad_zero_frac", level="model", steps=steps).iloc[:, 0].to_numpy()
    assert np.allclose(counts.sum(0), np.round(450 * (1 - zero_frac)))  # every nonzero element, once


def test_format_lines_in_range():
    lines = format_lines(-30, 20)
    assert ("fp16", -25.0, "zero") in lines and ("fp8e4m3", -10.0, "zero") in lines
    assert any(f == "fp16" and e == "max" and 15 < v < 16 for f, v, e in lines)
    assert not any(f == "bf16" for f, _, _ in lines)  # bf16's edges are far outside


def test_figures_draw_the_buckets_and_the_format_lines(hist_run):
    fig = log2_histogram(hist_run)
    ax = fig.axes[0]
    image = ax.images[0].get_array()
    assert image.shape[1] == 3
    labels = ax.get_legend_handles_labels()[1]
    assert any(lbl.startswith("fp16") for lbl in labels)
    assert np.nanmax(image) <= 1.0
    fig = log2_histograms(hist_run)
    assert len([a for a in fig.axes if a.images]) == 3  # three layers


def test_a_figure_of_some_layers_says_which_and_how_chosen(tmp_path):
    """The title says how many of how many layers are shown, and how they were picked: evenly
    spaced in forward order, as the steps are (store.query.step_sample)."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(7)])
    with gs.watch(model, tmp_path / "run", histograms=True) as mon:
        model(torch.randn(2, 4)).sum().backward()
        mon.step()
    fig = log2_histograms(tmp_path / "run", max_layers=4)
    assert fig.get_suptitle().endswith("(4 of 7 layers, evenly spaced in forward order (first and last included))")
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["0", "2", "4", "6"]  # round(k * 6 / 3)
    assert log2_histograms(tmp_path / "run").get_suptitle().endswith("(all 7 layers)")


def test_plot_kind_hist(hist_run, tmp_path, capsys):
    for level in ("layer", "model"):
        out = tmp_path / f"{level}.png"
        assert main(["plot", str(hist_run), "--kind", "hist", "--level", level, "-o", str(out)]) == 0
        assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_kind_hist_without_histograms_is_one_line(runs_dir, tmp_path, capsys):
    assert main(["plot", str(runs_dir / "plain4"), "--kind", "hist", "-o", str(tmp_path / "h.png")]) == 2
    err = capsys.readouterr().err
    assert "has no histograms" in err and "histograms=True" in err and err.count("\n") == 1

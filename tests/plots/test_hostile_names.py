"""Module, run and family names with ``$...$`` (Matplotlib mathtext) are shown as written in
every figure: ``gradsight plot --kind ...`` and the report's figures."""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from pathlib import Path

import matplotlib
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.cli import main

#: Names Matplotlib would parse as maths: an unknown command (a parse error), sub/superscripts.
NAMES = ("$\\nosuchcommand{$", "w$x_1$", "$$", "a$b^2$c")


class HostileNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(OrderedDict((name, nn.Linear(4, 4)) for name in NAMES))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def _record(run_dir: Path, depth: int, nan_at: int | None = None) -> Path:
    torch.manual_seed(depth)
    model = HostileNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    config = {"family": "fam$x^2$", "depth": depth}
    with gs.watch(model, run_dir, optimizer=opt, config=config, name=f"run ${depth}_x$") as mon:
        for step in range(4):
            model(torch.randn(8, 4)).pow(2).mean().backward()
            if step == nan_at:
                model.layers[1].weight.grad[0, 0] = float("nan")
            mon.step()
            opt.step()
            opt.zero_grad()
    return run_dir


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    _record(root / "r$1$", 4, nan_at=2)
    _record(root / "r$2$", 8)
    return root


@pytest.mark.parametrize("kind", ["flow", "heatmap", "bands", "update", "nonfinite", "compare", "sweep"])
def test_every_plot_kind_shows_names_with_dollars_as_written(hostile_runs, tmp_path, capsys, kind):
    out = tmp_path / "fig.svg"
    runs = [str(hostile_runs)] if kind in ("compare", "sweep") else [str(hostile_runs / "r$1$")]
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text, so it can be searched
        code = main(["plot", *runs, "--kind", kind, "--role", "all", "-o", str(out)]
                    if kind in ("flow", "heatmap", "bands") else ["plot", *runs, "--kind", kind, "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    svg = out.read_text()
    texts = re.findall(r"<text\b[^>]*>([^<]*)</text>", svg)  # one element per plain text, not per math glyph
    svg = "\n".join(html.unescape(t) for t in texts)
    if kind in ("flow", "heatmap"):
        for name in NAMES:
            # as written: whole, shortened to its end, or without the prefix every layer shares
            lines = svg.splitlines()
            assert f"layers.{name}" in svg or f"…{name}" in svg or name in lines, name
    if kind != "sweep":
        assert "run $4_x$" in svg
    else:
        assert "fam$x^2$" in svg


def test_report_with_names_with_dollars(hostile_runs, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(hostile_runs), "-o", str(out)]) == 0, capsys.readouterr().err
    assert out.stat().st_size > 1000


def test_numeric_log_ticks_keep_mathtext_and_a_given_figure_keeps_its_own_text():
    """Only text a plot function adds loses mathtext: log-axis tick labels (10^{-5}) keep it, and
    so does text already in a figure the caller passed."""
    from matplotlib.figure import Figure

    from gradsight.plots._figure import new_axes, styled

    @styled
    def log_plot(ax=None):
        fig, ax = new_axes(ax, (3, 2))
        ax.semilogy([1, 2, 3], [1e-5, 1.0, 1e5])
        ax.set_title("w$x_1$")
        return fig

    fig = Figure()
    mine, theirs = fig.subplots(1, 2)
    mine.set_title("$\\alpha$")
    log_plot(ax=theirs)
    fig.canvas.draw()
    assert not theirs.title.get_parse_math()
    assert mine.title.get_parse_math()
    powers = [t for t in theirs.get_yticklabels() if "$" in t.get_text()]
    assert powers and all(t.get_parse_math() for t in powers)


def test_secondary_axis_log_ticks_keep_mathtext():
    """A secondary axis is a child of its axes, not in ``fig.axes``: its numeric tick labels
    (10^{0}) keep mathtext too instead of showing ``$\\mathdefault{...}$`` as written."""
    import io

    from matplotlib.figure import Figure

    from gradsight.plots._figure import styled

    @styled
    def with_secondary():
        fig = Figure()
        ax = fig.subplots()
        ax.semilogy([1, 2, 3], [1.0, 1e2, 1e4])
        ax.secondary_yaxis("right", functions=(lambda v: v * 2, lambda v: v / 2))
        return fig

    fig = with_secondary()
    fig.savefig(io.BytesIO(), format="png")
    secondary = fig.axes[0].child_axes[0]
    powers = [t for t in secondary.yaxis.get_ticklabels() if "$" in t.get_text()]
    assert powers and all(t.get_parse_math() for t in powers)

"""The report's gradient distribution section (runs recorded with ``histograms=``)."""

from __future__ import annotations

import re

import pytest
import torch
from matplotlib.text import Text
from torch import nn

import gradsight as gs
from gradsight.display import fmt_value
from gradsight.report.histograms import headroom_rows, histograms_html
from gradsight.report.html import write_report


def _run(path, histograms):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    with gs.watch(model, path, histograms=histograms) as mon:
        for _ in range(4):
            model.zero_grad()
            (model(torch.randn(4, 8)).pow(2).mean() * 1e-6).backward()
            mon.step()
    return path


def test_section_shows_the_headroom_and_the_figure(tmp_path):
    run = gs.open_run(_run(tmp_path / "hist", True))
    rows = {f: (u, o) for f, u, o in headroom_rows(run)}
    model = run.frame(level="model", stat="fp8e4m3_underflow")
    assert model.value.median() > 0 and rows["fp8e4m3"][0] == fmt_value(model.value.median())
    assert rows["bf16"][1] == "-"  # bf16 has float32's range: no overflow statistic
    page = write_report([tmp_path / "hist"], tmp_path / "report.html").read_text()
    assert "Gradient distributions" in page
    section = page[page.index("Gradient distributions"):]
    assert re.search(r'<img alt="log2 gradient histograms per layer" width="\d+" height="\d+" '
                     r'src="data:image/png;base64,', section)


def test_no_section_without_histograms(tmp_path):
    run = gs.open_run(_run(tmp_path / "plain", False))
    assert histograms_html(run, lambda fig: "") == ""


def _deep_run(path, blocks: int):
    """``blocks`` x (attention_dense, LayerNorm, output_dense): 3 * blocks layers with histograms."""
    torch.manual_seed(0)
    model = nn.Sequential()
    for i in range(blocks):
        block = nn.Sequential()
        block.add_module("attention_dense", nn.Linear(8, 8))
        block.add_module("LayerNorm", nn.LayerNorm(8))
        block.add_module("output_dense", nn.Linear(8, 8))
        model.add_module(f"layer{i}", block)
    with gs.watch(model, path, histograms=True) as mon:
        for _ in range(3):
            model(torch.randn(4, 8)).pow(2).mean().backward()
            mon.step()
            model.zero_grad()
    return path


@pytest.fixture(scope="module")
def deep_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("deep")
    return {n: gs.open_run(_deep_run(root / f"deep{n}", n // 3)) for n in (27, 3)}


def _section(run):
    figures = []

    def png(fig, dpi):
        figures.append((fig, dpi))
        return "data:,"

    return histograms_html(run, png), figures[0]


def test_the_section_says_which_layers_it_shows_and_how_they_were_chosen(deep_runs):
    """The section used to show 12 of 27 layers without saying which."""
    page, _ = _section(deep_runs[27])
    names = [f"layer{i}.{part}" for i in range(9) for part in ("attention_dense", "LayerNorm", "output_dense")]
    picked = [0, 2, 5, 7, 9, 12, 14, 17, 19, 21, 24, 26]  # round(k * 26 / 11): evenly spaced, first and last
    assert f"Shown: 12 of 27 layers, evenly spaced in forward order (first and last included): " \
           f"{', '.join(names[i] for i in picked)}." in page
    small, _ = _section(deep_runs[3])
    assert "Shown: all 3 layers: layer0.attention_dense, layer0.LayerNorm, layer0.output_dense." in small


def test_the_figure_is_shown_with_text_no_smaller_than_the_reports(deep_runs):
    """The figure used to be squeezed into 720 px (5 px labels); it is shown at its own
    size, its smallest text at 13 px or more (the report's tables and notes), as wide as
    the page's column at a 1280 px window, and as tall as its rows of panels."""
    heights = {}
    for n, run in deep_runs.items():
        page, (fig, dpi) = _section(run)
        width, height = (int(v) for v in re.search(r'width="(\d+)" height="(\d+)"', page).groups())
        assert 'class="img-full"' in page and width <= 1280 - 2 * 28
        px_per_inch = width / fig.get_size_inches()[0]
        assert height == pytest.approx(fig.get_size_inches()[1] * px_per_inch, abs=1)
        assert dpi >= px_per_inch  # at least one image pixel per CSS pixel
        fig.draw_without_rendering()
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        smallest = min(t.get_fontsize() for t in texts) / 72 * px_per_inch
        assert smallest >= 13, smallest
        heights[n] = height
    assert heights[3] < heights[27] / 2  # 2 rows of panels against 6

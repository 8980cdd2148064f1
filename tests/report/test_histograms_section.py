"""The report's gradient distribution section (runs recorded with ``histograms=``)."""

from __future__ import annotations

import re

import torch
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
    assert re.search(r'<img alt="log2 gradient histograms per layer" src="data:image/png;base64,', section)


def test_no_section_without_histograms(tmp_path):
    run = gs.open_run(_run(tmp_path / "plain", False))
    assert histograms_html(run, lambda fig: "") == ""

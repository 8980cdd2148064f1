"""The report's gradient noise scale section (runs recorded with ``noise_scale=``)."""

from __future__ import annotations

import re

import gradsight as gs
from gradsight.display import fmt_value
from gradsight.report.html import write_report
from gradsight.report.noise_scale import quarter_rows
from tests.noise_runs import record


def test_section_shows_the_quarters_and_the_figure(tmp_path):
    run = gs.open_run(record(tmp_path / "gns", noise=0.0, micro=8, accumulate=2, steps=20))
    rows = quarter_rows(run)
    assert [r[0] for r in rows] == ["0-4", "5-9", "10-14", "15-19"]
    grad_sq = run.series("gns_grad_sq", "model").iloc[5:10, 0].mean()
    trace = run.series("gns_trace", "model").iloc[5:10, 0].mean()
    assert rows[1][1:] == (fmt_value(trace / grad_sq), fmt_value(16), fmt_value(16 / (trace / grad_sq)))
    page = write_report([tmp_path / "gns"], tmp_path / "report.html").read_text()
    section = page[page.index("<h3>Gradient noise scale</h3>"):]
    assert "in samples" in section
    assert re.search(r'<img alt="gradient noise scale over training" width="\d+" height="\d+" '
                     r'src="data:image/png;base64,', section)


def test_a_run_without_noise_scale_has_no_section(tiny_run, tmp_path):
    page = write_report([tiny_run], tmp_path / "report.html").read_text()
    assert "Gradient noise scale" not in page

"""The report's gradient-through-time section: a figure per recurrent module recorded with
``through_time=True`` (the figure's values are tested in tests/plots/test_recurrent.py)."""

from __future__ import annotations

import torch

from gradsight.report.figures import recurrent_modules, through_time_html
from gradsight.report.html import build_report
from gradsight.store.reader import open_run
from tests.instrument.test_recurrent import LSTMLanguageModel, train
from tests.plots.runs import make_run


def test_a_recurrent_run_has_its_gradient_through_time_in_the_report(tmp_path):
    torch.manual_seed(0)
    train(LSTMLanguageModel(), tmp_path / "lstm", steps=3)
    with open_run(tmp_path / "lstm") as run:
        assert recurrent_modules(run) == ["rnn"]
        page = build_report([run])
    section = page[page.index("<h3>Gradient through time</h3>"):]
    assert section.index('<img alt="gradient through time of rnn"') < section.index("</section>")
    assert "gain per time step" in section[: section.index("<img")]


def test_a_run_without_it_has_no_such_section(tmp_path):
    make_run(tmp_path / "plain", steps=3)
    with open_run(tmp_path / "plain") as run:
        assert recurrent_modules(run) == [] and through_time_html(run) == ""
        assert "Gradient through time" not in build_report([run])

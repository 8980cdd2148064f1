"""Runs and monitors in a notebook (``_repr_html_``) and the report inline (``gs.show``)."""

from __future__ import annotations

import html
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.report.html import build_report
from gradsight.report.notebook import InlineReport, card_html
from tests.plots.runs import TinyNet, make_run
from tests.report.conftest import HOSTILE, HostileNet
from tests.store.helpers import store_files

#: A name with everything HTML gives meaning to: a tag, both quotes, an ampersand.
HOSTILE_NAME = HOSTILE + "\"'&amp; <img src=x onerror=alert(3)>"


class Tags(HTMLParser):
    """Every start tag of a document, with its attributes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def names(self) -> set[str]:
        return {t for t, _ in self.tags}


def assert_inert(text: str) -> None:
    """No script, no image, no event handler: only the card's own elements."""
    tags = Tags(text)
    assert tags.names() <= {"div", "span", "b", "svg", "polyline", "circle", "line", "title", "ul", "li", "code"}
    assert not [a for _, attrs in tags.tags for a in attrs if a.startswith("on")]


def record(model: nn.Module, monitor, steps: int, width: int = 4) -> None:
    torch.manual_seed(1)
    for _ in range(steps):
        model(torch.randn(8, width)).pow(2).mean().backward()
        monitor.step()
        model.zero_grad()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("nb") / "plain", depth=3, steps=12, nan_at=5)


def test_a_run_shows_its_name_status_steps_charts_and_findings(finished: Path) -> None:
    with gs.open_run(finished) as run:
        text = run._repr_html_()
        findings = gs.diagnose(run)
    tags = Tags(text)
    words = "".join(tags.text)
    assert "plain" in words and "finished" in words and "12 steps (0…11)" in words
    assert "model grad_norm" in words and "grad_rms by depth at step 11 (5 layers)" in words
    assert "non-finite at 1 step" in words  # the NaN at step 5
    assert sum(t == "polyline" for t, _ in tags.tags) == 3  # the norm, broken at the NaN, and the profile
    layers = ["inp", "blocks.fc0", "blocks.fc1", "blocks.fc2", "head"]
    points = [d.split(":")[0] for d in tags.text if d.split(":")[0] in layers]
    assert points == layers  # each point names its layer, in forward order
    assert findings and all(f.code in words for f in findings)
    assert_inert(text)


def test_the_card_is_self_contained(finished: Path) -> None:
    with gs.open_run(finished) as run:
        text = run._repr_html_()
    assert "http" not in text and "<script" not in text and "<style" not in text and "url(" not in text


def test_reading_the_card_leaves_the_store_as_it_was(finished: Path) -> None:
    before = store_files(finished)
    with gs.open_run(finished) as run:
        run._repr_html_()
    assert store_files(finished) == before


def test_hostile_run_and_layer_names_stay_inert(tmp_path: Path) -> None:
    model = HostileNet()
    with gs.watch(model, tmp_path / "hostile", name=HOSTILE_NAME) as monitor:
        record(model, monitor, 3)
        live = monitor._repr_html_()
    with gs.open_run(tmp_path / "hostile") as run:
        text = run._repr_html_()
    for shown in (live, text):
        assert HOSTILE not in shown and "<img" not in shown
        assert html.escape(HOSTILE_NAME) in shown  # the run's name, as text
        assert_inert(shown)
        assert HOSTILE_NAME in "".join(Tags(shown).text)
    # the layer names appear on the depth profile's points, as text
    assert any(d.startswith(HOSTILE + ":") for d in Tags(text).text)


def test_a_monitor_shows_what_it_recorded_so_far(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyNet(2, False)
    monitor = gs.watch(model, tmp_path / "live")
    try:
        empty = monitor._repr_html_()
        assert "running" in empty and "0 steps" in empty and "No steps recorded yet" in empty
        assert "nothing_recorded" not in empty  # no warning before training has begun
        record(model, monitor, 5)
        text = monitor._repr_html_()  # committed first: no waiting for the writer's next commit
        assert "running" in text and "5 steps (0…4)" in text and "<polyline" in text
    finally:
        monitor.close()
    closed = monitor._repr_html_()
    assert "finished" in closed and "5 steps (0…4)" in closed


def test_an_empty_closed_run_says_so(tmp_path: Path) -> None:
    model = TinyNet(2, False)
    with gs.watch(model, tmp_path / "empty") as monitor:
        pass
    text = monitor._repr_html_()
    assert "finished" in text and "No steps recorded yet" in text and "nothing_recorded" in text
    assert_inert(text)


def test_showing_a_monitor_does_not_change_what_is_recorded(tmp_path: Path) -> None:
    frames = []
    for shown in (False, True):
        torch.manual_seed(0)
        model = TinyNet(2, False)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with gs.watch(model, tmp_path / f"run{shown}", optimizer=opt, update_ratio=2) as monitor:
            for _ in range(6):
                model(torch.randn(8, 4)).pow(2).mean().backward()
                monitor.step()
                opt.step()
                opt.zero_grad()
                if shown:
                    monitor._repr_html_()
        with gs.open_run(tmp_path / f"run{shown}") as run:
            frames.append(run.frame().sort_values(["step", "level", "name", "stat"]).reset_index(drop=True))
    assert frames[0].equals(frames[1])


def test_a_card_never_raises(tmp_path: Path) -> None:
    broken = make_run(tmp_path / "broken", depth=1, steps=3)
    run = gs.open_run(broken)
    run.close()  # reading a closed run fails
    text = card_html(run)
    assert "could not be read" in text and str(broken) in html.unescape(text)


def test_a_run_without_a_card_drawer_shows_its_repr(finished: Path, monkeypatch) -> None:
    from gradsight import display

    monkeypatch.setattr(display, "_card_html", None)
    with gs.open_run(finished) as run:
        assert run._repr_html_() == f"<pre>{html.escape(repr(run))}</pre>"


# -- gs.show ----------------------------------------------------------------------------
def frame_of(shown: InlineReport) -> dict[str, str | None]:
    tags = Tags(shown._repr_html_())
    frames = [attrs for tag, attrs in tags.tags if tag == "iframe"]
    assert len(frames) == 1 and tags.names() <= {"iframe", "p"}
    return frames[0]


def test_show_embeds_the_report_page_sandboxed(finished: Path) -> None:
    shown = gs.show(finished, height=500)
    frame = frame_of(shown)
    assert frame["sandbox"] == "allow-scripts" and "height:500px" in frame["style"]
    assert frame["srcdoc"] == shown.page  # escaped once for the attribute, read back whole
    assert shown.page.startswith("<!DOCTYPE html>") and 'id="gs-data"' in shown.page
    assert shown.recording == [] and "still recording" not in shown._repr_html_()
    same = build_report([finished])  # the page gradsight report writes (but for its time)
    assert len(same) - 40 < len(shown.page) < len(same) + 40


def test_show_keeps_hostile_names_inside_the_frame(tmp_path: Path) -> None:
    model = HostileNet()
    with gs.watch(model, tmp_path / "hostile", name=HOSTILE_NAME) as monitor:
        record(model, monitor, 3)
    shown = gs.show(tmp_path / "hostile")
    outer = shown._repr_html_()
    assert HOSTILE not in outer and "<img" not in outer and "<script" not in outer
    assert frame_of(shown)["srcdoc"] == shown.page


def test_show_of_a_recording_run_says_to_run_the_cell_again(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyNet(2, False)
    with gs.watch(model, tmp_path / "live", name=HOSTILE_NAME) as monitor:
        record(model, monitor, 4)
        shown = gs.show(monitor)  # what the monitor queued is in
        outer = shown._repr_html_()
        assert shown.recording == [(HOSTILE_NAME, 4)]
        assert "4 steps so far" in outer and "run this cell again" in outer
        assert "<code>gradsight serve</code>" in outer  # the live view that follows a recording run
        assert HOSTILE not in outer
    assert gs.show(monitor).recording == []


def test_show_of_a_folder_reports_every_run_below_it(finished: Path, tmp_path: Path) -> None:
    make_run(tmp_path / "a", depth=1, steps=3)
    make_run(tmp_path / "b", depth=2, steps=3, skip=True)
    shown = gs.show(tmp_path, title="two runs")
    assert "<title>two runs</title>" in shown.page and 'id="comparison"' in shown.page
    with gs.open_run(finished) as run:
        assert "plain" in gs.show(run).page
        assert run.steps()  # a run given stays open


def test_a_card_does_not_load_the_plots(finished: Path) -> None:
    """The card is inline SVG: drawing one loads neither matplotlib nor the report's page code."""
    import subprocess
    import sys

    code = ("import sys, gradsight as gs\n"
            f"with gs.open_run({str(finished)!r}) as run: assert '<svg' in run._repr_html_()\n"
            "print(sorted({'matplotlib', 'gradsight.report.html'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_failed_run_shows_its_error_and_dropped_steps(tmp_path: Path) -> None:
    import json
    import sqlite3

    run_dir = make_run(tmp_path / "failed", depth=1, steps=4)
    with sqlite3.connect(run_dir / "gradsight.sqlite") as conn:
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                         [("status", json.dumps("failed")), ("error", json.dumps(f"RuntimeError: {HOSTILE}")),
                          ("steps_dropped", json.dumps(3))])
    conn.close()
    with gs.open_run(run_dir) as run:
        text = run._repr_html_()
    words = "".join(Tags(text).text)
    assert "failed" in words and f"RuntimeError: {HOSTILE}" in words and "3 recorded steps dropped" in words
    assert_inert(text)

"""Runs stored in the default ``<output_dir>/gradsight`` folder are named by their output
folder, and runs shown together get names that tell them apart (issue 22, item 6)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from gradsight.plots.training import grad_flow_overlay, training_curves
from gradsight.report.html import build_report
from gradsight.store.query import run_labels
from gradsight.store.reader import open_run
from tests.plots.runs import make_run


def _payload_names(html: str) -> list[str]:
    """The ``name`` of each run in the report's JSON payload."""
    return [json.loads(f'"{m}"') for m in re.findall(r'\{"name":"((?:[^"\\]|\\.)*)"', html)]


def _legend(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_default_store_folders_report_names_their_output_folders(tmp_path: Path) -> None:
    for d in "abc":
        make_run(tmp_path / d / "gradsight", steps=3)
    html = build_report([tmp_path])
    assert "<title>gradsight report: a, b, c</title>" in html
    assert re.findall(r"<h2>(a|b|c|gradsight)</h2>", html) == ["a", "b", "c"]
    assert _payload_names(html) == ["a", "b", "c"]
    runs = [tmp_path / d / "gradsight" for d in "abc"]
    assert _legend(training_curves(runs)) == ["a", "b", "c"]
    assert _legend(grad_flow_overlay(runs)) == [f"{d} (step 0)" for d in "abc"]


def test_same_output_folder_names_are_told_apart_by_their_paths(tmp_path: Path) -> None:
    runs = [make_run(tmp_path / d / "exp" / "gradsight", steps=3) for d in "xy"]
    with open_run(runs[0]) as run:
        assert run.name == "exp"
    assert run_labels(runs) == ["x/exp", "y/exp"]
    html = build_report(runs)
    assert "<title>gradsight report: x/exp, y/exp</title>" in html
    assert _payload_names(html) == ["x/exp", "y/exp"]
    assert _legend(training_curves(runs)) == ["x/exp", "y/exp"]


def test_given_names_are_kept_and_suffixed_only_when_shared(tmp_path: Path) -> None:
    runs = [make_run(tmp_path / d / "gradsight", steps=2, name=n) for d, n in (("x", "lstm"), ("y", "lstm"), ("z", "gru"))]
    assert run_labels(runs) == ["lstm (x)", "lstm (y)", "gru"]
    assert run_labels([runs[0], runs[0]]) == ["lstm", "lstm #2"]
    with open_run(runs[2]) as run:
        assert run.name == "gru"


def test_compare_figure_tells_same_named_runs_apart(tmp_path: Path) -> None:
    from gradsight.plots.compare import depth_overlay

    runs = [make_run(tmp_path / d / "exp" / "gradsight", steps=3) for d in "xy"]
    texts = [t for ax in depth_overlay(runs, "grad_norm").axes if ax.get_legend() for t in _legend_of(ax)]
    assert any("x/exp" in t for t in texts) and any("y/exp" in t for t in texts), texts


def _legend_of(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]

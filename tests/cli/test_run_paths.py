"""One rule for the path of a run in every command (issue 22, item 7): a folder holding
exactly one run below it is that run; a folder holding several is an error that names them;
multi-run commands (plot --kind compare, report) take every run below a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradsight.cli import main
from gradsight.store.reader import open_run, resolve_run
from tests.plots.runs import make_run

TINY_NET = ["tests.plots.runs:TinyNet", "--arg", "depth=4", "--arg", "skip=False", "--input-shape", "4"]


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> Path:
    """``out/`` holding one run in the default folder, ``out/gradsight``."""
    out = tmp_path_factory.mktemp("one") / "out"
    make_run(out / "gradsight", steps=3)
    return out


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """``out/`` holding ``out/a/gradsight`` and ``out/b/gradsight``."""
    out = tmp_path_factory.mktemp("two") / "out"
    for d in "ab":
        make_run(out / d / "gradsight", steps=3)
    return out


def _commands(path: Path, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "info": ["info", str(path)],
        "doctor": ["doctor", str(path), "--fail-on", "error"],
        "export": ["export", str(path), "-o", str(tmp_path / "values.csv")],
        "graph": ["graph", *TINY_NET, "--run", str(path), "-o", str(tmp_path / "graph.dot")],
        "plot": ["plot", str(path), "--kind", "flow", "-o", str(tmp_path / "flow.png")],
        "report": ["report", str(path), "-o", str(tmp_path / "report.html")],
    }


def test_resolve_run_takes_the_one_run_below_a_folder(one_run: Path) -> None:
    assert resolve_run(one_run) == one_run / "gradsight"
    assert resolve_run(one_run / "gradsight") == one_run / "gradsight"
    with open_run(one_run) as run:
        assert run.path == one_run / "gradsight"


@pytest.mark.parametrize("command", ["info", "doctor", "export", "graph", "plot", "report"])
def test_every_command_reads_the_one_run_in_a_parent_folder(one_run, tmp_path, capsys, command) -> None:
    args = _commands(one_run, tmp_path)[command]
    assert main(args) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "error" not in captured.err
    if command == "info":
        assert str(one_run / "gradsight") in captured.out
    if command == "doctor":
        assert f"gradsight doctor: run {one_run / 'gradsight'}" in captured.out
    if command == "graph":
        assert "none of the layers" not in captured.err  # the run's values colour the graph
    if command == "export":
        assert (tmp_path / "values.csv").stat().st_size > 0


@pytest.mark.parametrize("command", ["info", "doctor", "export", "graph"])
def test_single_run_commands_name_the_candidates_of_an_ambiguous_folder(two_runs, tmp_path, capsys, command) -> None:
    assert main(_commands(two_runs, tmp_path)[command]) == 2
    err = capsys.readouterr().err
    a, b = two_runs / "a" / "gradsight", two_runs / "b" / "gradsight"
    assert f"gradsight: error: {two_runs} holds 2 runs, not one: did you mean {a} or {b}?" in err
    assert "Traceback" not in err


def test_multi_run_commands_take_every_run_below_a_folder(two_runs, tmp_path, capsys) -> None:
    assert main(["plot", str(two_runs), "--kind", "compare", "-o", str(tmp_path / "compare.png")]) == 0
    assert main(["report", str(two_runs), "-o", str(tmp_path / "report.html")]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "<title>gradsight report: a, b</title>" in html

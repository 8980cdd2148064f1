"""``gradsight graph``."""

from __future__ import annotations

import importlib
import shutil

import pytest

from gradsight.cli import main

render_mod = importlib.import_module("gradsight.compgraph.render")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_graph_of_a_registered_model_renders_svg(tmp_path, capsys):
    out = tmp_path / "g.svg"
    assert main(["graph", "simple_resnet", "-o", str(out)]) == 0
    assert "<svg" in out.read_text()
    assert "2 skip edges" in capsys.readouterr().out  # the projection shortcut and its add


def test_graph_module_view_with_arguments_to_dot(tmp_path):
    out = tmp_path / "g.dot"
    assert main(["graph", "resnet:depth=8", "--view", "module", "--max-depth", "2", "-o", str(out)]) == 0
    dot = out.read_text()
    assert dot.startswith("digraph gradsight {") and '"module:stage1.block0"' in dot


def test_graph_of_package_module_callable(tmp_path):
    out = tmp_path / "g.dot"
    assert main(["graph", "tests.compgraph.test_graph:tiny_mlp", "--input-shape", "3", "--no-probe", "-o", str(out)]) == 0
    assert '"param:fc1.weight"' in out.read_text()


def test_graph_without_graphviz_writes_dot_and_says_how_to_render(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(render_mod, "dot_binary", lambda: None)
    assert main(["graph", "mlp:depth=4,width=8", "-o", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.dot").exists() and not (tmp_path / "g.png").exists()
    out = capsys.readouterr().out
    assert f"dot -Tpng {tmp_path / 'g.dot'} -o {tmp_path / 'g.png'}" in out


def test_graph_coloured_by_a_run(tmp_path, capsys):
    from tests.plots.runs import make_run

    run = make_run(tmp_path / "run", depth=1, steps=2)
    out = tmp_path / "g.dot"
    assert main(["graph", "tests.plots.runs:TinyNet", "--arg", "depth=1", "--arg", "skip=True", "--input-shape", "4",
                 "--run", str(run), "-o", str(out)]) == 0
    dot = out.read_text()
    assert "mean over 2 steps of run" in dot


@pytest.mark.parametrize(("argv", "message"), [
    (["graph", "nosuch", "-o", "g.svg"], "unknown model 'nosuch'"),
    (["graph", "resnet:depth", "-o", "g.svg"], "write KEY=VALUE"),
    (["graph", "mlp", "-o", "g.txt"], "use .svg, .png, .pdf or .dot"),
    (["graph", "mlp", "--input-shape", "2,x", "-o", "g.svg"], "bad --input-shape"),
])
def test_graph_bad_input_exits_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err

"""``gradsight report``."""

from __future__ import annotations

from gradsight.cli import main


def test_report_command_writes_one_html_file(report_runs, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(report_runs / "plain4"), str(report_runs / "residual4"), "-o", str(out),
                 "--title", "plain <vs> residual"]) == 0
    text = out.read_text()
    assert "<title>plain &lt;vs&gt; residual</title>" in text
    assert 'id="comparison"' in text and 'id="run-1"' in text
    assert f"wrote {out}" in capsys.readouterr().out


def test_report_with_a_model_graph(report_runs, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", str(report_runs / "residual4"), "--graph", "tests.plots.runs:TinyNet:depth=2,skip=True",
                 "--input-shape", "4", "-o", str(out)]) == 0
    assert "<h3>Computation graph</h3>" in out.read_text()


def test_report_bad_output_name_exits_2(report_runs, tmp_path, capsys):
    assert main(["report", str(report_runs / "plain4"), "-o", str(tmp_path / "r.pdf")]) == 2
    assert "name it *.html" in capsys.readouterr().err

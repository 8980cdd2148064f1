"""The HTML report without a browser: self-contained, escaped, and carrying the store's numbers."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import sqlite3

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.report import build_report, expand_runs
from gradsight.store.packed import PackedWriter
from tests.plots.runs import make_run
from tests.report.conftest import HOSTILE


def payload_of(text: str) -> dict:
    m = re.search(r'<script id="gs-data" type="application/json">(.*?)</script>', text, re.S)
    return json.loads(m.group(1))


def run_data(text: str, name: str) -> dict:
    return next(r for r in payload_of(text)["runs"] if r["name"] == name)


def decode(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4")


def test_report_is_one_self_contained_file(report_html):
    text = report_html.read_text()
    assert "http://" not in text and "https://" not in text
    assert re.findall(r'\s(?:src|href)="(?!data:|#)', text) == []
    assert "<link" not in text.replace('<link rel="icon" href="data:,">', "")
    assert "@import" not in text and re.findall(r"url\((?!#)", text) == []
    assert text.count("<script") == 2  # the JSON payload and our own script
    assert report_html.stat().st_size < 2_000_000


def test_module_names_are_escaped_everywhere(report_html):
    text = report_html.read_text()
    assert HOSTILE not in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(2)&gt;" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # the graph's labels, as text
    names = run_data(text, "hostile")["names"]["layer"]
    assert HOSTILE in names  # the JSON keeps the name; the page only ever sets it as text


def test_results_table_from_compare_shows_every_column(report_html):
    text = report_html.read_text()
    section = text[text.index('<section id="results">'):]
    section = section[: section.index("</section>")]
    for col in ("network", "layers", "parameters", "train_error", "test_error", "test_accuracy", "time_s"):
        assert f">{col}</th>" in section
    assert ">residual4</td>" in section and ">0.77</td>" in section


def test_payload_matrices_are_the_stored_values(report_html, report_runs):
    plain = run_data(report_html.read_text(), "plain4")
    with gs.open_run(report_runs / "plain4") as run:
        wide = run.series("grad_norm")
    m = decode(plain["matrices"]["layer:grad_norm"]["data"]).reshape(len(plain["names"]["layer"]), -1)
    assert plain["names"]["layer"] == list(wide.columns)
    assert plain["steps"] == list(wide.index)
    np.testing.assert_allclose(m, wide.to_numpy().T.astype(np.float32), rtol=1e-6)
    assert plain["nonfinite"] == [[5, "blocks.fc1", 1]]


def test_activation_statistics_are_offered(report_html):
    text = report_html.read_text()
    assert '<option value="module:act_rms">act_rms (module)</option>' in text
    assert run_data(text, "plain4")["names"]["module"] == ["inp", "blocks", "head"]


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_graph_json_of_a_run_is_drawn_inline(report_html):
    text = report_html.read_text()
    plain = text[text.index('<section class="run" id="run-1">'):text.index('<section class="run" id="run-2">')]
    assert '<div class="graph"><svg' in plain
    assert "xmlns" not in plain and "<?xml" not in plain and "DOCTYPE" not in plain
    assert 'class="node gs_param"' in plain


def test_long_runs_are_downsampled_for_display_only(tmp_path):
    run_dir = make_run(tmp_path / "long", depth=2, steps=30, nan_at=13)
    text = build_report([run_dir], max_steps=7)
    data = payload_of(text)["runs"][0]
    assert len(data["steps"]) == 7 and data["steps"][0] == 0 and data["steps"][-1] == 29
    assert 13 not in data["steps"]
    assert data["nonfinite"] == [[13, "blocks.fc1", 1]]  # found over all steps, not just those shown
    assert "show 7 of 30 recorded steps" in text
    with gs.open_run(run_dir) as run:
        assert len(run.steps()) == 30


def test_diagnosis_is_shown_and_a_failing_diagnosis_does_not_cost_the_report(tmp_path, monkeypatch):
    import gradsight.report.payload as payload

    run_dir = make_run(tmp_path / "r", depth=2, steps=3, nan_at=1)
    text = build_report([run_dir])
    section = text[text.index("<h3>Diagnosis</h3>"):]
    section = section[: section.index("</ul>")]
    (finding,) = [f for f in gs.diagnose(run_dir) if f.code == "nonfinite"]
    assert '<li class="sev-error"><span class="sev">error</span>' in section
    assert html.escape(finding.message) in section

    def broken(run):
        raise RuntimeError("boom <b>")

    monkeypatch.setattr(payload, "diagnose", broken)
    text = build_report([run_dir])
    assert "<h3>Diagnosis</h3>" in text
    assert "the diagnosis failed: RuntimeError: boom &lt;b&gt;" in text
    assert '<div class="chart" data-chart="flow"></div>' in text  # the rest of the report is there


def test_a_directory_of_runs_expands_to_its_runs(report_runs):
    assert [r.name for r in expand_runs([report_runs])] == ["hostile", "plain4", "residual4"]
    with pytest.raises(gs.RunError):
        expand_runs([report_runs / "missing"])


def test_results_csv_of_compare_one_level_up_and_paths_relative_to_the_report(tmp_path):
    from gradsight.report import write_report
    from tests.report.conftest import RESULTS_CSV

    out = tmp_path / "compare"
    make_run(out / "runs" / "plain-4", depth=1, steps=2)
    (out / "results.csv").write_text(RESULTS_CSV)
    text = write_report([out / "runs" / "plain-4"], out / "report.html").read_text()
    assert '<section id="results">' in text and "From results.csv" in text
    assert '<th>run</th><td data-row="run">runs/plain-4</td>' in text


def _set_layer_values(run_dir, stat: str, name: str, values: list[float]) -> None:
    """Overwrite a layer's recorded ``stat`` at its first ``len(values)`` steps."""
    conn = sqlite3.connect(run_dir / "gradsight.sqlite")
    with conn:
        (series,) = conn.execute("SELECT id FROM series WHERE level = 'layer' AND name = ? AND stat = ?",
                                 (name, stat)).fetchone()
        steps = [r[0] for r in conn.execute("SELECT step FROM steps ORDER BY step")]
        writer = PackedWriter(conn)
        for v, s in zip(values, steps, strict=True):
            writer.write(s, np.array([series]), np.array([v]))
    conn.close()


def test_every_first_last_ratio_on_the_page_is_the_one_definition(tmp_path):
    """The comparison table and the diagnosis show the same first / last layer ratio: the
    median over steps of the per-step ratio (here 1.5e-4 and 1.5e-5), not the ratio of
    the medians (2.9e-4 and 2.9e-5). (The diagnosis compares the two Linear(4, 4) layers,
    the instances of the stack's repeated layer; the head is unlike them.)"""
    from gradsight.diagnosis.rules import _fmt
    from gradsight.display import fmt_value
    from gradsight.store.query import first_last_ratio

    run_dirs = []
    for k, scale in enumerate((1e-4, 1e-5)):
        torch.manual_seed(k)
        model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
        run_dir = tmp_path / f"net{k}"
        with gs.watch(model, run_dir, config={"family": "net", "depth": 3 + k}) as mon:
            for _ in range(4):
                model(torch.randn(8, 4)).pow(2).mean().backward()
                mon.step()
                model.zero_grad()
        for stat in ("grad_norm", "grad_rms"):  # the ratio is over the weighted layers '0' and '2' ('4' is the head)
            _set_layer_values(run_dir, stat, "0", [scale * v for v in (1.0, 2.0, 30.0, 40.0)])
            for last in ("2", "4"):
                _set_layer_values(run_dir, stat, last, [1.0, 1.0, 10.0, 1000.0])
        run_dirs.append(run_dir)
    text = build_report(run_dirs)
    table = text[text.index("<h3>First / last weighted layer grad_rms</h3>"):]
    table = table[: table.index("</table>")]
    for k, (run_dir, scale) in enumerate(zip(run_dirs, (1e-4, 1e-5), strict=True)):
        ratio = first_last_ratio(run_dir)
        assert ratio == pytest.approx(1.5 * scale, rel=1e-6)  # per step 1, 2, 3, 0.04 times scale
        (finding,) = [f for f in gs.diagnose(run_dir) if f.code == "vanishing_gradients"]
        assert finding.measured["first_over_last"] == pytest.approx(ratio, rel=1e-12)
        assert (f'<td class="text">{run_dir.name}</td><td class="text">net</td><td>{3 + k}</td>'
                f"<td>{fmt_value(ratio)}</td>") in table
        section = text[text.index(f"<h2>{run_dir.name}</h2>"):]
        section = section[: section.index("</ul>")]
        assert f"shrinks {_fmt(1 / ratio)} times going back" in section


def test_layer_charts_have_a_role_filter_and_the_payload_the_roles(report_html):
    text = report_html.read_text()
    plain = run_data(text, "plain4")
    assert plain["roles"]["layer"] == ["weighted", "weighted", "weighted", "head"]
    assert plain["names"]["layer"] == ["inp", "blocks.fc0", "blocks.fc1", "head"]
    assert plain["default_roles"] == {"layer": ["weighted", "head"], "module": ["weighted", "head"]}
    assert plain["default_key"] == "layer:grad_rms"
    section = text[text.index('<section class="run" id="run-1">'):]
    select = section[section.index('<select class="role"'): section.index("</select></label> (activation")]
    values = re.findall(r'<option value="([^"]+)"', select)
    assert values == ["default", "all", "weighted", "head", "other"]  # other: the module row "blocks"
    assert '<option value="default" selected>weighted layers + head</option>' in select
    assert 'id="compare-role"' in text


def test_depth_sweep_of_the_report_leaves_out_runs_without_family_and_depth(report_html):
    text = report_html.read_text()
    comparison = text[text.index('<section id="comparison">'):]
    comparison = comparison[: comparison.index("</section>")]
    assert "Ratio: first / last weighted layer, in forward order" in comparison
    assert '<td class="text">hostile</td><td class="text">-</td><td>-</td>' in comparison
    note = comparison[comparison.index("Not on the depth sweep"):]
    assert "hostile" in note[: note.index("</p>")] and "plain4" not in note[: note.index("</p>")]
    assert run_data(text, "hostile")["family"] is None and run_data(text, "plain4")["family"] == "plain"


def test_update_ratio_chart_of_a_sparse_series_takes_the_steps_that_hold_it(tmp_path):
    """``update_ratio=3``: update ratios at steps 0, 3, 6, 9 of 12. The chart's matrix has
    exactly those steps and the stored values (on the run's shared steps, 2 of every 3
    points would be gaps and the lines would not be drawn)."""
    run_dir = make_run(tmp_path / "sparse", update_ratio=3)
    data = run_data(build_report([run_dir]), "sparse")
    with gs.open_run(run_dir) as run:
        wide = run.series("update_ratio")
    assert list(wide.index) == [0, 3, 6, 9] and data["steps"] == list(range(12))
    m = data["matrices"][data["update_key"]]
    assert m["steps"] == [0, 3, 6, 9] and m["stat"] == "update_ratio"
    values = decode(m["data"]).reshape(len(data["names"]["layer"]), -1)
    assert data["names"]["layer"] == list(wide.columns)
    np.testing.assert_allclose(values, wide.to_numpy().T.astype(np.float32), rtol=1e-6)


def test_update_ratio_chart_of_an_every_step_series_shares_the_runs_steps(tmp_path):
    data = run_data(build_report([make_run(tmp_path / "dense")]), "dense")
    assert data["update_key"] == "layer:update_ratio" and "steps" not in data["matrices"][data["update_key"]]


BERTISH_LAYERS = [f"bert.encoder.layer.{i}.{part}" for i in range(3)
                  for part in ("attention.output.dense", "attention.output.LayerNorm", "output.dense")]
BERTISH_LAYERS.append("bert.pooler.dense")


def test_axis_labels_drop_the_shared_prefix_and_keep_whole_parts(bertish_report):
    """The report's axes used to cut names in the middle (``…er.0.attention.output.dense``,
    the last 25 characters); the page now gets the figures' labels (display.short_labels):
    the prefix ``bert.`` every name shares dropped, whole trailing parts kept."""
    data = payload_of(bertish_report.read_text())["runs"][0]
    expected = []
    for i in range(3):
        expected += [f"…{i}.attention.output.dense", f"…layer.{i}.attention.output.LayerNorm",
                     f"encoder.layer.{i}.output.dense"]
    expected.append("pooler.dense")
    for level in ("layer", "module"):
        assert data["names"][level] == BERTISH_LAYERS
        assert data["labels"][level] == expected
    for name, label in zip(BERTISH_LAYERS, expected):  # a dotted tail of the name, never a cut part
        tail = label.removeprefix("…")
        assert name.endswith("." + tail)


def test_the_role_selector_applies_to_module_statistics(bertish_report):
    """Module rows (activation statistics) were all shown whatever the selector said by
    default; they take their layer's role, and the default shows the weighted ones and the head."""
    text = bertish_report.read_text()
    data = payload_of(text)["runs"][0]
    model = __import__("tests.report.conftest", fromlist=["Bertish"]).Bertish()
    by_type = {name: ("norm" if isinstance(m, nn.LayerNorm) else "weighted")
               for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.LayerNorm))}
    by_type["bert.pooler.dense"] = "head"  # the last layer of the forward pass
    assert data["roles"]["module"] == [by_type[n] for n in data["names"]["module"]]
    assert data["default_roles"]["module"] == ["weighted", "head"]
    select = text[text.index('<select class="role"'):]
    select = select[: select.index("</select>")]
    assert re.findall(r'<option value="([^"]+)"', select) == ["default", "all", "norm", "weighted", "head"]

"""One self-contained HTML report of one or more runs.

Everything is inline: the stylesheet, the script (our own small SVG/canvas charts,
no library), the data (JSON, matrices as base64 float32), images (base64 PNG) and
the computation graph (inline SVG). The page makes no network request and opens
from disk. Every user-controlled string (run, layer and module names, config
values, CSV cells, diagnosis text) is escaped with :func:`html.escape` in the HTML,
with ``\\u003c``-style escapes in the JSON, and reaches the DOM from the script
only through ``textContent``.
"""

from __future__ import annotations

import html
import json
import logging
import re
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from gradsight._files import write_text
from gradsight.diagnosis import rules as diagnosis_rules
from gradsight.compgraph.nodes import GRAPH_FILE
from gradsight.compgraph.structure import Graph
from gradsight.display import (
    MISSING_COLOR,
    NONFINITE_COLOR,
    PALETTE,
    ROOT_DISPLAY_NAME,
    display_name,
    display_path,
    fmt_value,
    lut,
    shade,
)
from gradsight.plots.compare import depth_sweep
from gradsight.plots.distribution import UPDATE_RATIO_REFERENCE
from gradsight.report.figures import figures_html
from gradsight.report.figures import png_data_url as _png
from gradsight.report.live import FIGURES_S
from gradsight.plots.flow import OVERLAID_STEPS
from gradsight.report.payload import (CELL_BUDGET, MAX_EVENTS, MAX_LINE_POINTS, DiagnosisJob, RunPayload, layout_key,
                                      results_table, run_payload)
from gradsight.report.static import CSS, JS
from gradsight.store.query import (
    DEFAULT_MAX_STEPS,
    DEFAULT_STAT,
    RATIO_DEFINITION,
    expand_runs,
    first_last_ratio,
    run_labels,
)
from gradsight.store.reader import Run
from gradsight.store.view import RunView, view_of
from gradsight.store.roles import Role

log = logging.getLogger(__name__)

#: Autograd graphs with more nodes than this are shown as the module view.
GRAPH_MAX_NODES = 400
#: Seconds a report waits for the diagnoses of its runs, in all.
DIAGNOSIS_TIMEOUT_S = 12.0

esc = html.escape


def _json_for_script(payload: Any) -> str:
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def run_looks(runs: Sequence[tuple[str | None, int | None, str]]) -> list[tuple[str, str | None]]:
    """The colour and dash of each run of ``(family, depth, name)``: one colour per family
    (deeper runs darker); a run without a recorded family has its own."""
    looks = [(family, depth) if family is not None else (f"({name})", 0) for family, depth, name in runs]
    fams = list(dict.fromkeys(fam for fam, _ in looks))
    out = []
    for family, depth in looks:
        depths = sorted({d for f, d in looks if f == family})
        t = depths.index(depth) / (len(depths) - 1) if len(depths) > 1 else 1.0
        fi = fams.index(family)
        out.append((shade(PALETTE[fi % len(PALETTE)], t), "6 3" if fi % 2 else None))
    return out


def _run_colors(payloads: list[RunPayload]) -> None:
    """:func:`run_looks` of the payloads, into their data."""
    for p, (color, dash) in zip(payloads, run_looks([(p.family, p.depth, p.name) for p in payloads])):
        p.data["color"], p.data["dash"] = color, dash


# -- graph ------------------------------------------------------------------------------
_XML_PROLOG = re.compile(r"<\?xml[^>]*>\s*|<!DOCTYPE[^>]*>\s*|<!--.*?-->\s*", re.S)
_XMLNS = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')


def clean_svg(svg: str) -> str:
    """Graphviz SVG made fit to inline in HTML: no XML prolog, DOCTYPE, comments or
    namespace declarations (HTML parsing puts ``<svg>`` in the SVG namespace)."""
    return _XMLNS.sub("", _XML_PROLOG.sub("", svg)).strip()


def _load_graph(run: RunView, graphs: Mapping[Any, Graph] | Graph | None) -> Graph | None:
    if isinstance(graphs, Graph):
        return graphs
    if graphs:
        for key in (run.path, str(run.path), run.name, run.path.resolve(), str(run.path.resolve())):
            if key in graphs:
                return graphs[key]
    path = run.path / GRAPH_FILE
    if path.is_file():
        try:
            return Graph.load(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("could not read %s: %s", path, exc)
    return None


def _graph_html(run: RunView, graph: Graph, stat: str) -> str:
    from gradsight.compgraph.render import GraphvizMissing, INSTALL_HINT, run_dot

    try:
        graph = graph.color_by(run, stat)
    except Exception as exc:  # colouring is a bonus; the structure still helps
        log.warning("could not colour the graph by %s: %s", stat, exc)
    if graph.view == "autograd" and len(graph.nodes) > GRAPH_MAX_NODES:
        full, graph = graph, graph.module_view()
        for nesting in (3, 2, 1):
            if len(graph.nodes) <= GRAPH_MAX_NODES:
                break
            graph = full.module_view(nesting)
    dot = graph.to_dot()
    parts = [f'<p class="note">{esc(graph.title)}: {len(graph.nodes)} nodes ({esc(graph.view)} view), '
             f"{len(graph.skip_edges)} skip-connection edges (dashed, orange); nodes coloured by "
             f"{esc(graph.stat_label or graph.stat or 'nothing')} on a log scale. Hover a node for its values.</p>"]
    try:
        svg = run_dot(dot, "svg").decode("utf-8")
        parts.append(f'<div class="graph">{clean_svg(svg)}</div>')
    except (GraphvizMissing, RuntimeError, subprocess.TimeoutExpired) as exc:
        hint = INSTALL_HINT if isinstance(exc, GraphvizMissing) else str(exc)
        parts.append(f'<p class="note">The graph could not be drawn ({esc(hint)}). Its DOT source follows; '
                     "render it with <code>dot -Tsvg graph.dot -o graph.svg</code>.</p>")
        parts.append(f'<details><summary>DOT source</summary><pre class="dot">{esc(dot)}</pre></details>')
    return "\n".join(parts)


# -- sections ---------------------------------------------------------------------------
def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f'<tr><th>{esc(k)}</th><td data-row="{esc(k)}">{esc(v)}</td></tr>' for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _cell(v: Any) -> tuple[str, bool]:
    if isinstance(v, bool) or v is None:
        return esc(str(v)), False
    if isinstance(v, int):
        return f"{v:,}", True
    if isinstance(v, float):
        if v != v:
            return "", True
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}", True
        return esc(fmt_value(v, 4)), True
    return esc(str(v)), False


def _results_html(tables: list[tuple[Path, pd.DataFrame]], base: Path | None = None) -> str:
    out = []
    for path, df in tables:
        head = "".join(
            f'<th class="{"" if pd.api.types.is_numeric_dtype(df[c]) else "text"}">{esc(str(c))}</th>' for c in df.columns
        )
        rows = []
        for rec in df.itertuples(index=False):
            cells = []
            for v in rec:
                text, num = _cell(v.item() if hasattr(v, "item") else v)
                cells.append(f'<td class="{"" if num else "text"}">{text}</td>')
            rows.append("<tr>" + "".join(cells) + "</tr>")
        out.append(f'<p class="note">From {esc(display_path(path, base))}</p>'
                   f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
    return "\n".join(out)


def _diagnosis_html(findings: list[tuple[str, str]]) -> str:
    if not findings:
        return '<p class="note">No findings.</p>'
    items = "".join(
        f'<li class="sev-{esc(re.sub(r"[^a-z0-9_-]", "", sev))}"><span class="sev">{esc(sev)}</span>{esc(msg)}</li>'
        for sev, msg in findings
    )
    return f'<ul class="diag">{items}</ul>'


def _nonfinite_html(p: RunPayload) -> str:
    ev = p.data["nonfinite"]
    if not ev:
        return ""
    steps = sorted({e[0] for e in ev})
    first = ev[0]
    return (f'<p class="note" style="color:{NONFINITE_COLOR}">NaN/Inf gradients at {len(steps):,} recorded step(s); '
            f"first at step {first[0]} in layer {esc(display_name(first[1]))} ({first[2]:,} elements).</p>")


def _run_section(p: RunPayload, graph_html: str | None, findings: list[tuple[str, str]] | None,
                 live: bool = False, figures_later: bool = False) -> str:
    name = esc(p.name)
    options = "".join(
        f'<option value="{esc(k)}"{" selected" if k == p.default_key else ""}>{esc(label)}</option>'
        for k, label in p.stat_options
    )
    parts = [f'<section class="run" id="run-{p.index}">', f"<h2>{name}</h2>", _kv_table(p.summary)]
    parts += [f'<p class="note">{esc(n)}</p>' for n in p.notes]
    if live:  # filled and kept up to date by the page's poll
        parts.append('<p class="live-status" data-live="status">live: waiting for the server</p>')
        parts.append('<h3>Diagnosis</h3><ul class="diag" data-live="findings"></ul>')
    elif findings is not None:
        parts.append("<h3>Diagnosis</h3>" + _diagnosis_html(findings))
    parts.append(_nonfinite_html(p))
    if p.stat_options:
        parts.append(f'<div class="controls"><label>statistic: <select class="stat" aria-label="statistic">{options}'
                     f"</select></label> {_role_select('role', p.roles)} (activation statistics appear with their "
                     "level in brackets)</div>")
        parts.append('<h3>Gradient flow</h3><div class="chart" data-chart="flow"></div>')
        parts.append('<h3>Over training</h3><div class="chart" data-chart="heatmap"></div>'
                     '<div class="chart" data-chart="bands"></div>')
    else:
        parts.append('<p class="note">This run has no per-layer statistics.</p>')
    parts.append('<div class="chart" data-chart="update"></div>')
    parts.append('<div class="chart" data-chart="model"></div>')
    parts.append('<div class="chart" data-chart="metrics"></div>')
    if figures_later:  # the page asks the server for them once the section is in (/api/figures)
        parts.append('<div data-live="figures" data-pending="true"></div>')
    elif live:  # drawn again by the server as the run records (the page asks at most every FIGURES_S)
        parts.append(f'<div data-live="figures">{figures_html(p.run)}</div>')
    else:
        parts.append(figures_html(p.run))
    if graph_html:
        parts.append("<h3>Computation graph</h3>" + graph_html)
    parts.append("</section>")
    return "\n".join(x for x in parts if x)


#: The role filter's choices: value -> label (``default``: weighted layers and the head, or
#: every layer for a run without them).
ROLE_CHOICES = {"default": "weighted layers + head", "all": "all layers"}


def _role_select(css_class: str, roles: Sequence[str], element_id: str | None = None) -> str:
    """The layer charts' role filter: weighted + head (default), all, and each role present."""
    choices = dict(ROLE_CHOICES)
    choices.update((r, f"{r} only") for r in Role.ALL if r in roles)
    options = "".join(f'<option value="{esc(k)}"{" selected" if k == "default" else ""}>{esc(v)}</option>'
                      for k, v in choices.items())
    ident = f' id="{esc(element_id)}"' if element_id else ""
    return f'<label>layers: <select class="{esc(css_class)}"{ident} aria-label="layers">{options}</select></label>'


def _comparison_section(payloads: list[RunPayload], stat: str) -> str:
    keys: dict[str, str] = {}
    for p in payloads:
        for k, label in p.stat_options:
            keys.setdefault(k, label)
    default = next((k for k in (f"layer:{stat}", "layer:grad_norm") if k in keys), next(iter(keys), ""))
    options = "".join(f'<option value="{esc(k)}"{" selected" if k == default else ""}>{esc(v)}</option>'
                      for k, v in keys.items())
    parts = ['<section id="comparison"><h2>Comparison</h2>',
             '<p class="note">Depth is normalized (first shown layer 0, last 1) so networks of different depth line '
             "up; one colour per family, darker for deeper networks.</p>",
             f'<div class="controls"><label>statistic: <select id="compare-stat">{options}</select></label> '
             f'{_role_select("role", sorted({r for p in payloads for r in p.roles}), "compare-role")}</div>',
             '<div class="chart" id="compare-chart"></div>']
    try:
        if not all(stat in p.run.stats("layer") for p in payloads):
            stat = "grad_norm"  # runs recorded without it
        rows = [(p.name, p.family, p.depth, first_last_ratio(p.run, stat)) for p in payloads]
        table = "".join(
            f'<tr><td class="text">{esc(n)}</td><td class="text">{esc(f or "-")}</td><td>{"-" if d is None else d}</td>'
            f"<td>{esc(fmt_value(r))}</td></tr>"
            for n, f, d, r in rows
        )
        parts.append(f'<h3>First / last weighted layer {esc(stat)}</h3>'
                     f'<p class="note">Ratio: {esc(RATIO_DEFINITION)}.</p>'
                     '<table class="grid"><thead><tr><th class="text">run</th>'
                     f'<th class="text">family</th><th>depth</th>'
                     f"<th>first / last weighted layer</th></tr></thead>"
                     f"<tbody>{table}</tbody></table>")
        swept = [p for p in payloads if p.family is not None]
        left_out = [p.name for p in payloads if p.family is None]
        if len({(p.family, p.depth) for p in swept}) >= 2:
            fig = depth_sweep([p.run for p in swept], stat)
            parts.append(f'<div class="img"><img alt="{esc(stat)}: first / last weighted layer ratio against depth" '
                         f'src="{_png(fig)}"></div>')
        if left_out:
            parts.append(f'<p class="note">Not on the depth sweep (no family and depth recorded in their config; '
                         f'record them with gs.watch(..., config={{"family": ..., "depth": ...}})): '
                         f"{esc(', '.join(left_out))}.</p>")
    except Exception as exc:  # the sweep is a summary; never lose the report over it
        log.warning("depth sweep failed: %s", exc)
    parts.append("</section>")
    return "\n".join(parts)


def build_report(
    runs: Iterable[RunView | Run | str | Path],
    *,
    stat: str = DEFAULT_STAT,
    title: str | None = None,
    graphs: Mapping[Any, Graph] | Graph | None = None,
    cell_budget: int = CELL_BUDGET,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    diagnosis_timeout: float = DIAGNOSIS_TIMEOUT_S,
    base: Path | None = None,
    live: Mapping[str, Any] | None = None,
) -> str:
    """The HTML text of a report on ``runs``.

    Args:
        runs: run views, runs, run directories, or directories holding runs (runs opened
            here are closed when the report is made).
        stat: the statistic shown first (every recorded statistic can be picked on
            the page, activation statistics included); the layer charts show the
            weighted layers and the head first, every role one choice away.
        title: the page title (default: from the run names).
        graphs: computation graphs to show, one for all runs or keyed by run
            directory or name; by default a run's ``graph.json`` (see
            :meth:`gradsight.compgraph.Graph.save`) is used when present.
        cell_budget: displayed values (modules x steps x statistics) per run, at most.
        max_steps: displayed steps per run, at most (evenly spaced, as everywhere:
            :func:`gradsight.store.query.step_sample`).
        diagnosis_timeout: seconds the report waits, in all, for the diagnoses
            (``gradsight.diagnosis``), which run while the charts' data is read; a
            diagnosis not done by then is left out with a note.
        live: the page of ``gradsight serve`` instead of a file (:mod:`gradsight.report.server`):
            ``{"keys": [the server's key of each run], "runs_key": ..., "interval_ms": ...,
            "wait_s": ..., "source": ...}``. The page is the same; it then polls the server for the steps
            after those it holds, and the diagnosis comes from the server as well.

    Returns:
        One self-contained HTML document.
    """
    # one view per run: the charts, the diagnosis, the histograms, the graph colouring and
    # the comparison all read the run through it, so each table is read once
    run_list, opened = [], []
    for given in list(runs):
        if isinstance(given, (Run, RunView)):
            run_list.append(view_of(given))
            continue
        found = [RunView(r) for r in expand_runs([given])]
        run_list += found
        opened += found
    jobs: list[DiagnosisJob] = []
    try:
        return _report_html(run_list, jobs, stat=stat, title=title, graphs=graphs, cell_budget=cell_budget,
                            max_steps=max_steps, diagnosis_timeout=diagnosis_timeout, base=base, live=live)
    finally:
        for view, job in zip(run_list, jobs + [None] * len(run_list)):
            if view in opened and (job is None or job.done):  # a diagnosis given up on keeps its run
                view.run.close()


def _report_html(run_list: list[RunView], jobs: list[DiagnosisJob], *, stat: str, title: str | None,
                 graphs: Mapping[Any, Graph] | Graph | None, cell_budget: int, max_steps: int | None,
                 diagnosis_timeout: float, base: Path | None, live: Mapping[str, Any] | None = None) -> str:
    """:func:`build_report` of these views; ``jobs`` receives each run's diagnosis job."""
    if not run_list and live is None:
        raise ValueError("no runs to report on")
    if stat != DEFAULT_STAT:  # runs without the default show grad_norm instead
        recorded = sorted({s for r in run_list for s in r.stats()})
        if stat not in recorded:
            raise ValueError(f"no run records the statistic {stat!r}; recorded: {', '.join(recorded) or 'none'}")
    deadline = time.monotonic() + diagnosis_timeout
    payloads = []
    for i, r in enumerate(run_list):
        diagnosis_rules.want(r)  # the charts' read takes the diagnosis' tables along
        payloads.append(run_payload(r, i, stat=stat, cell_budget=cell_budget, max_steps=max_steps, base=base,
                                    every_name=live is not None))
        if live is None:
            jobs.append(DiagnosisJob(r))  # after the charts' read, so that it finds most of its tables read

    names = run_labels(run_list)  # names that tell the runs apart (one rule: store.query.run_labels)
    for p, name in zip(payloads, names):
        p.name = p.data["name"] = name
    _run_colors(payloads)
    title = title or ("gradsight report: " + (", ".join(names[:4]) + (" …" if len(names) > 4 else "")))

    sections, toc = [], []
    tables = results_table(run_list)
    if tables:
        sections.append('<section id="results"><h2>Results</h2>' + _results_html(tables, base) + "</section>")
        toc.append(("results", "Results"))
    if len(payloads) > 1:
        sections.append(_comparison_section(payloads, stat))
        toc.append(("comparison", "Comparison"))
    for p in payloads:
        graph = _load_graph(p.run, graphs)
        graph_html = _graph_html(p.run, graph, stat) if graph is not None else None
        done, findings = jobs[p.index].result(deadline) if live is None else (True, None)
        if not done:
            findings = [("info", f"The diagnosis did not finish within {diagnosis_timeout:g} s and is left out of this "
                                 f"report; run 'gradsight doctor {display_path(p.run.path, base)}' for it.")]
        sections.append(_run_section(p, graph_html, findings, live is not None))
        toc.append((f"run-{p.index}", p.name))

    payload = _page_data(stat, [p.data for p in payloads])
    if live is not None:
        payload["live"] = _live_config(live, max_steps)
        for p, key in zip(payloads, live["keys"]):
            p.data["live"] = _live_run(p, key)
    generated = datetime.now().strftime("%Y-%m-%d %H:%M")
    if live is not None:
        generated = f"live from {live.get('source', '')}, opened {generated}"
    return _page(title, len(run_list), generated, toc, sections, payload, live is not None)


def _page_data(stat: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The page's JSON payload: what every chart shares, and the runs' data."""
    return {
        "lut": list(lut()),
        "colors": {"nonfinite": NONFINITE_COLOR, "missing": MISSING_COLOR, "palette": list(PALETTE)},
        "update_reference": UPDATE_RATIO_REFERENCE,
        "compare_key": f"layer:{stat}",
        "root_name": ROOT_DISPLAY_NAME,
        "runs": runs,
    }


def _live_config(live: Mapping[str, Any], max_steps: int | None) -> dict[str, Any]:
    return {"runs_key": live["runs_key"], "interval_ms": live.get("interval_ms", 1000), "wait_s": live.get("wait_s", 0),
            "max_steps": max_steps or DEFAULT_MAX_STEPS, "overlaid": OVERLAID_STEPS,
            "max_line_points": MAX_LINE_POINTS, "max_events": MAX_EVENTS,
            "figures_s": live.get("figures_s", FIGURES_S)}


def _live_run(p: RunPayload, key: str) -> dict[str, Any]:
    """What the live page polls one run by: its key, the last step it holds, its layout."""
    return {"key": key, "last": p.run.steps[-1] if p.run.steps else None, "f": -1, "layout": layout_key(p.run)}


#: A live page of more runs than this lists them at once and asks the server for each run's
#: section when it comes near the view (:func:`live_shell`, :func:`live_section`).
LAZY_RUNS = 6


def live_shell(names: Sequence[str], keys: Sequence[str], *, live: Mapping[str, Any], stat: str = DEFAULT_STAT,
               title: str | None = None, max_steps: int | None = DEFAULT_MAX_STEPS) -> str:
    """The live page of many runs, made without reading them: each run's section is a heading
    and a status line, which the page fills from ``/api/section`` (:func:`live_section`, the
    report's own section and payload) when it comes near the view; the comparison chart
    draws the runs loaded so far. ``names`` are the runs' names on the page
    (:func:`~gradsight.store.query.run_labels`), ``keys`` the server's keys."""
    key = f"layer:{stat}"
    sections = ['<section id="comparison"><h2>Comparison</h2>'
                '<p class="note">The runs loaded so far (each is read when it comes near the view; '
                "<code>gradsight report</code> reads them all, with the table of first/last ratios). Depth is "
                "normalized (first shown layer 0, last 1) so networks of different depth line up; one colour per "
                "family, darker for deeper networks.</p>"
                f'<div class="controls"><label>statistic: <select id="compare-stat"><option value="{esc(key)}" '
                f'selected>{esc(stat)}</option></select></label> {_role_select("role", Role.ALL, "compare-role")}</div>'
                '<div class="chart" id="compare-chart"></div></section>']
    toc = [("comparison", "Comparison")]
    for i, (name, key) in enumerate(zip(names, keys)):
        sections.append(f'<section class="run" id="run-{i}" data-pending="true"><h2>{esc(name)}</h2>'
                        '<p class="live-status" data-live="status">live: shown when it comes into view</p></section>')
        toc.append((f"run-{i}", name))
    payload = _page_data(stat, [{"name": name, "pending": True, "live": {"key": key, "last": None, "f": -1}}
                                for name, key in zip(names, keys)])
    payload["live"] = {**_live_config(live, max_steps), "lazy": True}
    generated = f"live from {live.get('source', '')}, opened {datetime.now().strftime('%Y-%m-%d %H:%M')}"
    return _page(title or "gradsight serve", len(names), generated, toc, sections, payload, True)


def live_section(run: RunView | Run, index: int, name: str, key: str, *, stat: str = DEFAULT_STAT,
                 graphs: Mapping[Any, Graph] | Graph | None = None, cell_budget: int = CELL_BUDGET,
                 max_steps: int | None = DEFAULT_MAX_STEPS, base: Path | None = None,
                 look: tuple[str, str | None] | None = None) -> dict[str, Any]:
    """One run of :func:`live_shell`'s page: ``{"html": its section, "data": its payload}``, made
    as :func:`build_report` makes them (the same :func:`~gradsight.report.payload.run_payload`
    and section, the names escaped alike); ``look``: its colour and dash among the page's runs
    (:func:`run_looks`)."""
    p = run_payload(view_of(run), index, stat=stat, cell_budget=cell_budget, max_steps=max_steps, every_name=True,
                    base=base)
    p.name = p.data["name"] = name
    _run_colors([p])
    if look is not None:
        p.data["color"], p.data["dash"] = look
    graph = _load_graph(p.run, graphs)
    graph_html = _graph_html(p.run, graph, stat) if graph is not None else None
    p.data["live"] = _live_run(p, key)
    # its figures (seconds of matplotlib each) come apart, drawn by the doctor's thread: the
    # section, which the page waits for, stays quick to make
    return {"html": _run_section(p, graph_html, None, live=True, figures_later=True), "data": p.data}


def _page(title: str, runs: int, generated: str, toc: list[tuple[str, str]], sections: list[str],
          payload: dict[str, Any], live: bool) -> str:
    """The HTML document around the sections and the JSON payload (the report's and the live page's)."""
    from gradsight._version import __version__

    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in toc)
    footer = ("Live view: the page asks the server for new steps. Values on log scales; long runs are shown "
              "through evenly spaced steps." if live else
              "Self-contained report: no network access needed. Values on log scales; long runs are shown "
              "through evenly spaced steps.")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="gradsight {esc(__version__)}">
<link rel="icon" href="data:,">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header class="top"><h1>{esc(title)}</h1>
<p>{runs} run(s) · generated {esc(generated)} by gradsight {esc(__version__)} · hover any chart for layer names and values</p></header>
<nav class="toc">{nav}</nav>
<main>
{chr(10).join(sections)}
</main>
<footer>{footer}</footer>
<script id="gs-data" type="application/json">{_json_for_script(payload)}</script>
<script>{JS}</script>
</body>
</html>
"""


def write_report(runs: Iterable[Run | str | Path], path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`build_report` to ``path`` (atomically) and return the path."""
    path = Path(path)
    kwargs.setdefault("base", path.parent)
    return write_text(path, build_report(runs, **kwargs))

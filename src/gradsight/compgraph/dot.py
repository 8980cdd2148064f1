"""DOT text for a computation graph (:class:`~gradsight.compgraph.nodes.GraphData`), in pure Python.

Every string that reaches the DOT text goes through :func:`quote` (quoted IDs and
labels) or :func:`html_text` (the legend's HTML-like label), so module names
cannot break out of their attribute. Output is deterministic: nodes in graph
order, then ordinary edges, then skip edges (drawn last, so on top), numbers with
fixed formatting.
"""

from __future__ import annotations

import html
import math

from gradsight._text import printable
from gradsight.compgraph.nodes import INPUT, LEAF, MODULE, OP, OUTPUT, PARAM, GraphData, Node
from gradsight.display import NONFINITE_COLOR, SKIP_COLOR, LogScale, display_name, fmt_value, lut, text_color

FONT = "Helvetica,Arial,sans-serif"
EDGE_COLOR = "#6f6f6f"
_PLAIN_FILL = {INPUT: "#cfe8cf", OUTPUT: "#f9d9b9", PARAM: "#cfe2f3", LEAF: "#e6e6e6", OP: "#f4f4f4",
               MODULE: "#f4f4f4"}
_SHAPE = {INPUT: "oval", OUTPUT: "oval", PARAM: "box", LEAF: "box", OP: "box", MODULE: "box"}
_STYLE = {INPUT: "filled", OUTPUT: "filled", PARAM: "filled", LEAF: "filled", OP: "rounded,filled",
          MODULE: "rounded,filled"}


def quote(text: str) -> str:
    """A DOT double-quoted string: control characters written visibly (:func:`printable`; a NUL
    would end Graphviz's string), backslashes and quotes escaped, ``&`` as ``&amp;`` (Graphviz
    reads entities in labels), line breaks as ``\\n``."""
    text = printable(text).replace("\\", "\\\\").replace('"', '\\"').replace("&", "&amp;")
    return '"' + text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n") + '"'


def html_text(text: str) -> str:
    """Text for a DOT HTML-like label (control characters written visibly, ``&``, ``<``, ``>``,
    quotes escaped)."""
    return html.escape(printable(text), quote=True)


class _HTMLLabel(str):
    """An HTML-like DOT label whose text parts are already escaped with :func:`html_text`."""


def _attrs(items: dict[str, str | float | int]) -> str:
    parts = []
    for k, v in items.items():
        if isinstance(v, _HTMLLabel):
            parts.append(f"{k}=<{v}>")
        elif isinstance(v, str):
            parts.append(f"{k}={quote(v)}")
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


def _shape_text(shape: tuple[int, ...] | None) -> str:
    if shape is None:
        return ""
    return "(" + ", ".join(str(s) for s in shape) + ")"


def node_lines(n: Node, graph: GraphData) -> list[str]:
    """The lines of a node's label."""
    if n.kind in (INPUT, OUTPUT):
        lines = [n.label, _shape_text(n.shape)]
    elif n.kind == PARAM:
        lines = [n.label, _shape_text(n.shape)]
    elif n.kind == LEAF:
        lines = [n.label, _shape_text(n.shape)]
    elif n.kind == MODULE:
        kind = n.type or ""
        if n.ops and not n.layers:
            kind += " · " + ", ".join(n.ops[:3]) + ("…" if len(n.ops) > 3 else "")
        lines = [n.label, kind]
    else:
        lines = [n.label]
    if graph.stat and n.value is not None:
        lines.append(fmt_value(n.value))
    return [line for line in lines if line]


def _tooltip(n: Node, graph: GraphData) -> str:
    parts = [n.label]
    if n.kind == MODULE and n.type:
        parts.append(n.type)
    if n.layer is not None and n.kind != PARAM:
        parts.append(f"layer: {display_name(n.layer)}")
    if graph.stat:
        parts.append(f"{graph.stat}: {fmt_value(n.value)}")
    return "\n".join(parts)


def _legend(graph: GraphData, scale: LogScale | None, has_nonfinite: bool) -> _HTMLLabel | None:
    rows = []
    if scale is not None:
        colors = lut()
        cells = "".join(
            f'<TD BGCOLOR="{colors[round(i * (len(colors) - 1) / 9)]}" WIDTH="16" HEIGHT="10"></TD>'
            for i in range(10)
        )
        rows.append(f'<TR><TD COLSPAN="10"><B>{html_text(graph.stat_label or graph.stat or "")}</B></TD></TR>')
        rows.append(f"<TR>{cells}</TR>")
        rows.append(
            f'<TR><TD COLSPAN="5" ALIGN="LEFT">{html_text(fmt_value(scale.vmin))}</TD>'
            f'<TD COLSPAN="5" ALIGN="RIGHT">{html_text(fmt_value(scale.vmax))}</TD></TR>'
        )
        rows.append('<TR><TD COLSPAN="10">log colour scale</TD></TR>')
    if has_nonfinite:
        rows.append(f'<TR><TD BGCOLOR="{NONFINITE_COLOR}" COLSPAN="2"></TD>'
                    '<TD COLSPAN="8" ALIGN="LEFT">non-finite</TD></TR>')
    if any(e.skip for e in graph.edges):
        rows.append(f'<TR><TD COLSPAN="10" ALIGN="LEFT"><FONT COLOR="{SKIP_COLOR}">- - - &gt;</FONT>'
                    " skip connection</TD></TR>")
    if not rows:
        return None
    return _HTMLLabel('<TABLE BORDER="1" COLOR="#bbbbbb" CELLBORDER="0" CELLSPACING="0" CELLPADDING="2">'
                      + "".join(rows) + "</TABLE>")


def to_dot(graph: GraphData, *, rankdir: str = "TB", legend: bool = True, title: bool = True) -> str:
    """DOT text of ``graph``.

    Args:
        graph: the graph (either view).
        rankdir: Graphviz direction, ``TB`` (inputs at the top) or ``LR``.
        legend: add a legend node (colour scale, skip-connection style) when useful.
        title: put the graph's title (model class, view) on top.

    Returns:
        The DOT source, one statement per line, ending in a newline.
    """
    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise ValueError(f"rankdir must be TB, LR, BT or RL, got {rankdir!r}")
    scale = LogScale.of(n.value for n in graph.nodes) if graph.stat else None
    has_nonfinite = any(n.value is not None and not math.isfinite(n.value) for n in graph.nodes)
    out = ["digraph gradsight {"]
    graph_attrs: dict[str, str | float | int] = {
        "rankdir": rankdir, "fontname": FONT, "fontsize": 11, "nodesep": 0.25, "ranksep": 0.3,
        "newrank": "true", "bgcolor": "white",
    }
    if title and graph.title:
        graph_attrs.update(label=f"{graph.title} ({graph.view} graph)", labelloc="t")
    out.append(f"  graph [{_attrs(graph_attrs)}];")
    out.append(f'  node [{_attrs({"fontname": FONT, "fontsize": 9, "height": 0.3, "margin": "0.08,0.03", "color": "#555555", "penwidth": 0.8})}];')
    out.append(f'  edge [{_attrs({"color": EDGE_COLOR, "arrowsize": 0.6, "penwidth": 0.9})}];')
    for n in graph.nodes:
        attrs: dict[str, str | float | int] = {
            "label": "\n".join(node_lines(n, graph)),
            "shape": _SHAPE[n.kind],
            "style": _STYLE[n.kind],
        }
        if graph.stat and n.value is not None and scale is not None:
            fill = scale.color(n.value)
        elif graph.stat and n.value is not None:  # only non-positive or non-finite values
            fill = NONFINITE_COLOR if not math.isfinite(n.value) else _PLAIN_FILL[n.kind]
        else:
            fill = _PLAIN_FILL[n.kind]
        attrs["fillcolor"] = fill
        if fill != _PLAIN_FILL[n.kind]:
            attrs["fontcolor"] = text_color(fill)
        attrs["tooltip"] = _tooltip(n, graph)
        attrs["id"] = n.id
        attrs["class"] = f"gs_{n.kind}"
        out.append(f"  {quote(n.id)} [{_attrs(attrs)}];")
    kinds = {n.id: n.kind for n in graph.nodes}
    for e in graph.edges:
        if not e.skip:  # the main path is heavy, so it runs straight; parameters hang off it
            weight = 1 if kinds.get(e.src) in (PARAM, LEAF) else 10
            out.append(f"  {quote(e.src)} -> {quote(e.dst)} [{_attrs({'weight': weight, 'class': 'gs_edge'})}];")
    for e in graph.edges:
        if e.skip:
            attrs = {"color": SKIP_COLOR, "style": "dashed", "penwidth": 2.2, "weight": 0, "class": "gs_skip",
                     "tooltip": "skip connection"}
            out.append(f"  {quote(e.src)} -> {quote(e.dst)} [{_attrs(attrs)}];")
    if legend:
        label = _legend(graph, scale, has_nonfinite)
        if label is not None:
            out.append(f'  "legend" [{_attrs({"shape": "plaintext", "label": label, "id": "legend", "class": "gs_legend"})}];')
            out.append('  { rank=sink; "legend"; }')
    out.append("}")
    return "\n".join(out) + "\n"

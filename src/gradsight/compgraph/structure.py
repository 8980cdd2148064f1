"""The computation graph as our own data: :class:`Graph`, over the :class:`Node`, :class:`Edge` and
:class:`Call` of :mod:`gradsight.compgraph.nodes`.

A :class:`Graph` is plain data with deterministic ids, built by
:func:`gradsight.compgraph.trace.trace` from one forward pass. Edges point in the
forward direction (from an input, parameter or earlier operation to the operation
that consumes it); gradients flow against them. Drawing lives elsewhere
(:mod:`gradsight.compgraph.dot`, :mod:`gradsight.compgraph.render`) and so does folding
(:mod:`gradsight.compgraph.fold`): functions of the graph's data
(:class:`~gradsight.compgraph.nodes.GraphData`) that the methods here call.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gradsight.compgraph.dot import to_dot
from gradsight.compgraph.fold import fold, nesting_argument
from gradsight.compgraph.nodes import PARAM, Call, Edge, Node, combine_values
from gradsight.compgraph.render import dot_to_svg, render
from gradsight.store.view import DEFAULT_MAX_STEPS, step_sample, view_of

@dataclass
class Graph:
    """A computation graph: nodes in forward topological order, edges, module calls.

    Attributes:
        nodes: the nodes; ids are unique.
        edges: forward edges between node ids (no duplicates).
        calls: module calls in the order they started.
        view: ``"autograd"`` (one node per autograd function) or ``"module"``.
        stat: name of the statistic in ``Node.value`` (e.g. ``grad_norm``), or None.
        stat_label: how the values were obtained, for the legend.
        title: the graph's title (the model class).
    """

    nodes: list[Node]
    edges: list[Edge]
    calls: list[Call] = field(default_factory=list)
    view: str = "autograd"
    stat: str | None = None
    stat_label: str | None = None
    title: str = ""

    # -- lookups --------------------------------------------------------------------
    def node(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    @property
    def skip_edges(self) -> list[Edge]:
        return [e for e in self.edges if e.skip]

    def __repr__(self) -> str:
        return (f"Graph(view={self.view!r}, nodes={len(self.nodes)}, edges={len(self.edges)}, "
                f"skip_edges={len(self.skip_edges)}, stat={self.stat!r})")

    # -- values ---------------------------------------------------------------------
    def with_values(self, values: Mapping[str, float], stat: str | None, label: str | None = None) -> Graph:
        """A copy coloured by ``values``, keyed by parameter or layer name.

        Parameter nodes take their own value when ``values`` has one, else their
        layer's; operation and module nodes take their layer's. Nodes of modules
        without parameters stay uncoloured.
        """
        def lookup(n: Node) -> float | None:
            keys = []
            if n.kind == PARAM:
                keys.append(n.label)
            if n.layer is not None:
                keys.append(n.layer)
            for k in keys:
                if k in values and values[k] is not None:
                    return float(values[k])
            if n.layers:
                return combine_values(stat, [values.get(k) for k in n.layers])
            return None

        nodes = [replace(n, value=lookup(n)) for n in self.nodes]
        return replace(self, nodes=nodes, stat=stat, stat_label=label or stat)

    def color_by(self, run: Any, stat: str = "grad_norm", *, max_steps: int | None = DEFAULT_MAX_STEPS) -> Graph:
        """A copy coloured by the mean of ``stat`` over a run's sampled steps (the mean, so
        that one step of a huge gradient shows; ``run``: a run view, run or run directory).

        Layer values come from the run's layer rows, parameter values from its
        parameter rows when recorded. The steps are
        :func:`gradsight.store.query.step_sample` of the run's recorded steps (at most
        ``max_steps`` evenly spaced ones; None: all), the same steps the plots and the
        report show.
        """
        view = view_of(run, max_steps=max_steps)
        steps = "sample" if max_steps == view.max_steps else step_sample(view.steps, max_steps)
        tables = view.matrices([("layer", stat), ("param", stat)], steps=steps)
        shown = len(view.sample) if steps == "sample" else len(steps)
        values = {str(k): float(v) for t in tables.values() if not t.empty
                  for k, v in t.mean().items() if not math.isnan(v)}
        return self.with_values(values, stat, f"{stat}, mean over {shown} steps of {view.name}")

    # -- views ----------------------------------------------------------------------
    def module_view(self, max_nesting: int | None = None, *, max_depth: int | None = None) -> Graph:
        """Fold operations into the module calls that ran them.

        Args:
            max_nesting: fold modules nested deeper than this many levels into their
                ancestor at that level (1 = the model's children); None keeps the
                innermost module.
            max_depth: deprecated name of ``max_nesting``.

        Returns:
            A graph with ``view="module"``: inputs, outputs and one node per module
            call that ran operations of its own (parameters fold into their module).
            Operations of the model's own forward (e.g. a functional ``x + y`` at the
            top level) stay single nodes. Skip edges stay skip edges.
        """

        return fold(self, nesting_argument(max_nesting, max_depth))

    # -- drawing --------------------------------------------------------------------
    def to_dot(self, **kwargs: Any) -> str:
        """DOT text of the graph (see :func:`gradsight.compgraph.dot.to_dot`)."""

        return to_dot(self, **kwargs)

    def render(self, path: str | Path, fmt: str | None = None) -> Path:
        """Draw to ``path`` (format from its suffix: svg, png, pdf, dot).

        Without the Graphviz ``dot`` binary, writes ``<path>.dot`` instead and logs
        how to render it; returns the path written.
        """

        return render(self.to_dot(), path, fmt=fmt)

    def _repr_svg_(self) -> str | None:  # Jupyter

        return dot_to_svg(self.to_dot())

    # -- persistence ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for n in d["nodes"]:
            if n["value"] is not None and not math.isfinite(n["value"]):
                n["value"] = repr(n["value"])  # JSON has no NaN/inf
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Graph:
        def node(n: Mapping[str, Any]) -> Node:
            n = dict(n)
            if isinstance(n.get("value"), str):
                n["value"] = float(n["value"])
            if n.get("shape") is not None:
                n["shape"] = tuple(n["shape"])
            n["ops"] = tuple(n.get("ops", ()))
            n["layers"] = tuple(n.get("layers", ()))
            return Node(**n)

        return cls(
            nodes=[node(n) for n in d["nodes"]],
            edges=[Edge(**e) for e in d["edges"]],
            calls=[Call(**c) for c in d.get("calls", [])],
            view=d.get("view", "autograd"),
            stat=d.get("stat"),
            stat_label=d.get("stat_label"),
            title=d.get("title", ""),
        )

    def save(self, path: str | Path) -> Path:
        """Write the graph as JSON (e.g. ``RUN_DIR / GRAPH_FILE``, which reports pick up)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

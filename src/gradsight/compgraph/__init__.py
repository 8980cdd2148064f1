"""Computation graphs: the autograd graph of one forward pass, a module-level view,
skip connections, colouring by a recorded statistic, DOT output and rendering.

    >>> g = gs.graph(model, torch.randn(2, 1, 28, 28), run="runs/exp1")
    >>> g.render("graph.svg")                 # needs Graphviz; else writes graph.dot
    >>> g.module_view().render("modules.svg")
"""

from __future__ import annotations

from typing import Any

from torch import nn

from gradsight.compgraph.dot import to_dot
from gradsight.compgraph.fold import nesting_argument
from gradsight.compgraph.render import dot_binary, render
from gradsight.compgraph.nodes import GRAPH_FILE, Call, Edge, Node
from gradsight.compgraph.structure import Graph
from gradsight.compgraph.trace import trace, trace_inputs_for

__all__ = [
    "GRAPH_FILE", "Call", "Edge", "Graph", "Node", "dot_binary", "graph", "render", "to_dot",
    "trace", "trace_inputs_for",
]


def graph(
    model: nn.Module,
    inputs: Any,
    run: Any = None,
    *,
    stat: str = "grad_norm",
    view: str = "autograd",
    max_nesting: int | None = None,
    values: dict[str, float] | None = None,
    probe: bool = True,
    max_depth: int | None = None,
) -> Graph:
    """The computation graph of one forward pass of ``model`` on ``inputs``.

    Args:
        model: the network.
        inputs: a tensor, a tuple of positional arguments or a dict of keyword arguments.
        run: a recorded run (``Run`` or its directory): nodes are coloured by the mean
            of ``stat`` over its steps (layer names must match the model's).
        stat: the statistic to colour by.
        view: ``"autograd"`` (one node per autograd function, parameters as leaves,
            like torchviz) or ``"module"`` (operations folded into module calls).
        max_nesting: for the module view, fold modules nested deeper than this many
            levels (1 = the model's children) into their ancestor at that level.
        values: colour by these values instead, keyed by layer or parameter name.
        probe: without ``run`` or ``values``, colour by ``grad_norm`` of one backward
            pass of ``sum(output)`` (as the lecture's ``plot_gradients`` does).
        max_depth: deprecated name of ``max_nesting``.

    Returns:
        A :class:`Graph`; ``.render(path)``, ``.to_dot()``, ``.module_view()``, ``.save(path)``.
    """
    max_nesting = nesting_argument(max_nesting, max_depth)
    if view not in ("autograd", "module"):
        raise ValueError(f"view must be 'autograd' or 'module', got {view!r}")
    g = trace(model, inputs, probe=probe and run is None and values is None)
    if values is not None:
        g = g.with_values(values, stat)
    elif run is not None:
        g = g.color_by(run, stat)
    if view == "module":
        g = g.module_view(max_nesting)
    return g

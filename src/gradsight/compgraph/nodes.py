"""The nodes of a computation graph: :class:`Node`, :class:`Edge`, :class:`Call` and the
node kinds, as plain data shared by the graph, its folding and its drawing, and
:class:`GraphData`, what folding and drawing read of a graph."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

#: Node kinds.
INPUT, OUTPUT, PARAM, LEAF, OP, MODULE = "input", "output", "param", "leaf", "op", "module"

#: File name under which a run directory may hold the graph of its model (see :meth:`Graph.save`).
GRAPH_FILE = "graph.json"


@dataclass(frozen=True)
class Node:
    """One node of the graph.

    Attributes:
        id: deterministic id, stable across runs of the same model and input shapes:
            ``input0``, ``param:<name>``, ``op<k>`` (k in forward topological order),
            ``output0``, ``module:<qualified name>[#call]``.
        kind: ``input``, ``output``, ``param``, ``leaf`` (another tensor that requires
            grad), ``op`` (an autograd function) or ``module`` (a folded module call).
        label: display text: the autograd function (``ConvolutionBackward0``), the
            parameter or module name.
        call: key of the innermost module call the node belongs to (``""`` = the
            model's own forward, ``None`` = outside the model).
        layer: name of the layer (module owning parameters) whose statistics colour it.
        type: module class name of a module node, or the op's simplified name.
        shape: tensor shape of inputs, outputs and parameters.
        depth: forward distance from the inputs, counted in operations.
        value: the colouring statistic, or None.
        ops: for module nodes, the simplified names of the operations folded into it.
        layers: for module nodes, the layers folded into it (their values combine
            into the node's value, see :func:`combine_values`); for an operation of a
            recurrent module, its stacked layers (``rnn.l0``, ``rnn.l1``).
    """

    id: str
    kind: str
    label: str
    call: str | None = None
    layer: str | None = None
    type: str | None = None
    shape: tuple[int, ...] | None = None
    depth: int = 0
    value: float | None = None
    ops: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()


def combine_values(stat: str | None, values: list[float | None]) -> float | None:
    """One value for a module node that folds several layers.

    Norms (``*_norm``) combine as the root of the sum of squares, which is the norm
    of the concatenated tensors when the values come from one step; any other
    statistic takes the mean. None values are ignored; None if nothing is left.
    """
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    if stat is not None and stat.endswith("_norm"):
        return math.sqrt(sum(v * v for v in present))
    return sum(present) / len(present)


@dataclass(frozen=True)
class Edge:
    """A forward edge ``src -> dst``; ``skip`` marks a skip (shortcut) connection."""

    src: str
    dst: str
    skip: bool = False


@dataclass(frozen=True)
class Call:
    """One call of a module during the traced forward pass.

    Attributes:
        key: ``<qualified name>`` for the first call, ``<qualified name>#<n>`` for
            the n-th (n >= 2) call of a module that runs more than once.
        module: qualified module name (``""`` = the model).
        type: module class name.
        parent: key of the enclosing call, None for the model's own call.
        params: number of parameter elements the module owns directly.
    """

    key: str
    module: str
    type: str
    parent: str | None
    params: int = 0

    @property
    def level(self) -> int:
        """Nesting level of the module: 0 for the model, 1 for its children, ..."""
        return 0 if self.module == "" else self.module.count(".") + 1


class GraphData(Protocol):
    """A computation graph as folding (:mod:`~gradsight.compgraph.fold`) and drawing
    (:mod:`~gradsight.compgraph.dot`) read it: the fields of
    :class:`~gradsight.compgraph.structure.Graph`, which builds on them, so that they need
    not import it."""

    nodes: list[Node]
    edges: list[Edge]
    calls: list[Call]
    view: str
    stat: str | None
    stat_label: str | None
    title: str

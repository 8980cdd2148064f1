"""The module-level view: fold the operations of an autograd graph into module calls."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from gradsight.compgraph.nodes import MODULE, OP, PARAM, Edge, Node, combine_values

if TYPE_CHECKING:
    from gradsight.compgraph.structure import Graph


def _folded_key(key: str, calls: dict, max_depth: int | None) -> str:
    """The call ``key`` belongs to at ``max_depth`` (its ancestor at that nesting level)."""
    if max_depth is None:
        return key
    call = calls[key]
    while call.level > max_depth and call.parent is not None:
        call = calls[call.parent]
    return call.key


def fold(graph: Graph, max_depth: int | None = None) -> Graph:
    """Module-level view of an autograd ``graph``; see :meth:`Graph.module_view`."""
    if graph.view != "autograd":
        raise ValueError("module_view needs the autograd-level graph")
    if max_depth is not None and max_depth < 0:
        raise ValueError(f"max_depth must be >= 0, got {max_depth}")
    calls = {c.key: c for c in graph.calls}
    folded = {c.key: _folded_key(c.key, calls, max_depth) for c in graph.calls}
    layers_with_params = {n.layer for n in graph.nodes if n.kind == PARAM}
    layer_value: dict[str, float] = {}
    layer_first: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        if n.layer is not None:
            layer_first.setdefault(n.layer, i)
            if n.kind == OP and n.value is not None:
                layer_value.setdefault(n.layer, n.value)

    group: dict[str, str] = {}  # node id -> id of the node it folds into
    members: dict[str, list[Node]] = {}
    for n in graph.nodes:
        key = n.call if n.kind in (OP, PARAM) else None
        if key is not None and key in calls and (key != "" or max_depth == 0):
            gid = "module:" + folded[key]
        elif n.kind == PARAM:
            gid = n.id  # a parameter of a module that never ran
        else:
            gid = n.id
        group[n.id] = gid
        members.setdefault(gid, []).append(n)

    position = {n.id: i for i, n in enumerate(graph.nodes)}

    def first_position(gid: str) -> int:  # parameters do not decide where their module goes
        ms = members[gid]
        ops = [position[m.id] for m in ms if m.kind != PARAM]
        return min(ops) if ops else min(position[m.id] for m in ms)

    nodes: list[Node] = []
    for gid in sorted(members, key=first_position):
        ms = members[gid]
        if not gid.startswith("module:"):
            nodes.append(ms[0])
            continue
        key = gid[len("module:"):]
        call = calls[key]
        inner = {k for k, f in folded.items() if f == key}
        layers = tuple(sorted({calls[k].module for k in inner} & layers_with_params, key=layer_first.__getitem__))
        ops = []  # named only for containers: a leaf module's one op repeats its type
        if any(c.parent == key for c in graph.calls):
            for m in ms:
                if m.kind == OP and m.call == key and m.type not in ops:
                    ops.append(m.type)
        own_layer = call.module if call.module in layers_with_params else None
        if layers == (own_layer,):
            value = layer_value.get(own_layer)
        else:
            value = combine_values(graph.stat, [layer_value.get(lay) for lay in layers])
        nodes.append(Node(
            id=gid,
            kind=MODULE,
            label=call.module or graph.title or "model",
            call=key,
            layer=own_layer,
            type=call.type,
            depth=min(m.depth for m in ms if m.kind == OP) if any(m.kind == OP for m in ms) else 0,
            value=value,
            ops=tuple(ops),
            layers=layers,
        ))

    edges: list[Edge] = []
    index: dict[tuple[str, str], int] = {}
    for e in graph.edges:
        src, dst = group[e.src], group[e.dst]
        if src == dst:
            continue
        k = (src, dst)
        if k not in index:
            index[k] = len(edges)
            edges.append(Edge(src, dst, e.skip))
        elif not e.skip and edges[index[k]].skip:
            edges[index[k]] = replace(edges[index[k]], skip=False)
    return replace(graph, nodes=nodes, edges=edges, view="module")


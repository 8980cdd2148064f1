"""The module-level view: fold the operations of an autograd graph into module calls."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import TypeVar

from gradsight.compgraph.nodes import MODULE, OP, PARAM, Call, Edge, GraphData, Node, combine_values
from gradsight.instrument.recurrent import module_of_stacked_layer

G = TypeVar("G", bound=GraphData)


def nesting_argument(max_nesting: int | None, max_depth: int | None, *, stacklevel: int = 3) -> int | None:
    """``max_nesting``, or ``max_depth``, its deprecated name (a ``DeprecationWarning``: "depth"
    is a layer's place in forward order, not how deeply a module is nested)."""
    if max_depth is None:
        return max_nesting
    if max_nesting is not None:
        raise TypeError("give max_nesting only (max_depth is its deprecated name)")
    warnings.warn("max_depth= is deprecated: use max_nesting= (how many module levels the view keeps)",
                  DeprecationWarning, stacklevel=stacklevel)
    return max_depth


def _level(call: Call) -> int:
    """Nesting level of a call; an addition's call (``block[attn]``) is one below its block."""
    return call.level + (1 if call.module.endswith("]") else 0)


def _folded_key(key: str, calls: dict[str, Call], max_nesting: int | None) -> str:
    """The call ``key`` belongs to at ``max_nesting``: its ancestor at that nesting level, or the
    call itself (or its ancestor) that runs directly inside a call above that level."""
    if max_nesting is None:
        return key
    call = calls[key]
    # a parent above max_nesting (a ModuleList between them never runs) does not swallow the call
    while _level(call) > max_nesting and call.parent is not None and _level(calls[call.parent]) >= max_nesting:
        call = calls[call.parent]
    return call.key


def _own_segments(graph: GraphData, calls: dict[str, Call], folded: dict[str, str]) -> dict[str, str]:
    """``node id -> "~i"`` for the operations a container call runs itself (and no other call is
    folded into), when they fall in several pieces not joined by an edge (a model that adds its embeddings first and reshapes
    its output last): piece ``i >= 1`` becomes a node of its own, so the view has no cycle
    through the container. The first piece keeps the call's node id."""
    parents = {c.parent for c in calls.values()}
    absorbing = {f for k, f in folded.items() if k != f}  # calls that other calls fold into stay whole
    own: dict[str, str] = {n.id: n.call for n in graph.nodes if n.kind == OP and n.call in calls
                           and n.call in parents and folded[n.call] == n.call and n.call not in absorbing}
    root = {i: i for i in own}

    def find(i: str) -> str:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    for e in graph.edges:
        if e.src in own and e.dst in own and own[e.src] == own[e.dst]:
            root[find(e.src)] = find(e.dst)
    pieces: dict[str, list[str]] = {}
    for n in graph.nodes:
        if n.id in own:
            pieces.setdefault(own[n.id], [])
            r = find(n.id)
            if r not in pieces[own[n.id]]:
                pieces[own[n.id]].append(r)
    return {i: f"~{pieces[own[i]].index(find(i))}" for i in own if pieces[own[i]].index(find(i)) > 0}


def fold(graph: G, max_nesting: int | None = None) -> G:
    """Module-level view of an autograd ``graph`` (a copy of it, ``dataclasses.replace``); see
    :meth:`~gradsight.compgraph.structure.Graph.module_view`."""
    if graph.view != "autograd":
        raise ValueError("module_view needs the autograd-level graph")
    if max_nesting is not None and max_nesting < 0:
        raise ValueError(f"max_nesting must be >= 0, got {max_nesting}")
    calls = {c.key: c for c in graph.calls}
    folded = {c.key: _folded_key(c.key, calls, max_nesting) for c in graph.calls}
    layers_with_params = {n.layer for n in graph.nodes if n.kind == PARAM}
    modules = {c.module for c in graph.calls}
    # a recurrent module's stacked layers (rnn.l0, rnn.l0_reverse) are parts of its node
    module_of = {lay: module_of_stacked_layer(lay, modules) or lay for lay in layers_with_params}
    layer_value: dict[str, float] = {}
    layers_value: dict[tuple[str, ...], float] = {}
    layer_first: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        if n.layer is not None:
            layer_first.setdefault(n.layer, i)
            if n.kind == OP and n.value is not None:
                layer_value.setdefault(n.layer, n.value)
        elif n.kind == OP and n.layers and n.value is not None:  # a recurrent module's operation
            layers_value.setdefault(n.layers, n.value)

    segment = _own_segments(graph, calls, folded)
    group: dict[str, str] = {}  # node id -> id of the node it folds into
    members: dict[str, list[Node]] = {}
    for n in graph.nodes:
        key = n.call if n.kind in (OP, PARAM) else None
        if key is not None and key in calls and (key != "" or max_nesting == 0):
            gid = "module:" + folded[key] + segment.get(n.id, "")
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
        key = gid[len("module:"):].split("~")[0]
        call = calls[key]
        inner = {k for k, f in folded.items() if f == key}
        inner_modules = {calls[k].module for k in inner}
        layers = tuple(sorted({lay for lay in layers_with_params if module_of[lay] in inner_modules},
                              key=layer_first.__getitem__))
        ops = []  # named only for containers: a leaf module's one op repeats its type
        if any(c.parent == key for c in graph.calls):
            for m in ms:
                if m.kind == OP and m.call == key and m.type not in ops:
                    ops.append(m.type)
        own_layer = call.module if call.module in layers_with_params else None
        if layers == (own_layer,):
            value = layer_value.get(own_layer)
        else:
            value = layers_value.get(layers, combine_values(graph.stat, [layer_value.get(lay) for lay in layers]))
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


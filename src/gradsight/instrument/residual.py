"""Finding residual additions ``s + f(s)`` in the autograd graph of one forward.

A *residual addition* is an addition node whose two operands both depend on one
tensor ``s`` (the residual stream) through node-disjoint parts of the graph: the
*skip* operand is ``s`` itself or a function of it holding fewer parameters
(an identity, a parameter-free shortcut such as zero padding, or a projection), the
*branch* operand ``f(s)`` holds more parameters than the skip (at least one). ``s``
is the one node that both operands reach and that no other such node lies above.
This covers ``y = x + f(x)``, ``y = f(x) + shortcut(x)``, in-place
``out += identity``, torchvision's ``BasicBlock``/``Bottleneck``, the two additions
of a transformer block (``h = x + attn(ln1(x))``; ``y = h + mlp(ln2(h))``, whose
stream ``h`` is the first addition's output) and post-LN additions
(``LayerNorm(x + f(x))``: the addition is found, the LayerNorm after it does not
matter). Additions of two parameter-free functions of one tensor (rotary embeddings,
``x + c * x**3`` in GELU) are not residual. A reentrant checkpoint (``checkpoint(f, x,
use_reentrant=True)``) hides its forward's graph; it counts the parameters of the module
that ``f`` calls (``x + checkpoint(self.mlp, x)`` is a residual addition).

Nodes are looked for between a module call's output and its inputs (the graph is not
followed past the inputs' gradient edges), so an addition whose stream or branch
starts outside a module's forward is not that module's; the monitor gives each
addition to the innermost module whose forward holds the whole ``s + f(s)``. An
addition written in the model's own forward counts only when no parameterized
operation follows it (the model is then itself one residual block); otherwise it is
part of the model's plumbing (``head(h + block(h))``), not a row. The addition of an
adapter wrapper (:func:`gradsight.instrument.layers.is_adapter_wrapper`; LoRA's
``base_layer(x) + lora_B(lora_A(x))``) is the adapter's update of the layer it wraps:
the monitor claims it for the wrapper, so no outer module takes it, and gives it no row.

Parameters are seen in the graph only when they require grad: with a frozen base
model a branch counts as parameterized only through trainable parameters (an adapter),
and a stream that does not require grad (a frozen embedding's output) has no node.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

from torch import nn
from torch.autograd.graph import Node

_ADD_NODES = {"AddBackward0", "AddBackward1"}
MAX_NODES = 20_000


@dataclass
class ResidualSplit:
    """Where the gradient reaching the stream ``s`` of one addition splits into skip and branch.

    ``consumers[p]`` lists ``(node, index)`` pairs: graph nodes on path ``p``
    (0 = skip, 1 = branch) whose input ``index`` is the stream ``s``; the gradient a
    node passes to that input is the path's contribution to dL/ds.
    ``stream`` is the gradient edge ``(node, output_nr)`` of ``s``; ``skip_index`` the
    operand of ``add_node`` that is the skip (0 or 1); ``branch_nodes`` the branch's
    part of the graph in breadth-first order from the addition.
    """

    add_node: Node
    consumers: tuple[list[tuple[Node, int]], list[tuple[Node, int]]]
    branch_node: Node | None
    skip_node: Node | None
    stream: tuple[Node, int] | None = None
    skip_index: int = 0
    branch_nodes: tuple[Node, ...] = ()


def _children(node: Node) -> list[tuple[Node, int, int]]:
    """(child, output_nr, edge index) of a node's non-empty next functions."""
    return [(fn, nr, i) for i, (fn, nr) in enumerate(node.next_functions) if fn is not None]


def _collect(start: Node, stops: Iterable[Node] | Node | None) -> list[Node] | None:
    """Nodes reachable from ``start`` without expanding the ``stops`` (BFS order); None past ``MAX_NODES``."""
    if isinstance(stops, Node):
        stops = {stops}
    stop_set = set(stops or ())
    seen = {start}
    order = [start]
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            if node in stop_set:
                continue
            for child, _, _ in _children(node):
                if child not in seen:
                    seen.add(child)
                    order.append(child)
                    nxt.append(child)
                    if len(seen) > MAX_NODES:
                        return None
        frontier = nxt
    return order


def _is_parameter(node: Node) -> bool:
    return type(node).__name__ == "AccumulateGrad" and isinstance(getattr(node, "variable", None), nn.Parameter)


def is_reentrant_checkpoint(node: object) -> bool:
    """Whether an autograd node is reentrant checkpointing's (``CheckpointFunctionBackward``
    of ``torch.utils.checkpoint.checkpoint(..., use_reentrant=True)``)."""
    return getattr(getattr(node, "_forward_cls", None), "__name__", None) == "CheckpointFunction"


def checkpointed_params(node: Node) -> int:
    """The parameters that reentrant checkpointing hides behind ``node`` (its forward ran without
    a graph): those of the module whose call or method it re-runs (also through
    ``functools.partial``); 0 for any other node or function."""
    if not is_reentrant_checkpoint(node):
        return 0
    fn = getattr(node, "run_function", None)
    for _ in range(8):  # partials and wrappers of the function (``__wrapped__``)
        inner = fn.func if isinstance(fn, partial) else getattr(fn, "__wrapped__", None)
        if inner is None:
            break
        fn = inner
    owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    return sum(1 for _ in owner.parameters()) if isinstance(owner, nn.Module) else 0


def _param_count(nodes: Iterable[Node]) -> int:
    return sum(1 if type(n).__name__ == "AccumulateGrad" else checkpointed_params(n) for n in nodes)


def split_addition(add: Node, stops: Iterable[Node] = ()) -> ResidualSplit | None:
    """The skip/branch split of one addition node, or None if it is not a residual addition.

    Args:
        add: an ``AddBackward`` node.
        stops: nodes the search does not go past (the gradient edges of a module's inputs).
    """
    if type(add).__name__ not in _ADD_NODES:
        return None
    stops = set(stops)
    kids = _children(add)
    if len(kids) != 2:
        return None
    reach = [_collect(child, stops) for child, _, _ in kids]
    if reach[0] is None or reach[1] is None:
        return None
    common = (set(reach[0]) & set(reach[1])) - {add}
    common = {n for n in common if not _is_parameter(n)}
    if not common:
        return None
    below = {c for n in common if n not in stops for c, _, _ in _children(n) if c in common}
    tops = common - below
    if len(tops) != 1:
        return None
    (stream,) = tops
    subs: list[list[Node]] = []
    for child, _, _ in kids:
        if child is stream:
            subs.append([])
        else:
            nodes = _collect(child, stops | {stream})
            subs.append([n for n in nodes if n is not stream] if nodes is not None else [])
    sets = [set(s) for s in subs]
    if (sets[0] & sets[1]) - {n for n in sets[0] if _is_parameter(n)}:
        return None
    params = [_param_count(s) for s in sets]
    skip = 0 if params[0] < params[1] else 1
    branch = 1 - skip
    if params[branch] <= params[skip]:
        return None
    consumers: list[list[tuple[Node, int]]] = [[], []]
    outputs: set[int] = set()
    for p, ((child, nr, idx), sub) in enumerate(zip(kids, subs)):
        if child is stream:
            consumers[p].append((add, idx))
            outputs.add(nr)
        for node in sub:
            for c, cnr, cidx in _children(node):
                if c is stream:
                    consumers[p].append((node, cidx))
                    outputs.add(cnr)
    if not consumers[0] or not consumers[1] or len(outputs) != 1:
        return None
    return ResidualSplit(
        add_node=add,
        consumers=(consumers[skip], consumers[branch]),
        branch_node=kids[branch][0] if kids[branch][0] is not stream else None,
        skip_node=kids[skip][0] if kids[skip][0] is not stream else None,
        stream=(stream, outputs.pop()),
        skip_index=skip,
        branch_nodes=tuple(subs[branch]),
    )


def is_recurrent(module: nn.Module) -> bool:
    """A recurrent layer (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``): the additions inside its forward
    (GRU's ``n + z * (h - n)``, one per time step and direction) carry its state through time,
    not a residual stream through depth. They are claimed for it, so that no outer module
    takes them, and give no block rows; they are not split (one search per addition over a
    graph that grows with the sequence)."""
    return isinstance(module, nn.RNNBase)


def additions_within(y_node: Node | None, stops: Iterable[Node] = ()) -> list[Node]:
    """Every addition node between a module call's output and its inputs (what a recurrent
    layer claims)."""
    if y_node is None:
        return []
    stops = set(stops)
    nodes = _collect(y_node, stops) or []
    return [n for n in nodes if type(n).__name__ in _ADD_NODES and n not in stops]


def find_residual_additions(y_node: Node | None, stops: Iterable[Node] = (),
                            skip: set[int] | frozenset[int] = frozenset()) -> list[ResidualSplit]:
    """Every residual addition between a module call's output and its inputs, in forward order.

    Args:
        y_node: ``grad_fn`` of the module's output.
        stops: ``grad_fn`` (gradient-edge nodes) of the module's inputs.
        skip: ``id`` of addition nodes already given to an inner module.
    """
    if y_node is None:
        return []
    stops = set(stops)
    nodes = _collect(y_node, stops)
    if nodes is None:
        return []
    found = []
    for node in nodes:
        if type(node).__name__ not in _ADD_NODES or id(node) in skip or node in stops:
            continue
        split = split_addition(node, stops)
        if split is not None:
            found.append(split)
    found.sort(key=lambda s: s.add_node._sequence_nr())
    return found


def _holds_parameter(node: Node, hops: int = 3) -> bool:
    """Whether ``node`` is a parameter, or reaches one through a chain of single-input nodes
    (a transpose, a view, a cast) of at most ``hops`` steps."""
    for _ in range(hops + 1):
        if _is_parameter(node) or checkpointed_params(node):
            return True
        kids = _children(node)
        if len(kids) != 1:
            return False
        node = kids[0][0]
    return False


def parameterized_after(y_node: Node, add: Node) -> bool:
    """Whether an operation on a path from the addition ``add`` to the output ``y_node`` takes a
    parameter (a head after an addition written in a model's own forward)."""
    nodes = _collect(y_node, {add})
    if nodes is None:
        return True
    between = {add}
    changed = True
    while changed:
        changed = False
        for node in reversed(nodes):
            if node not in between and any(c in between for c, _, _ in _children(node)):
                between.add(node)
                changed = True
    return any(_holds_parameter(c) for node in between - {add} for c, _, _ in _children(node) if c not in between)

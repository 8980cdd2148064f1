"""Finding the residual add inside a module from the autograd graph of one forward.

A module is a *residual block* when its output ``y`` is computed from its input
``x`` by an addition whose two operands both depend on ``x`` through node-disjoint
parts of the graph (the skip path and the branch), with no parameterized operation
between the addition and ``y`` (a final ReLU is fine). This covers ``y = x + f(x)``,
``y = f(x) + shortcut(x)``, in-place ``out += identity`` and torchvision's
``BasicBlock``/``Bottleneck``, and rejects containers of several blocks (a stage),
whose additions are followed by more parameterized layers.

The *skip* operand is the one whose part of the graph holds fewer parameters (none
for an identity shortcut).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.autograd.graph import Node

_ADD_NODES = {"AddBackward0", "AddBackward1"}
MAX_NODES = 20_000


@dataclass
class ResidualSplit:
    """Where the gradient reaching a block's input splits into skip and branch.

    ``consumers[p]`` lists ``(node, index)`` pairs: graph nodes on path ``p``
    (0 = skip, 1 = branch) whose input ``index`` is the block's input ``x``; the
    gradient a node passes to that input is the path's contribution to dL/dx.
    ``branch_node`` produces the branch operand of the addition.
    """

    add_node: Node
    consumers: tuple[list[tuple[Node, int]], list[tuple[Node, int]]]
    branch_node: Node | None
    skip_node: Node | None


def _children(node: Node) -> list[tuple[Node, int, int]]:
    """(child, output_nr, edge index) of a node's non-empty next functions."""
    return [(fn, nr, i) for i, (fn, nr) in enumerate(node.next_functions) if fn is not None]


def _collect(start: Node, stop: Node) -> list[Node] | None:
    """Nodes reachable from ``start`` without expanding ``stop`` (BFS order)."""
    seen = {start}
    order = [start]
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            if node is stop:
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


def _reaches(nodes: list[Node], target: Node) -> set[Node]:
    """Subset of ``nodes`` from which ``target`` is reachable (``target`` included)."""
    reach: set[Node] = {target}
    changed = True
    # nodes are in BFS order from the top; iterate bottom-up until stable
    while changed:
        changed = False
        for node in reversed(nodes):
            if node in reach:
                continue
            if any(child in reach for child, _, _ in _children(node)):
                reach.add(node)
                changed = True
    return reach


def _subgraph(start: Node, stop: Node) -> set[Node]:
    nodes = _collect(start, stop) or []
    return {n for n in nodes if n is not stop}


def _param_count(nodes: set[Node]) -> int:
    return sum(1 for n in nodes if type(n).__name__ == "AccumulateGrad")


def _parameterized_after(nodes: list[Node], add: Node, subs: list[set[Node]], x_node: Node, reach_x: set[Node]) -> bool:
    """Whether an operation between the addition and the output uses parameters.

    The nodes between are those that reach the addition; their side inputs (children
    that do not lead to the block input) hold parameters when an ``AccumulateGrad``
    node (possibly behind a transpose or a cast) is among them.
    """
    above = [n for n in nodes if n is not add and n is not x_node and n not in subs[0] and n not in subs[1]]
    between = _reaches(above + [add], add) - {add}
    for node in between:
        for child, _, _ in _children(node):
            if child in between or child is add or child in reach_x:
                continue
            side = _collect(child, x_node) or [child]
            if any(type(n).__name__ == "AccumulateGrad" for n in side):
                return True
    return False


def find_residual_split(y_node: Node | None, x_node: Node | None, x_nr: int = 0, *, strict: bool = True) -> ResidualSplit | None:
    """The residual addition between a block's input and output, or None.

    Args:
        y_node: ``grad_fn`` of the block's output.
        x_node, x_nr: the gradient edge of the block's input
            (``torch.autograd.graph.get_gradient_edge(x)``).
        strict: require no parameterized operation between the addition and the
            output (automatic detection). ``False`` (blocks marked by the user)
            accepts the addition closest to the output with disjoint operands.
    """
    if y_node is None or x_node is None:
        return None
    nodes = _collect(y_node, x_node)
    if nodes is None or x_node not in nodes:
        return None
    reach_x = _reaches(nodes, x_node)
    for add in nodes:
        if type(add).__name__ not in _ADD_NODES:
            continue
        kids = _children(add)
        if len(kids) != 2 or not all(child in reach_x for child, _, _ in kids):
            continue
        subs = [_subgraph(child, x_node) if child is not x_node else set() for child, _, _ in kids]
        if subs[0] & subs[1]:
            continue
        if strict and _parameterized_after(nodes, add, subs, x_node, reach_x):
            continue
        consumers: list[list[tuple[Node, int]]] = [[], []]
        for p, ((child, nr, idx), sub) in enumerate(zip(kids, subs)):
            if child is x_node and nr == x_nr:
                consumers[p].append((add, idx))
            for node in sub:
                for c, cnr, cidx in _children(node):
                    if c is x_node and cnr == x_nr:
                        consumers[p].append((node, cidx))
        if not consumers[0] or not consumers[1]:
            continue
        skip = 0 if (_param_count(subs[0]), len(subs[0])) <= (_param_count(subs[1]), len(subs[1])) else 1
        branch = 1 - skip
        return ResidualSplit(
            add_node=add,
            consumers=(consumers[skip], consumers[branch]),
            branch_node=kids[branch][0] if kids[branch][0] is not x_node else None,
            skip_node=kids[skip][0] if kids[skip][0] is not x_node else None,
        )
    return None

"""Trace the autograd graph of one forward pass into a :class:`~gradsight.compgraph.structure.Graph`.

How it works:

1. Floating-point inputs are replaced by leaf copies that require grad, so the
   inputs appear in the graph (as with torchviz when the input requires grad).
2. Forward pre-hooks and hooks on every module record, for each module *call*, the
   autograd nodes of its input and output tensors at that moment. Recording nodes
   rather than tensors keeps in-place operations (``out += identity``,
   ``ReLU(inplace=True)``) correct: an in-place op replaces a tensor's ``grad_fn``
   but not the node the hook saw.
3. The backward graph is walked from the outputs through ``grad_fn.next_functions``;
   ``AccumulateGrad`` nodes are the leaves: parameters (named via
   ``named_parameters``), the inputs, or other tensors.
4. A call owns the nodes reachable from its outputs without passing its inputs;
   every operation goes to the innermost call owning it.
5. Skip connections are those of the residual additions ``s + f(s)``, found as
   everywhere in gradsight (:mod:`gradsight.instrument.residual`), each owned by the
   innermost call whose forward holds it. The edges of the skip path, from the
   stream ``s`` through any shortcut (a projection, its norm) to the addition, are
   marked. A call that owns several additions (a transformer block) gets one child
   call per addition, ``<module>[<branch>]`` as in the monitor's block rows, which
   owns that addition, so the module view has one node per addition.

Ids are deterministic: operations are numbered in a forward topological order
obtained by a depth-first walk that follows ``next_functions`` in order.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge
from torch.utils import _pytree as pytree

from gradsight.compgraph.nodes import INPUT, LEAF, OP, OUTPUT, PARAM, Call, Edge, Node
from gradsight.compgraph.structure import Graph
from gradsight.instrument.layers import is_adapter_wrapper, param_layers
from gradsight.instrument.outputs import main_output
from gradsight.instrument.recurrent import module_of_stacked_layer
from gradsight.instrument.residual import (ResidualSplit, additions_within, find_residual_additions, is_recurrent,
                                           parameterized_after)


def op_type(name: str) -> str:
    """``ConvolutionBackward0`` -> ``Convolution``; ``AddBackward0`` -> ``Add``."""
    return re.sub(r"Backward\d*$", "", name) or name


def _call_model(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _grad_inputs(inputs: Any) -> tuple[Any, list[torch.Tensor]]:
    """Inputs with every floating tensor replaced by a leaf copy that requires grad."""
    leaves, spec = pytree.tree_flatten(inputs)
    out, tensors = [], []
    for x in leaves:
        if isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex()):
            x = x.detach().requires_grad_(True)
            tensors.append(x)
        out.append(x)
    return pytree.tree_unflatten(out, spec), tensors


def _grad_fns(obj: Any) -> list[Any]:
    return [t.grad_fn for t in pytree.tree_leaves(obj) if isinstance(t, torch.Tensor) and t.grad_fn is not None]


class _CallRecorder:
    """Forward (pre-)hooks on every module recording each call's boundary nodes."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {id(m): name for name, m in model.named_modules()}
        self.counter = 0
        self.stack: list[int] = []
        self.calls: list[dict[str, Any]] = []
        self.n_calls: dict[str, int] = {}
        self.keep: list[Any] = []  # autograd nodes referenced by id; kept alive so ids stay unique
        self.claimed: set[int] = set()  # ids of additions owned by a call that ended
        self.handles = []
        for m in model.modules():
            self.handles.append(m.register_forward_pre_hook(self._pre, with_kwargs=True))
            self.handles.append(m.register_forward_hook(self._post, with_kwargs=True, always_call=True))

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        name = self.names.get(id(module), type(module).__name__)
        n = self.n_calls[name] = self.n_calls.get(name, 0) + 1
        inputs = _grad_fns((args, kwargs))
        self.keep.extend(inputs)
        self.calls.append({
            "key": name if n == 1 else f"{name}#{n}",
            "module": name,
            "type": type(module).__name__,
            "parent": self.calls[self.stack[-1]]["key"] if self.stack else None,
            "params": sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad),
            "start": self.counter,
            "end": None,
            "inputs": {id(f) for f in inputs},
            "outputs": [],
            "stops": [e.node for e in _input_edges((args, kwargs))],
            "splits": [],
        })
        self.stack.append(len(self.calls) - 1)
        self.counter += 1

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self.stack:
            return
        call = self.calls[self.stack.pop()]
        outputs = _grad_fns(output)
        self.keep.extend(outputs)
        call["outputs"] = outputs
        call["end"] = self.counter
        self.counter += 1
        y = main_output(output)
        if y is not None and y.grad_fn is not None and is_recurrent(module):
            # a recurrent layer's additions carry its state through time: claimed, no blocks
            adds = additions_within(y.grad_fn, call["stops"])
            self.claimed.update(id(a) for a in adds)
            self.keep.extend(adds)
            call["splits"] = []
        elif y is not None and y.grad_fn is not None:
            splits = find_residual_additions(y.grad_fn, call["stops"], skip=self.claimed)
            if not self.stack:  # the model's own forward
                splits = [split for split in splits if not parameterized_after(y.grad_fn, split.add_node)]
            self.claimed.update(id(split.add_node) for split in splits)
            self.keep.extend(split.add_node for split in splits)
            call["splits"] = [] if is_adapter_wrapper(module) else splits  # an adapter's update is no block
        call["stops"] = []

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _input_edges(obj: Any) -> list[Any]:
    """The gradient edges of a call's floating-point tensor arguments that require grad."""
    edges = []
    for x in pytree.tree_leaves(obj):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.requires_grad:
            try:
                edges.append(get_gradient_edge(x))
            except RuntimeError:
                pass
    return edges


def _topological(roots: list[Any]) -> list[Any]:
    """Autograd nodes reachable from ``roots``, each after all of its ``next_functions``."""
    order, seen = [], set()
    for root in roots:
        if id(root) in seen:
            continue
        seen.add(id(root))
        stack = [(root, iter(root.next_functions))]
        while stack:
            fn, it = stack[-1]
            for nxt, _ in it:
                if nxt is not None and id(nxt) not in seen:
                    seen.add(id(nxt))
                    stack.append((nxt, iter(nxt.next_functions)))
                    break
            else:
                stack.pop()
                order.append(fn)
    return order


def _owned(call: dict[str, Any]) -> set[int]:
    """Ids of the op nodes reachable from a call's outputs without crossing its inputs."""
    stop = call["inputs"]
    owned: set[int] = set()
    todo = [f for f in call["outputs"] if id(f) not in stop]
    while todo:
        fn = todo.pop()
        if id(fn) in owned or hasattr(fn, "variable"):
            continue
        owned.add(id(fn))
        todo.extend(n for n, _ in fn.next_functions if n is not None and id(n) not in stop)
    return owned


def trace(model: nn.Module, inputs: Any, *, probe: bool = True) -> Graph:
    """Build the autograd graph of ``model`` on ``inputs`` (one forward pass).

    Args:
        model: the network; its mode is left as is and its buffers (e.g. batch-norm
            running statistics) are restored after the pass.
        inputs: a tensor, a tuple/list of positional arguments or a dict of keyword
            arguments for ``model``.
        probe: colour the graph by ``grad_norm`` of one backward pass of
            ``sum(outputs)`` (what the lecture's ``plot_gradients`` computes), via
            ``torch.autograd.grad``; the model's ``.grad`` fields are not touched.

    Returns:
        The autograd-level :class:`Graph`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"graph expects a torch.nn.Module, got {type(model).__name__}")
    params = {id(p): name for name, p in model.named_parameters()}
    owner = param_layers(model)  # the layers the run records, so a run's values colour the graph
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        return _trace(model, inputs, params, owner, probe)
    finally:  # after the probe's backward pass, which may need the buffers as they were
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])


def _trace(model: nn.Module, inputs: Any, params: dict[int, str], owner: dict[str, str], probe: bool) -> Graph:
    inputs, input_tensors = _grad_inputs(inputs)
    recorder = _CallRecorder(model)
    try:
        with torch.enable_grad():
            output = _call_model(model, inputs)
    finally:
        recorder.remove()

    out_tensors = [t for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor) and t.requires_grad]
    roots = [t.grad_fn for t in out_tensors if t.grad_fn is not None]
    order = _topological(roots)
    input_ids = {id(t): i for i, t in enumerate(input_tensors)}

    # -- ids and leaves ----------------------------------------------------------------
    node_id: dict[int, str] = {}
    leaf_var: dict[int, torch.Tensor] = {}
    n_ops = n_leaves = 0
    for fn in order:
        var = getattr(fn, "variable", None)
        if var is None:
            node_id[id(fn)] = f"op{n_ops}"
            n_ops += 1
        elif id(var) in params:
            node_id[id(fn)] = f"param:{params[id(var)]}"
        elif id(var) in input_ids:
            node_id[id(fn)] = f"input{input_ids[id(var)]}"
        else:
            node_id[id(fn)] = f"leaf{n_leaves}"
            n_leaves += 1
        if var is not None:
            leaf_var[id(fn)] = var

    # -- module calls ------------------------------------------------------------------
    calls = [c for c in recorder.calls if c["end"] is not None]
    first_call = {}
    for c in calls:
        first_call.setdefault(c["module"], c["key"])
    innermost: dict[int, tuple[int, str]] = {}
    for c in calls:
        width = c["end"] - c["start"]
        for fid in _owned(c):
            if fid not in innermost or width < innermost[fid][0]:
                innermost[fid] = (width, c["key"])
    calls = _addition_calls(calls, innermost)
    module_of_call = {c["key"]: c["module"] for c in calls}
    layers = set(owner.values())
    # a recurrent module's stacked layers (rnn.l0, rnn.l1): its operations hold all of them
    module_of = {lay: module_of_stacked_layer(lay, first_call) or lay for lay in dict.fromkeys(owner.values())}
    stacked: dict[str, tuple[str, ...]] = {}
    for lay, module in module_of.items():
        if module != lay:
            stacked[module] = (*stacked.get(module, ()), lay)

    # -- nodes -------------------------------------------------------------------------
    depth: dict[int, int] = {}
    nodes: list[Node] = []
    edges: list[Edge] = []
    edge_seen: set[tuple[str, str]] = set()
    data = set()  # ids of op and input nodes: the path the activations take
    for fn in order:
        nid = node_id[id(fn)]
        parents = [n for n, _ in fn.next_functions if n is not None]
        data_parents = [p for p in parents if id(p) in data]
        d = 1 + max((depth[id(p)] for p in data_parents), default=-1)
        if nid.startswith("op"):
            data.add(id(fn))
            key = innermost.get(id(fn), (0, None))[1]
            module = module_of_call.get(key) if key is not None else None
            name = fn.name()
            nodes.append(Node(nid, OP, name, call=key, layer=module if module in layers else None,
                              type=op_type(name), depth=d, layers=stacked.get(module, ())))
        elif nid.startswith("input"):
            data.add(id(fn))
            d = 0
            var = leaf_var[id(fn)]
            label = "input" if len(input_tensors) == 1 else f"input{input_ids[id(var)]}"
            nodes.append(Node(nid, INPUT, label, shape=tuple(var.shape), depth=0))
        else:
            var = leaf_var[id(fn)]
            if nid.startswith("param:"):
                pname = nid[len("param:"):]
                layer = owner[pname]
                nodes.append(Node(nid, PARAM, pname, call=first_call.get(module_of[layer]), layer=layer,
                                  shape=tuple(var.shape), depth=0))
            else:
                nodes.append(Node(nid, LEAF, "tensor", shape=tuple(var.shape), depth=0))
            d = 0
        depth[id(fn)] = d
        for p in parents:
            e = (node_id[id(p)], nid)
            if e not in edge_seen:
                edge_seen.add(e)
                edges.append(Edge(*e))
    for i, t in enumerate(out_tensors):
        oid = f"output{i}"
        label = "output" if len(out_tensors) == 1 else f"output{i}"
        src_fn = t.grad_fn
        src = node_id.get(id(src_fn)) if src_fn is not None else None
        if src is None:  # an output that is itself a leaf (e.g. the input returned unchanged)
            src = next((node_id[k] for k, v in leaf_var.items() if v is t), None)
        d = (depth.get(id(src_fn), 0) + 1) if src_fn is not None else 1
        nodes.append(Node(oid, OUTPUT, label, shape=tuple(t.shape), depth=d))
        if src is not None:
            edges.append(Edge(src, oid))

    edges = _mark_skips(nodes, edges, node_id, [split for c in calls for split in c.get("splits", [])])
    graph = Graph(
        nodes=nodes,
        edges=edges,
        calls=[Call(c["key"], c["module"], c["type"], c["parent"], c["params"]) for c in calls],
        view="autograd",
        title=type(model).__name__,
    )
    if probe and out_tensors:
        values = _probe(model, out_tensors)
        if values:
            graph = graph.with_values(values, "grad_norm", "grad_norm of one backward pass of sum(output)")
    del recorder
    return graph


def _probe(model: nn.Module, outputs: list[torch.Tensor]) -> dict[str, float]:
    """Gradient norms per parameter and per layer for ``sum(outputs).backward()``."""
    owner = param_layers(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    outs = [t for t in outputs if t.is_floating_point() and t.grad_fn is not None]
    if not named or not outs:
        return {}
    total = sum(t.float().sum() for t in outs)
    grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    values: dict[str, float] = {}
    layer_sq: dict[str, float] = {}
    for (name, _), g in zip(named, grads):
        if g is None:
            continue
        sq = float(g.detach().float().pow(2).sum())
        values[name] = sq ** 0.5
        layer = owner[name]
        layer_sq[layer] = layer_sq.get(layer, 0.0) + sq
    values.update({k: v ** 0.5 for k, v in layer_sq.items()})
    return values


def _addition_calls(calls: list[dict[str, Any]], innermost: dict[int, tuple[int, str]]) -> list[dict[str, Any]]:
    """``calls`` plus, after each call that owns several additions, one child call per addition
    (``<key>[<branch>]``, ``branch`` the call's child the branch runs through, else the
    addition's index); each addition node is given to its child call."""
    out = []
    parent_of = {c["key"]: c["parent"] for c in calls}

    def child_of(key: str | None, ancestor: str) -> str | None:
        while key is not None and parent_of.get(key) != ancestor:
            key = parent_of.get(key)
        return key

    for c in calls:
        out.append(c)
        splits = c.get("splits", [])
        if len(splits) < 2:
            continue
        labels = []
        for split in splits:
            label = None
            for fn in split.branch_nodes:
                key = innermost.get(id(fn), (0, None))[1]
                child = child_of(key, c["key"]) if key is not None and key != c["key"] else None
                if child is not None:
                    label = next(x["module"] for x in calls if x["key"] == child)
                    label = label[len(c["module"]) + 1:] if c["module"] else label
                    break
            labels.append(label)
        for i, (split, label) in enumerate(zip(splits, labels)):
            suffix = f"[{label if label is not None and labels.count(label) == 1 else i}]"
            key = c["key"] + suffix
            out.append({"key": key, "module": c["module"] + suffix, "type": c["type"], "parent": c["key"],
                        "params": 0, "start": c["start"], "end": c["end"], "splits": []})
            innermost[id(split.add_node)] = (-1, key)
    return out


def _skip_path(split: ResidualSplit) -> set[tuple[int, int]]:
    """``(id(src), id(dst))`` of the autograd edges of an addition's skip path: from the
    stream through the shortcut's operations to the addition."""
    add = split.add_node
    x_node = split.stream[0] if split.stream is not None else None
    if split.skip_node is None:  # identity: the addition takes the input itself
        return {(id(x_node), id(add))}
    pairs = {(id(split.skip_node), id(add))}
    seen, todo = {id(split.skip_node)}, [split.skip_node]
    while todo:
        fn = todo.pop()
        for child, nr in fn.next_functions:
            if child is None:
                continue
            pairs.add((id(child), id(fn)))
            if child is x_node or id(child) in seen:
                continue
            seen.add(id(child))
            todo.append(child)
    return pairs


def _mark_skips(nodes: list[Node], edges: list[Edge], node_id: dict[int, str],
                splits: list[ResidualSplit]) -> list[Edge]:
    """Mark the edges of the residual blocks' skip paths (see the module docstring); only edges
    between operations and inputs, not those from parameters."""
    data = {n.id for n in nodes if n.kind in (OP, INPUT)}
    skip: set[tuple[str, str]] = set()
    for split in splits:
        for src, dst in _skip_path(split):
            if src in node_id and dst in node_id and node_id[src] in data and node_id[dst] in data:
                skip.add((node_id[src], node_id[dst]))
    return [replace(e, skip=True) if (e.src, e.dst) in skip else e for e in edges]


def trace_inputs_for(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """A random batch of ``batch`` samples of what a registered model takes
    (:func:`gradsight.models.sample_input` of ``model.model_info``): unit-Gaussian floats, or
    token ids for a language model, on the device of the model's parameters.

    Raises:
        UnknownInputError: ``model`` was not built by the model registry, so its input is not
            known (a ``ValueError``).
    """
    from gradsight.models.info import sample_input

    return sample_input(model, batch)

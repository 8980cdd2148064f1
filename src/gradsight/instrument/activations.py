"""Activation statistics and the backward signal at module outputs and residual blocks.

For each tracked module, on a recorded step:

* forward hook on the module: statistics of its output ``h`` (shape ``[N, C, ...]``
  or ``[N, ..., C]``) per channel ``c``: ``mean_c`` and ``var_c`` over every other
  dimension, reported as ``act_mean_sq = mean_c(mean_c**2)``, ``act_var =
  mean_c(var_c)`` and ``act_rms = sqrt(mean(h**2))`` (= sqrt(act_mean_sq + act_var));
* a tensor hook on ``h`` (registered in the forward hook, so in-place operations
  later in the model are fine): ``out_grad_norm = ||dL/dh||`` over the batch,
  ``out_grad_rms`` and ``out_grad_nonfinite``.

For each residual block (see :mod:`gradsight.instrument.residual`) the gradient
reaching the block's input is split into the contribution through the skip path
``s`` and through the branch ``b`` by hooks on the graph nodes that consume the
input: ``skip_grad_norm = ||s||``, ``branch_grad_norm = ||b||``,
``skip_branch_cos = <s, b> / (||s|| ||b||)``, and ``branch_var`` = ``act_var`` of the
branch output before the addition.

Micro-batches between two recorded ``step()`` calls are combined exactly (sums of
squares add; channel moments combine with Chan's formula). Everything stays on the
device until :meth:`ActivationRecorder.collect`.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.overrides import TorchFunctionMode

from gradsight.instrument.hooks import HookRegistry
from gradsight.instrument.layers import is_adapter_wrapper, layer_modules
from gradsight.instrument.outputs import main_output
from gradsight.instrument.residual import ResidualSplit, find_residual_additions, parameterized_after
from gradsight.store.schema import RowKind, Level

ACT_STATS = ("act_rms", "act_mean_sq", "act_var", "out_grad_norm", "out_grad_rms", "out_grad_nonfinite")
BLOCK_STATS = ("skip_grad_norm", "branch_grad_norm", "skip_branch_cos", "branch_var", "act_rms")

_CHANNEL_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                  nn.GroupNorm, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                  nn.modules.pooling._AdaptiveAvgPoolNd)


def channel_dim(module: nn.Module, t: Tensor) -> int:
    """The channel dimension of a module's output: 1 for images and feature vectors,
    the last one for sequences (``[N, T, D]``) unless the module is convolution-like."""
    if t.dim() <= 2 or t.dim() >= 4:
        return 1 if t.dim() >= 2 else 0
    return 1 if isinstance(module, _CHANNEL_FIRST) else 2


def channel_moments(t: Tensor, dim: int) -> tuple[int, Tensor, Tensor]:
    """(count per channel, per-channel mean, per-channel population variance), fp32 (fp64 for fp64 input).

    One sum and one sum of squares per channel, reduced over contiguous planes (no
    transposed copy): about twenty times faster than ``var_mean`` on ``[N, C, H, W]``
    outputs. The variance is ``E[h^2] - E[h]^2``, clamped at 0; its
    rounding error is about 1e-7 of ``E[h^2]``.
    """
    t = t.detach()
    if t.dim() <= 1:
        t = t.reshape(-1, 1)
        dim = 1
    x = t if t.dtype in (torch.float32, torch.float64) else t.float()
    dim = dim % x.dim()
    channels = x.shape[dim]
    before = math.prod(x.shape[:dim])
    after = math.prod(x.shape[dim + 1 :])
    n = before * after
    if after == 1:  # channels last: reduce over rows, vectorized across channels
        rows = x.reshape(before, channels)
        total, total_sq = rows.sum(0), torch.linalg.vector_norm(rows, dim=0).square()
    else:  # channels first: reduce each contiguous channel plane, then across the batch
        planes = x.reshape(before, channels, after)
        total = planes.sum(2).sum(0)
        total_sq = torch.linalg.vector_norm(planes, dim=2).square().sum(0)
    mean = total / max(n, 1)
    var = (total_sq / max(n, 1) - mean * mean).clamp_min(0)
    return n, mean, var


@dataclass
class _ModuleAcc:
    n: int = 0
    mean: Tensor | None = None
    m2: Tensor | None = None  # sum of squared deviations per channel
    grad_sumsq: Tensor | None = None
    grad_nonfinite: Tensor | None = None
    grad_numel: int = 0

    def add_moments(self, n: int, mean: Tensor, var: Tensor) -> None:
        if self.mean is None or self.mean.shape != mean.shape:
            self.n, self.mean, self.m2 = n, mean, var * n
            return
        total = self.n + n
        delta = mean - self.mean
        self.m2 = self.m2 + var * n + delta * delta * (self.n * n / total)
        self.mean = self.mean + delta * (n / total)
        self.n = total

    def add_grad(self, g: Tensor) -> None:
        g = g.detach()
        sumsq = torch.linalg.vector_norm(g, dtype=torch.float64 if g.dtype == torch.float64 else torch.float32).square()
        if g.device.type == "cpu" and bool(torch.isfinite(sumsq)):
            # a finite sum of squares means no NaN/Inf: skip the counting pass (free check on the CPU;
            # on an accelerator it would cost a host sync per module, so the count is always taken there)
            nonfinite = torch.zeros((), dtype=torch.float32)
        else:
            nonfinite = (~torch.isfinite(g)).sum().float()
        if self.grad_sumsq is None:
            self.grad_sumsq, self.grad_nonfinite = sumsq, nonfinite
        else:
            self.grad_sumsq = self.grad_sumsq + sumsq
            self.grad_nonfinite = self.grad_nonfinite + nonfinite
        self.grad_numel += g.numel()


@dataclass
class _BlockAcc:
    skip_sumsq: Tensor | None = None
    branch_sumsq: Tensor | None = None
    dot: Tensor | None = None
    stream: _ModuleAcc = field(default_factory=_ModuleAcc)  # the skip operand before the addition
    branch: _ModuleAcc = field(default_factory=_ModuleAcc)  # the branch operand before the addition

    def add(self, name: str, value: Tensor) -> None:
        cur = getattr(self, name)
        setattr(self, name, value if cur is None else cur + value)


_ADD_FUNCS = {torch.add, Tensor.add, Tensor.add_, Tensor.__add__, Tensor.__iadd__}
_NO_MODULE = nn.Module()


def _moments(t: Tensor) -> tuple[int, Tensor, Tensor]:
    return channel_moments(t, channel_dim(_NO_MODULE, t))


class _AddOperands(TorchFunctionMode):
    """While active: for every addition of two tensors that require grad, the operands' channel moments.

    ``operands(node)`` gives ``[(n, mean, var)] * 2`` for the addition whose autograd
    node is ``node``, in the node's input order. In-place additions are measured before
    they run; out-of-place ones only when asked for.
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[int, tuple[object, list]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func in _ADD_FUNCS and len(args) >= 2 and not kwargs.get("alpha")
                and all(isinstance(a, Tensor) and a.is_floating_point() and a.requires_grad for a in args[:2])
                and torch.is_grad_enabled()):
            inplace = func in (Tensor.add_, Tensor.__iadd__)
            pre = [_moments(a) if inplace else a.detach() for a in args[:2]]
            out = func(*args, **kwargs)
            if isinstance(out, Tensor) and out.grad_fn is not None:
                self._seen[id(out.grad_fn)] = (out.grad_fn, pre)
            return out
        return func(*args, **kwargs)

    def operands(self, node: object) -> list | None:
        entry = self._seen.get(id(node))
        if entry is None or entry[0] is not node:
            return None
        ops = entry[1]
        entry[1][:] = [_moments(o) if isinstance(o, Tensor) else o for o in ops]
        return ops

    def clear(self) -> None:
        self._seen.clear()


def block_owner(row: str) -> str:
    """The module that owns a block row: ``transformer.h.0`` for ``transformer.h.0[attn]``."""
    return row[: row.index("[")] if row.endswith("]") and "[" in row else row


def _in_backward() -> bool:
    """True while autograd runs a backward pass (a checkpointed forward being recomputed)."""
    return torch._C._current_graph_task_id() != -1


class _PathJoin:
    """Sums the contributions of one forward's consumers per path, then reduces."""

    def __init__(self, acc: _BlockAcc, counts: tuple[int, int]) -> None:
        self.acc = acc
        self.remaining = list(counts)
        self.partial: list[Tensor | None] = [None, None]
        self.done: list[Tensor | None] = [None, None]

    def add(self, path: int, grad: Tensor | None) -> None:
        if grad is not None:
            g = grad.detach()
            self.partial[path] = g if self.partial[path] is None else self.partial[path] + g
        self.remaining[path] -= 1
        if self.remaining[path] == 0 and self.partial[path] is not None:
            full = self.partial[path]
            full = (full if full.dtype == torch.float64 else full.float()).reshape(-1)
            self.partial[path] = None
            self.acc.add("skip_sumsq" if path == 0 else "branch_sumsq", torch.linalg.vector_norm(full).square())
            other = self.done[1 - path]
            if other is not None:
                self.acc.add("dot", torch.dot(full, other))
                self.done[1 - path] = None
            else:
                self.done[path] = full


class ActivationRecorder:
    """Hooks that measure activations and the backward signal of chosen modules.

    Args:
        model: the model.
        select: ``True`` for the default choice (every module that is a layer by
            itself, :func:`~gradsight.instrument.layers.layer_modules`, and every
            residual block), or fnmatch patterns of module names.
        residual_blocks: names of modules expected to own residual additions
            (every module is looked into anyway); a warning names those that own
            none after the first recorded forward.
        hooks: the registry that owns every handle.
        is_active: called in a forward hook; True when this forward belongs to a
            recorded step.

    Block rows (level ``block``) are residual additions (see
    :mod:`gradsight.instrument.residual`), each owned by the innermost module whose
    forward holds it: a module with one addition gives one row named after the
    module, a module with several one row per addition in forward order, named
    ``module[branch]`` (``branch`` the module's child that the branch runs through
    last) or ``module[i]`` when no child tells them apart.
    """

    TAG = "activations"
    ITER_TAG = "activations-iteration"

    def __init__(
        self,
        model: nn.Module,
        select: bool | str | Sequence[str],
        residual_blocks: Sequence[str] | None,
        hooks: HookRegistry,
        is_active: Callable[[], bool],
    ) -> None:
        self.model = model
        self.hooks = hooks
        self.is_active = is_active
        modules = dict(model.named_modules())
        self.marked = set(residual_blocks or ())
        unknown = self.marked - set(modules)
        if unknown:
            raise ValueError(f"residual_blocks names not in the model: {sorted(unknown)}")
        if select is True:
            patterns = None
        else:
            patterns = [select] if isinstance(select, str) else list(select)
        self.patterns = patterns

        if patterns is None:
            self.tracked = layer_modules(model)
        else:
            self.tracked = [n for n in modules if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        self._tracked_set = set(self.tracked)
        # modules that may own residual additions: all of them, until the first recorded forward shows which do
        self.candidates = list(modules)
        self.blocks: list[str] = []  #: block rows, additions in forward order
        self._block_order: dict[str, int] = {}  # row -> autograd sequence number of its addition
        self.owners: dict[str, list[str]] = {}  #: owner module -> its block rows, additions in forward order
        self.blocks_known = False
        self.types = {n: type(m).__name__ for n, m in modules.items()}
        self.acc: dict[str, _ModuleAcc] = {}
        self.block_acc: dict[str, _BlockAcc] = {}
        self._inputs: dict[str, list] = {}
        self._claimed: dict[int, object] = {}  # id(addition node) -> node, given to an owner this step
        self._made_by: dict[int, tuple[object, list[str]]] = {}  # discovery: id(grad_fn) -> modules that output it
        self._operands = _AddOperands()
        self._mode_depth = 0
        #: block rows whose addition lies inside another row's branch (discovery)
        self.nested: set[str] = set()
        self._row_of_add: dict[int, str] = {}
        #: called as ``on_addition(row, split)`` for every addition of a known row instead of measuring it
        self.on_addition: Callable[[str, ResidualSplit], None] | None = None
        #: calls of each owner since the last :meth:`reset` (calls that build a graph)
        self.owner_calls: dict[str, int] = {}
        self._forward_seen = False
        for name in self.tracked:
            hooks.attach(modules[name], "register_forward_hook", self._make_forward(name), self.TAG)
        self._hook_blocks(self.candidates)
        for name, mod in modules.items():
            hooks.attach(mod, "register_forward_hook", self._make_discovery(name), self.TAG + "-discovery")

    def _measuring(self) -> bool:
        return (self.is_active() and torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and not _in_backward())

    # -- leaf/module statistics ---------------------------------------------------
    def _make_forward(self, name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if not self._measuring():
                return
            t = main_output(output)
            if t is not None:
                self._observe(name, module, t)

        return hook

    def _observe(self, name: str, module: nn.Module, t: Tensor) -> None:
        acc = self.acc.setdefault(name, _ModuleAcc())
        n, mean, var = channel_moments(t, channel_dim(module, t))
        acc.add_moments(n, mean, var)
        if t.requires_grad:
            self.hooks.add(t.register_hook(acc.add_grad), self.ITER_TAG)

    # -- residual additions ---------------------------------------------------------
    def _hook_blocks(self, names: Sequence[str]) -> None:
        modules = dict(self.model.named_modules())
        for name in names:
            mod = modules[name]
            self.hooks.attach(mod, "register_forward_pre_hook", self._make_block_pre(name), self.TAG + "-blocks",
                              with_kwargs=True)
            self.hooks.attach(mod, "register_forward_hook", self._make_block_post(name), self.TAG + "-blocks",
                              always_call=True)

    def _make_discovery(self, name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if self.blocks_known or not self._measuring():
                return
            t = main_output(output)
            if t is not None and t.grad_fn is not None:
                self._made_by.setdefault(id(t.grad_fn), (t.grad_fn, []))[1].append(name)

        return hook

    def _make_block_pre(self, name: str):
        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            stack = self._inputs.setdefault(name, [])
            if not self._measuring():
                stack.append(None)
                return
            stops = []
            for t in _tensors((args, kwargs)):
                if t.requires_grad:
                    try:
                        stops.append(get_gradient_edge(t).node)
                    except RuntimeError:
                        pass
            stack.append(stops)
            self._forward_seen = True
            self.owner_calls[name] = self.owner_calls.get(name, 0) + 1
            if self._mode_depth == 0:
                self._operands.__enter__()
            self._mode_depth += 1

        return pre

    def _make_block_post(self, name: str):
        def post(module: nn.Module, args: tuple, output: object) -> None:
            stack = self._inputs.get(name)
            if not stack:
                return
            stops = stack.pop()
            if stops is None:
                return
            self._mode_depth -= 1
            try:
                y = main_output(output)
                if y is not None and y.grad_fn is not None:
                    self._found(name, module, y, stops)
            finally:
                if self._mode_depth == 0:
                    self._operands.__exit__(None, None, None)

        return post

    def _found(self, name: str, module: nn.Module, y: Tensor, stops: list) -> None:
        splits = find_residual_additions(y.grad_fn, stops, skip=set(self._claimed))
        if module is self.model:
            splits = [split for split in splits if not parameterized_after(y.grad_fn, split.add_node)]
        for split in splits:
            self._claimed[id(split.add_node)] = split.add_node
        if not splits or is_adapter_wrapper(module):  # an adapter's update onto its layer is no residual block
            return
        if not self.blocks_known and name not in self.owners:
            rows = self._row_names(name, splits)
            for row, split in zip(rows, splits):
                inner = {id(n) for n in split.branch_nodes} & set(self._row_of_add)
                self.nested.update(self._row_of_add[i] for i in inner)
                self._row_of_add[id(split.add_node)] = row
            self.owners[name] = rows
            for row, split in zip(rows, splits):
                self._block_order[row] = split.add_node._sequence_nr()
            self.blocks = sorted(self.blocks + rows, key=self._block_order.__getitem__)
            for row in rows:
                self.types[row] = type(module).__name__
        rows = self.owners.get(name, [])
        for row, split in zip(rows, splits):
            if self.on_addition is not None:
                self.on_addition(row, split)
            else:
                self._attach(row, split)
        if rows == [name] and name not in self._tracked_set and self.patterns is None:
            self._observe(name, module, y)

    def _row_names(self, owner: str, splits: list[ResidualSplit]) -> list[str]:
        """``[owner]`` for one addition; ``owner[branch]`` (or ``owner[i]``) for several."""
        if len(splits) == 1:
            return [owner]
        prefix = f"{owner}." if owner else ""
        labels: list[str | None] = []
        for split in splits:
            label = None
            for node in split.branch_nodes:
                entry = self._made_by.get(id(node))
                if entry is None or entry[0] is not node:
                    continue
                children = {m[len(prefix):].split(".")[0] for m in entry[1] if m.startswith(prefix) and m != owner}
                if children:
                    label = children.pop() if len(children) == 1 else None
                    break
            labels.append(label)
        return [f"{owner}[{label if label is not None and labels.count(label) == 1 else i}]"
                for i, label in enumerate(labels)]

    def _attach(self, row: str, split: ResidualSplit) -> None:
        acc = self.block_acc.setdefault(row, _BlockAcc())
        operands = self._operands.operands(split.add_node)
        if operands is not None:
            acc.stream.add_moments(*operands[split.skip_index])
            acc.branch.add_moments(*operands[1 - split.skip_index])
        join = _PathJoin(acc, (len(split.consumers[0]), len(split.consumers[1])))
        for path, consumers in enumerate(split.consumers):
            for node, index in consumers:
                def node_hook(grad_inputs, grad_outputs, path=path, index=index):
                    join.add(path, grad_inputs[index])

                self.hooks.add(node.register_hook(node_hook), self.ITER_TAG)

    def finish_discovery(self) -> None:
        """After the first recorded forward: keep hooks only on modules that own additions."""
        if self.blocks_known:
            return
        self.blocks_known = True
        self.hooks.remove(self.TAG + "-discovery")
        self.hooks.remove(self.TAG + "-blocks")
        self._made_by.clear()
        self._row_of_add.clear()
        missing = sorted(self.marked - set(self.owners))
        if missing:
            warnings.warn(f"no residual addition found in {missing}", stacklevel=2)
        self._hook_blocks([n for n in self.candidates if n in self.owners])

    # -- collection -------------------------------------------------------------------
    def collect(self, inv_scale: Tensor | None = None) -> tuple[list[tuple[str, str, str]], list[Tensor]]:
        """Rows gathered since the last call: ``(level, name, stat)`` keys and 0-d device tensors.

        Levels: ``module`` for :data:`ACT_STATS`, ``block`` for :data:`BLOCK_STATS`.
        Resets the accumulators and drops this step's graph hooks.
        """
        if self._forward_seen or self.acc:
            self.finish_discovery()
        keys: list[tuple[str, str, str]] = []
        values: list[Tensor] = []
        for name in self.tracked + [b for b in self.blocks if b not in self._tracked_set]:
            acc = self.acc.get(name)
            if acc is None or acc.mean is None:
                continue
            mean_sq = acc.mean.square().mean()
            var = (acc.m2 / max(acc.n, 1)).mean()
            keys += [(Level.MODULE, name, "act_rms"), (Level.MODULE, name, "act_mean_sq"), (Level.MODULE, name, "act_var")]
            values += [(mean_sq + var).sqrt(), mean_sq, var]
            if acc.grad_sumsq is not None:
                sumsq = acc.grad_sumsq if inv_scale is None else acc.grad_sumsq * inv_scale * inv_scale
                keys += [(Level.MODULE, name, "out_grad_norm"), (Level.MODULE, name, "out_grad_rms"),
                         (Level.MODULE, name, "out_grad_nonfinite")]
                values += [sumsq.sqrt(), (sumsq / max(acc.grad_numel, 1)).sqrt(), acc.grad_nonfinite]
        for name in self.blocks:
            acc = self.block_acc.get(name)
            if acc is None:
                continue
            scale2 = None if inv_scale is None else inv_scale * inv_scale
            if acc.skip_sumsq is not None and acc.branch_sumsq is not None:
                s = acc.skip_sumsq if scale2 is None else acc.skip_sumsq * scale2
                b = acc.branch_sumsq if scale2 is None else acc.branch_sumsq * scale2
                keys += [(Level.BLOCK, name, "skip_grad_norm"), (Level.BLOCK, name, "branch_grad_norm")]
                values += [s.sqrt(), b.sqrt()]
                if acc.dot is not None:
                    d = acc.dot if scale2 is None else acc.dot * scale2
                    keys.append((Level.BLOCK, name, "skip_branch_cos"))
                    values.append(d / (s.sqrt() * b.sqrt()))
            if acc.branch.mean is not None:
                keys.append((Level.BLOCK, name, "branch_var"))
                values.append((acc.branch.m2 / max(acc.branch.n, 1)).mean())
            if acc.stream.mean is not None:
                keys.append((Level.BLOCK, name, "act_rms"))
                values.append((acc.stream.mean.square().mean() + (acc.stream.m2 / max(acc.stream.n, 1)).mean()).sqrt())
        self.reset()
        return keys, values

    def reset(self) -> None:
        self.acc.clear()
        self.block_acc.clear()
        self._inputs.clear()
        self._claimed.clear()
        self._operands.clear()
        self.owner_calls.clear()
        self.hooks.remove(self.ITER_TAG)

    def module_kinds(self) -> dict[str, str]:
        """Name -> 'block' for block rows, 'module' for other tracked modules."""
        kinds = {n: RowKind.MODULE for n in self.tracked}
        kinds.update({n: RowKind.BLOCK for n in self.blocks})
        return kinds


def _tensors(obj: object) -> list[Tensor]:
    """Every floating-point tensor in nested tuples, lists and dicts."""
    if isinstance(obj, Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return []

"""Activation statistics and the backward signal at module outputs and residual blocks.

For each tracked module, on a recorded step:

* forward hook on the module: statistics of its output ``h`` (shape ``[N, C, ...]``
  or ``[N, ..., C]``) per channel ``c``: ``mean_c`` and ``var_c`` over every other
  dimension, reported as ``act_mean_sq = mean_c(mean_c**2)``, ``act_var =
  mean_c(var_c)`` and ``act_rms = sqrt(mean(h**2))`` (= sqrt(act_mean_sq + act_var));
* a tensor hook on ``h`` (registered in the forward hook, so in-place operations
  later in the model are fine): ``out_grad_norm = ||dL/dh||`` over the batch,
  ``out_grad_rms`` and ``out_grad_nonfinite``.

For each bounded activation module (``nn.Tanh``, ``nn.Sigmoid``, ``nn.Softsign``,
``nn.Hardtanh`` other than ``ReLU6``, ``nn.Hardsigmoid``) that takes a tracked layer's
output as it is: ``act_saturated``, the fraction of its outputs where its slope is below
:data:`SATURATED_SLOPE` of its largest (``|y| > 0.99`` for tanh; exactly at a bound for the
hard ones), recorded on the row of that layer; :meth:`ActivationRecorder.saturation_links`
says which activation follows which layer and which layer it feeds (Glorot & Bengio 2010
measure saturation so).

For each residual block (see :mod:`gradsight.instrument.residual`) the gradient
reaching the block's input is split into the contribution through the skip path
``s`` and through the branch ``b`` by hooks on the graph nodes that consume the
input: ``skip_grad_norm = ||s||``, ``branch_grad_norm = ||b||``,
``skip_branch_cos = <s, b> / (||s|| ||b||)``, and ``branch_var`` and ``branch_mean_sq`` =
``act_var`` and ``act_mean_sq`` of the branch output before the addition (its second moment is
their sum, as the stream's ``act_rms`` squared is).

Micro-batches between two recorded ``step()`` calls are combined exactly (sums of
squares add; channel moments combine with Chan's formula). Everything stays on the
device until :meth:`ActivationRecorder.collect`.

Which passes count (:class:`BackwardPasses`): the gradients are those of the backward
passes that gave the parameters the ``.grad`` that ``monitor.step()`` records, that is
passes that accumulate into ``.grad`` (``loss.backward()``), after the last reset of
``.grad`` (``zero_grad``). A ``torch.autograd.grad`` pass (a gradient penalty, a MAML
inner step) and a pass whose gradients were reset before the step (a GAN generator's
step through the watched discriminator) are left out, and so are the forward passes
that only such passes reached. Forwards run under a ``torch.func`` transform and
compiled forwards are not measured (a warning says so once); a forward that reentrant
checkpointing re-runs during backward is.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial, wraps

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.overrides import TorchFunctionMode

from gradsight.instrument.distributed import local_shard
from gradsight.instrument.hooks import HookRegistry
from gradsight.instrument.layers import is_adapter_wrapper, layer_modules
from gradsight.instrument.outputs import main_output
from gradsight.instrument.residual import (ResidualSplit, additions_within, find_residual_additions, is_recurrent,
                                           is_reentrant_checkpoint, parameterized_after)
from gradsight.store.schema import RowKind, Level

ACT_STATS = ("act_rms", "act_mean_sq", "act_var", "out_grad_norm", "out_grad_rms", "out_grad_nonfinite")
BLOCK_STATS = ("skip_grad_norm", "branch_grad_norm", "skip_branch_cos", "branch_var", "branch_mean_sq", "act_rms")
#: A bounded activation's output counts as saturated where its slope is below this share of
#: its largest slope: ``1 - y**2 < 0.02`` for tanh (``|y| > 0.98995``), ``4 y (1 - y) < 0.02``
#: for a sigmoid; the hard ones have slope 0 exactly at their bounds.
SATURATED_SLOPE = 0.02


def saturation_band(module: nn.Module) -> tuple[float, float] | None:
    """``(center, radius)``: the module's output ``y`` is saturated where ``|y - center| >=
    radius``; None for a module that is not a bounded activation (``ReLU6``'s lower bound is a
    ReLU's zero, which ``dead_units`` judges, so it is not one either)."""
    s = SATURATED_SLOPE
    if isinstance(module, nn.Tanh):
        return 0.0, math.sqrt(1 - s)  # slope 1 - y^2
    if isinstance(module, nn.Sigmoid):
        return 0.5, math.sqrt(1 - s) / 2  # slope y (1 - y) = (1 - (2y - 1)^2) / 4
    if isinstance(module, nn.Softsign):
        return 0.0, 1 - math.sqrt(s)  # slope (1 - |y|)^2
    if isinstance(module, nn.Hardsigmoid):
        return 0.5, 0.5
    if isinstance(module, nn.Hardtanh) and module.min_val < 0 < module.max_val:
        return (module.max_val + module.min_val) / 2, (module.max_val - module.min_val) / 2
    return None


def saturated_count(y: Tensor, band: tuple[float, float]) -> Tensor:
    """How many elements of ``y`` lie in the saturated band (a 0-d int64 tensor on y's device)."""
    center, radius = band
    y = y.detach()
    return ((y - center).abs() if center else y.abs()).ge(radius).sum()

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


class _Forward:
    """One call of the watched model (or one module call outside such a call): whether an output
    measured in it requires grad, and the backward passes (graph task ids) its gradient reached."""

    __slots__ = ("needs_grad", "tasks")

    def __init__(self) -> None:
        self.needs_grad = False
        self.tasks: set[int] = set()


class _Moments:
    """Channel moments of the forwards of one step, combined (Chan's formula) over those kept."""

    def __init__(self) -> None:
        self.parts: list[tuple[_Forward, int, Tensor, Tensor]] = []

    def add(self, forward: _Forward, n: int, mean: Tensor, var: Tensor) -> None:
        self.parts.append((forward, n, mean, var))

    def combined(self, keep: Callable[[_Forward], bool]) -> tuple[int, Tensor, Tensor] | None:
        """(count, per-channel mean, per-channel population variance) of the kept forwards;
        a forward whose channel count differs from the ones before starts over."""
        n, mean, m2 = 0, None, None
        for forward, k, mu, var in self.parts:
            if not keep(forward):
                continue
            if mean is None or mean.shape != mu.shape:
                n, mean, m2 = k, mu, var * k
                continue
            total = n + k
            delta = mu - mean
            m2 = m2 + var * k + delta * delta * (n * k / total)
            mean = mean + delta * (k / total)
            n = total
        return None if mean is None else (n, mean, m2 / max(n, 1))


@dataclass
class _GradSum:
    sumsq: Tensor
    nonfinite: Tensor
    numel: int


@dataclass
class _ModuleAcc:
    moments: _Moments = field(default_factory=_Moments)
    grads: dict[int, _GradSum] = field(default_factory=dict)  # backward pass -> sums of dL/dh

    def add_grad(self, task: int, g: Tensor) -> None:
        g = g.detach()
        sumsq = torch.linalg.vector_norm(g, dtype=torch.float64 if g.dtype == torch.float64 else torch.float32).square()
        if g.device.type == "cpu" and bool(torch.isfinite(sumsq)):
            # a finite sum of squares means no NaN/Inf: skip the counting pass (free check on the CPU;
            # on an accelerator it would cost a host sync per module, so the count is always taken there)
            nonfinite = torch.zeros((), dtype=torch.float32)
        else:
            nonfinite = (~torch.isfinite(g)).sum().float()
        acc = self.grads.get(task)
        if acc is None:
            self.grads[task] = _GradSum(sumsq, nonfinite, g.numel())
        else:
            acc.sumsq = acc.sumsq + sumsq
            acc.nonfinite = acc.nonfinite + nonfinite
            acc.numel += g.numel()


@dataclass
class _BlockAcc:
    sums: dict[int, dict[str, Tensor]] = field(default_factory=dict)  # backward pass -> skip_sumsq, branch_sumsq, dot
    stream: _Moments = field(default_factory=_Moments)  # the skip operand before the addition
    branch: _Moments = field(default_factory=_Moments)  # the branch operand before the addition

    def add(self, task: int, name: str, value: Tensor) -> None:
        sums = self.sums.setdefault(task, {})
        cur = sums.get(name)
        sums[name] = value if cur is None else cur + value

    def total(self, name: str, tasks: Iterable[int]) -> Tensor | None:
        parts = [self.sums[t][name] for t in tasks if name in self.sums[t]]
        return None if not parts else sum(parts[1:], parts[0])


def _graph_task() -> int:
    """Id of the autograd graph task (one backward pass) running now; -1 outside backward."""
    return torch._C._current_graph_task_id()


def _in_backward() -> bool:
    """True while autograd runs a backward pass (a checkpointed forward being recomputed)."""
    return _graph_task() != -1


def _reentrant_recompute() -> bool:
    """True while reentrant checkpointing (``use_reentrant=True``, torch's or Hugging Face's)
    re-runs a forward inside the backward of its ``CheckpointFunction``."""
    return is_reentrant_checkpoint(torch._C._current_autograd_node())


def _forward_position(add: object) -> tuple[int, int]:
    """Where an addition ran in the forward: its node's autograd sequence number, or, found while
    reentrant checkpointing re-runs a forward during backward (blocks in reverse order), the
    checkpoint's, then its own."""
    if _reentrant_recompute():
        return torch._C._current_autograd_node()._sequence_nr(), add._sequence_nr()
    return add._sequence_nr(), -1


def _under_transform() -> bool:
    """True inside a ``torch.func`` transform (``vmap``, ``grad``, ``jacrev``, ...)."""
    return torch._C._functorch.peek_interpreter_stack() is not None


@dataclass
class _LeftInGrad:
    """What one backward pass left in a parameter's ``.grad``."""

    task: int
    grad: weakref.ref
    version: int


class BackwardPasses:
    """Which backward passes since the last step gave the parameters their ``.grad``.

    A pass (an autograd graph task) counts when it accumulated into the ``.grad`` of a
    parameter of the model (``loss.backward()``; not ``torch.autograd.grad``, whose
    gradients a gradient penalty or a MAML inner step uses and ``monitor.step()`` never
    sees) and ``.grad`` was not reset after it: when a later pass finds a parameter's
    ``.grad`` set to None, replaced, or changed and all zero (``zero_grad``) since the
    pass before it left it, every pass up to that one is dropped (a GAN generator's step
    through the watched discriminator, before the discriminator's own step). Told by hooks
    on the trainable parameters, armed for a recorded step (:meth:`arm`) and removed by
    :meth:`reset`: a post-accumulate-grad hook marks the pass, a hook before accumulation
    compares ``.grad`` with what the previous pass left. Changed but not zero (an all-reduce,
    clipping) is no reset; telling the two apart costs one host sync, at most once per pass.
    With no trainable parameter to hook, every pass counts (:attr:`pooled`).
    """

    TAG = "activations-passes"

    def __init__(self, model: nn.Module, hooks: HookRegistry) -> None:
        self._params = list(model.parameters())
        self._hooks = hooks
        self._hooked: set[int] = set()
        self._unhookable: set[int] = set()
        self._accumulated: set[int] = set()
        self._left: dict[int, _LeftInGrad] = {}  # id(param) -> what the last pass left in its .grad
        self._checked: set[int] = set()  # passes that took the host sync already
        self._reset_upto = -1  # passes up to this one were reset
        self.armed = False

    @property
    def pooled(self) -> bool:
        """True when no parameter tells passes apart (a frozen model): every pass counts."""
        return not self._hooked

    def arm(self) -> None:
        """Hook every trainable parameter not hooked yet in this step (at each call of the model:
        one may be unfrozen between two calls, as a GAN's discriminator is)."""
        self.armed = True
        with torch._C.DisableTorchFunction():  # a TorchFunctionMode (the forward order's) would see a use
            for p in self._params:
                if p.requires_grad and id(p) not in self._hooked and id(p) not in self._unhookable:
                    try:
                        after = p.register_post_accumulate_grad_hook(self._accumulated_into)
                    except RuntimeError:  # not a leaf (a view that a wrapper made a parameter): cannot tell
                        self._unhookable.add(id(p))
                        continue
                    self._hooked.add(id(p))
                    self._hooks.add(after, self.TAG)
                    self._hooks.add(p.register_hook(partial(self._before, weakref.ref(p))), self.TAG)

    def mark(self, task: int) -> None:
        """Count the pass ``task`` as one that accumulates into ``.grad`` (reentrant checkpointing
        runs only under one)."""
        self._accumulated.add(task)

    def counts(self, task: int) -> bool:
        return self.pooled or (task in self._accumulated and task > self._reset_upto)

    def _before(self, ref: weakref.ref, grad: Tensor) -> None:
        p = ref()
        if p is None or _under_transform():
            return
        task = _graph_task()
        left = self._left.get(id(p))
        if left is None or left.task == task:
            return
        g = p.grad
        if g is None or g is not left.grad():
            self._reset_upto = max(self._reset_upto, left.task)
        elif g._version != left.version and task not in self._checked:
            self._checked.add(task)
            local = local_shard(g)  # (no collective)
            if not bool((local._values() if local.is_sparse else local).any()):  # zero_grad(set_to_none=False)
                self._reset_upto = max(self._reset_upto, left.task)

    def _accumulated_into(self, p: Tensor) -> None:
        if _under_transform():
            return
        task = _graph_task()
        self._accumulated.add(task)
        if p.grad is not None:
            self._left[id(p)] = _LeftInGrad(task, weakref.ref(p.grad), p.grad._version)

    def reset(self) -> None:
        """Forget the passes and remove the parameter hooks (at every step)."""
        self._hooks.remove(self.TAG)
        self._hooked.clear()
        self._accumulated.clear()
        self._left.clear()
        self._checked.clear()
        self._reset_upto = -1
        self.armed = False


_COMPILED = ("its modules get no module or block rows (parameter, layer and model statistics are recorded "
             "as usual); train the uncompiled model for module and block rows")

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


class _PathJoin:
    """Sums the contributions of one forward's consumers per path, then reduces (per backward pass)."""

    def __init__(self, acc: _BlockAcc, counts: tuple[int, int], forward: _Forward, task: int | None) -> None:
        self.acc = acc
        self.counts = counts
        self.forward = forward
        self.task = task  # the pass to count in, when fixed (a reentrant recompute); else the running one
        self.state: dict[int, tuple[list[int], list[Tensor | None], list[Tensor | None]]] = {}

    def add(self, path: int, grad: Tensor | None) -> None:
        if _under_transform():
            return
        task = self.task if self.task is not None else _graph_task()
        self.forward.tasks.add(task)
        if task not in self.state:
            self.state[task] = (list(self.counts), [None, None], [None, None])
        remaining, partial, done = self.state[task]
        if grad is not None:
            g = grad.detach()
            partial[path] = g if partial[path] is None else partial[path] + g
        remaining[path] -= 1
        if remaining[path] == 0 and partial[path] is not None:
            full = partial[path]
            full = (full if full.dtype == torch.float64 else full.float()).reshape(-1)
            partial[path] = None
            self.acc.add(task, "skip_sumsq" if path == 0 else "branch_sumsq", torch.linalg.vector_norm(full).square())
            other = done[1 - path]
            if other is not None:
                self.acc.add(task, "dot", torch.dot(full, other))
                done[1 - path] = None
            else:
                done[path] = full


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
        self._block_order: dict[str, tuple[int, int]] = {}  # row -> _forward_position of its addition
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
        #: bounded activations (:func:`saturation_band`); per layer before one, this step's saturated counts
        self.bounded = {n: band for n, m in modules.items() if (band := saturation_band(m)) is not None}
        self._saturated: dict[str, list[tuple[_Forward, Tensor, int]]] = {}
        self._links: dict[str, dict[str, str | None]] = {}  # layer -> the activation after it, its type, what it feeds
        # this step's outputs, by identity (weak: an output autograd does not keep is not kept alive):
        self._produced: dict[int, tuple[weakref.ref, str]] = {}  # id(output) -> (output, tracked layer)
        self._bounded_out: dict[int, tuple[weakref.ref, str]] = {}  # id(activation output) -> (it, layer before)
        self.passes = BackwardPasses(model, hooks)  #: which backward passes the gradients come from
        self._call: _Forward | None = None  # the model call running now (recorded steps)
        self._call_depth = 0
        self._eager_calls = 0  # forwards run outside torch.compile since the last collect
        self._warned: set[str] = set()
        hooks.attach(model, "register_forward_pre_hook", self._call_start, self.TAG)
        hooks.attach(model, "register_forward_hook", self._call_end, self.TAG, always_call=True)
        for name in self.tracked:
            hooks.attach(modules[name], "register_forward_hook", self._make_forward(name), self.TAG)
        for name in self.bounded:
            hooks.attach(modules[name], "register_forward_hook", self._make_bounded(name), self.TAG)
        self._hook_blocks(self.candidates)
        for name, mod in modules.items():
            hooks.attach(mod, "register_forward_hook", self._make_discovery(name), self.TAG + "-discovery")
        compiled = [n for n, m in modules.items()
                    if type(m).__name__ == "OptimizedModule" or getattr(m, "_compiled_call_impl", None) is not None]
        if compiled:
            shown = ", ".join(repr(n) if n else "the model" for n in compiled[:5])
            self._warn_once("compiled", f"activations=True: {shown} is compiled with torch.compile; a compiled "
                            f"forward runs without gradsight's forward hooks, so {_COMPILED}", stacklevel=5)

    def _warn_once(self, key: str, message: str, stacklevel: int = 2) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=stacklevel + 1)

    def _measuring(self) -> bool:
        """Whether a forward running now belongs to a recorded step and can be measured.

        ``is_compiling()`` is asked first, so that dynamo reads (and guards on) none of the
        monitor's state. A forward re-run by non-reentrant checkpointing during backward is
        not measured again; one re-run by reentrant checkpointing is (it first ran without
        grad)."""
        if torch.compiler.is_compiling() or not torch.is_grad_enabled() or not self.is_active():
            return False
        if _under_transform():
            self._warn_once("transform", "activations=True: forwards and backward passes run under a torch.func "
                            "transform (vmap, grad, jacrev, ...) are not measured; module and block rows leave "
                            "them out", stacklevel=4)
            return False
        return not _in_backward() or _reentrant_recompute()

    def _call_start(self, module: nn.Module, args: tuple) -> None:
        if torch.compiler.is_compiling():
            return
        self._eager_calls += 1
        self._call_depth += 1
        if self._call_depth == 1 and self._measuring():
            self._call = _Forward()
            self.passes.arm()

    def _call_end(self, module: nn.Module, args: tuple, output: object) -> None:
        if torch.compiler.is_compiling():
            return
        self._call_depth = max(self._call_depth - 1, 0)
        if self._call_depth == 0:
            self._call = None

    def _context(self) -> tuple[_Forward, int | None]:
        """The model call a measurement belongs to, and the backward pass its gradient counts in
        when that is fixed: during a reentrant recompute, the pass that runs it (whose nested
        backward computes the block's gradients)."""
        forward = self._call
        if forward is None:  # a module run outside a call of the model (a reentrant recompute)
            forward = _Forward()
            if not self.passes.armed:
                self.passes.arm()
        task = None
        if _in_backward():
            task = _graph_task()
            self.passes.mark(task)
        return forward, task

    # -- leaf/module statistics ---------------------------------------------------
    def _make_forward(self, name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if not self._measuring():
                return
            t = main_output(output)
            if self.bounded:
                self._link_consumer(name, args, t)
            if t is not None:
                self._observe(name, module, t)

        return hook

    # -- bounded activations ----------------------------------------------------------
    def _make_bounded(self, name: str):
        band = self.bounded[name]

        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if not self._measuring() or not isinstance(output, Tensor) or not output.is_floating_point():
                return
            x = args[0] if args and isinstance(args[0], Tensor) else None
            entry = self._produced.get(id(x)) if x is not None else None
            if entry is None or entry[0]() is not x:  # measured only on a tracked layer's own output
                return
            layer = entry[1]
            if not self.blocks_known and layer not in self._links:
                self._links[layer] = {"activation": name, "type": type(module).__name__, "feeds": None}
            link = self._links.get(layer)
            if link is None or link["activation"] != name:
                return
            if not self.blocks_known:  # (what it feeds is found on the first recorded forward only)
                self._bounded_out[id(output)] = (weakref.ref(output), layer)
            forward, _ = self._context()
            self._saturated.setdefault(layer, []).append((forward, saturated_count(output, band), output.numel()))

        return hook

    def _link_consumer(self, name: str, args: tuple, output: Tensor | None) -> None:
        """The layer ``name`` may take a bounded activation's output as it is (on the first recorded
        forward: the activation feeds it), and its own output may be one's input."""
        if not self.blocks_known:
            x = args[0] if args and isinstance(args[0], Tensor) else None
            entry = self._bounded_out.get(id(x)) if x is not None else None
            if entry is not None and entry[0]() is x and self._links[entry[1]]["feeds"] is None:
                self._links[entry[1]]["feeds"] = name
        if output is not None:
            self._produced[id(output)] = (weakref.ref(output), name)

    def saturation_links(self) -> dict[str, dict[str, str | None]]:
        """``layer -> {"activation", "type", "feeds"}`` for every tracked layer whose output a
        bounded activation takes as it is (the layer whose row holds its ``act_saturated``; an
        activation module applied after several layers is linked to each); ``feeds`` is the layer
        that takes the activation's output as it is, or None (an output activation, a gate that
        multiplies, a pooled or summed output). Found on the first recorded forward."""
        return {layer: dict(link) for layer, link in self._links.items()}

    def _observe(self, name: str, module: nn.Module, t: Tensor) -> None:
        forward, task = self._context()
        acc = self.acc.setdefault(name, _ModuleAcc())
        acc.moments.add(forward, *channel_moments(t, channel_dim(module, t)))
        if t.requires_grad:
            forward.needs_grad = True
            self.hooks.add(t.register_hook(partial(_output_grad, acc, forward, task)), self.ITER_TAG)

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
            if not self._measuring() or self.blocks_known:
                return
            t = main_output(output)
            if t is not None and t.grad_fn is not None:
                self._made_by.setdefault(id(t.grad_fn), (t.grad_fn, []))[1].append(name)

        return hook

    def _make_block_pre(self, name: str):
        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if torch.compiler.is_compiling():
                return
            stack = self._inputs.setdefault(name, [])
            if not self._measuring():
                stack.append(None)
                return
            stack.append(_stops((args, kwargs)))
            self._forward_seen = True
            self.owner_calls[name] = self.owner_calls.get(name, 0) + 1
            self._enter_operands()

        return pre

    def _enter_operands(self) -> None:
        if self._mode_depth == 0:
            self._operands.__enter__()
        self._mode_depth += 1

    def _exit_operands(self) -> None:
        self._mode_depth -= 1
        if self._mode_depth == 0:
            self._operands.__exit__(None, None, None)

    def _make_block_post(self, name: str):
        def post(module: nn.Module, args: tuple, output: object) -> None:
            if torch.compiler.is_compiling():
                return
            stack = self._inputs.get(name)
            if not stack:
                return
            stops = stack.pop()
            if stops is None:
                return
            try:
                y = main_output(output)
                if y is not None and y.grad_fn is not None:
                    if is_reentrant_checkpoint(y.grad_fn):
                        self._find_when_recomputed(name, module, y.grad_fn)
                    else:
                        self._found(name, module, y, stops)
            finally:
                self._exit_operands()

        return post

    def _find_when_recomputed(self, name: str, module: nn.Module, node: object) -> None:
        """The call's output comes straight out of reentrant checkpointing (Hugging Face's
        ``gradient_checkpointing`` runs a layer's forward, not its hooks, under it): its graph
        exists only while backward re-runs the forward, so look for the call's additions then."""
        run = getattr(node, "run_function", None)
        if run is None:
            return

        @wraps(run)
        def rerun(*args: object, **kwargs: object) -> object:
            if not self._measuring():
                return run(*args, **kwargs)
            stops = _stops((args, kwargs))
            self._enter_operands()
            try:
                out = run(*args, **kwargs)
                y = main_output(out)
                if y is not None and y.grad_fn is not None:
                    self._found(name, module, y, stops)
            finally:
                self._exit_operands()
            return out

        node.run_function = rerun

    def _found(self, name: str, module: nn.Module, y: Tensor, stops: list) -> None:
        if is_recurrent(module):  # its additions carry its state through time: claimed, no rows
            for add in additions_within(y.grad_fn, stops):
                self._claimed[id(add)] = add
            return
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
                self._block_order[row] = _forward_position(split.add_node)
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
        forward, task = self._context()
        acc = self.block_acc.setdefault(row, _BlockAcc())
        operands = self._operands.operands(split.add_node)
        if operands is not None:
            acc.stream.add(forward, *operands[split.skip_index])
            acc.branch.add(forward, *operands[1 - split.skip_index])
        forward.needs_grad = True
        join = _PathJoin(acc, (len(split.consumers[0]), len(split.consumers[1])), forward, task)
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

        Levels: ``module`` for :data:`ACT_STATS` (and ``act_saturated`` on the layers that
        :meth:`saturation_links` names), ``block`` for :data:`BLOCK_STATS`. Gradients
        count from the backward passes that :class:`BackwardPasses` keeps; forward statistics
        from the model calls whose outputs require grad and whose gradient reached none of
        those passes (a pass it drops, or none: ``G(z).detach()``) are left out.
        Resets the accumulators and drops this step's graph hooks.
        """
        if self._forward_seen or self.acc:
            self.finish_discovery()
        counts = self.passes.counts

        def kept(forward: _Forward) -> bool:
            return not forward.needs_grad or any(counts(t) for t in forward.tasks)

        heard: set[int] = set()  # passes that brought a gradient
        counted = False
        keys: list[tuple[str, str, str]] = []
        values: list[Tensor] = []
        scale2 = None if inv_scale is None else inv_scale * inv_scale
        for name in self.tracked + [b for b in self.blocks if b not in self._tracked_set]:
            acc = self.acc.get(name)
            if acc is None:
                continue
            heard.update(acc.grads)
            moments = acc.moments.combined(kept)
            if moments is None:
                continue
            _, mean, var = moments
            mean_sq, var = mean.square().mean(), var.mean()
            keys += [(Level.MODULE, name, "act_rms"), (Level.MODULE, name, "act_mean_sq"), (Level.MODULE, name, "act_var")]
            values += [(mean_sq + var).sqrt(), mean_sq, var]
            grads = [g for task, g in acc.grads.items() if counts(task)]
            if grads:
                counted = True
                sumsq = sum((g.sumsq for g in grads[1:]), grads[0].sumsq)
                sumsq = sumsq if scale2 is None else sumsq * scale2
                numel = sum(g.numel for g in grads)
                keys += [(Level.MODULE, name, "out_grad_norm"), (Level.MODULE, name, "out_grad_rms"),
                         (Level.MODULE, name, "out_grad_nonfinite")]
                values += [sumsq.sqrt(), (sumsq / max(numel, 1)).sqrt(), sum(g.nonfinite for g in grads)]
        for layer, calls in self._saturated.items():
            parts = [(count, n) for forward, count, n in calls if kept(forward)]
            if parts:
                count = sum((c for c, _ in parts[1:]), parts[0][0])
                keys.append((Level.MODULE, layer, "act_saturated"))
                values.append(count.float() / max(sum(n for _, n in parts), 1))  # (no float64: MPS has none)
        for name in self.blocks:
            acc = self.block_acc.get(name)
            if acc is None:
                continue
            heard.update(acc.sums)
            tasks = [t for t in acc.sums if counts(t)]
            s, b, d = (acc.total(stat, tasks) for stat in ("skip_sumsq", "branch_sumsq", "dot"))
            if s is not None and b is not None:
                counted = True
                s, b = (s, b) if scale2 is None else (s * scale2, b * scale2)
                keys += [(Level.BLOCK, name, "skip_grad_norm"), (Level.BLOCK, name, "branch_grad_norm")]
                values += [s.sqrt(), b.sqrt()]
                if d is not None:
                    keys.append((Level.BLOCK, name, "skip_branch_cos"))
                    values.append((d if scale2 is None else d * scale2) / (s.sqrt() * b.sqrt()))
            branch = acc.branch.combined(kept)
            if branch is not None:
                keys += [(Level.BLOCK, name, "branch_var"), (Level.BLOCK, name, "branch_mean_sq")]
                values += [branch[2].mean(), branch[1].square().mean()]
            stream = acc.stream.combined(kept)
            if stream is not None:
                keys.append((Level.BLOCK, name, "act_rms"))
                values.append((stream[1].square().mean() + stream[2].mean()).sqrt())
        self._say_what_is_missing(heard, counted)
        self.reset()
        return keys, values

    def _say_what_is_missing(self, heard: set[int], counted: bool) -> None:
        """Warn once for each reason a step's rows are missing or pooled."""
        if not self._eager_calls and not self.acc and not self.block_acc:
            self._warn_once("compiled", "activations=True recorded no module or block rows at this step: no forward "
                            "of the model ran in eager mode since the previous recorded step. A torch.compile-d "
                            f"forward runs without gradsight's forward hooks, so {_COMPILED}", stacklevel=6)
        if heard and not counted:
            self._warn_once("passes", "activations=True records no output gradient at this step (nor the forward "
                            "statistics of calls that only such passes reached): no backward pass since the previous "
                            "recorded step accumulated into the parameters' .grad and was kept; gradients from "
                            "torch.autograd.grad, or reset by zero_grad before monitor.step(), are not the ones "
                            "monitor.step() records", stacklevel=6)
        if self.passes.pooled and len(heard) > 1:
            self._warn_once("pooled", "activations=True: the model has no trainable parameter to tell backward "
                            "passes apart, so module and block rows pool the gradient of every backward pass "
                            "since the previous recorded step", stacklevel=6)

    def reset(self) -> None:
        self.acc.clear()
        self.block_acc.clear()
        self._saturated.clear()
        self._produced.clear()
        self._bounded_out.clear()
        self._inputs.clear()
        self._claimed.clear()
        self._operands.clear()
        self.owner_calls.clear()
        self._eager_calls = 0
        self.hooks.remove(self.ITER_TAG)
        self.passes.reset()

    def module_kinds(self) -> dict[str, str]:
        """Name -> 'block' for block rows, 'module' for other tracked modules."""
        kinds = {n: RowKind.MODULE for n in self.tracked}
        kinds.update({n: RowKind.BLOCK for n in self.blocks})
        return kinds


def _output_grad(acc: _ModuleAcc, forward: _Forward, task: int | None, grad: Tensor) -> None:
    """Tensor hook on a module output: ``dL/dh`` of the backward pass running (or of ``task``)."""
    if _under_transform():
        return
    task = task if task is not None else _graph_task()
    forward.tasks.add(task)
    acc.add_grad(task, grad)


def _stops(inputs: object) -> list:
    """The gradient-edge nodes of a call's floating-point inputs that require grad."""
    stops = []
    for t in _tensors(inputs):
        if t.requires_grad:
            try:
                stops.append(get_gradient_edge(t).node)
            except RuntimeError:
                pass
    return stops


def _tensors(obj: object) -> list[Tensor]:
    """Every floating-point tensor in nested tuples, lists and dicts."""
    if isinstance(obj, Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return []

"""Path lengths: how much gradient travels along paths through k residual branches.

Veit, Wilber & Belongie (2016), "Residual Networks Behave Like Ensembles of Relatively Shallow
Networks" (NeurIPS), Section 5 and Fig. 6. Unrolling ``n`` residual blocks
``x_{i+1} = branch_i(x_i) + shortcut_i(x_i)`` gives ``2**n`` paths from the first block's input
to the output; ``C(n, k)`` of them go through exactly ``k`` branches. For each length ``k`` we
sample ``k`` blocks, let the gradient pass only through the *branch* of those blocks and only
through the *shortcut* of all others, and measure the gradient that reaches the input of the
first block:

    g(S) = grad of <v, f(x)> w.r.t. x_0, backpropagated through branch_i for i in S and
           through shortcut_i for i not in S                                  (|S| = k)

    magnitude(k)  = mean over samples of ||g(S)||_2        (Fig. 6b, the whole batch's norm)
    fraction(k)   = C(n, k) / 2**n                         (Fig. 6a, the path-length distribution)
    effective(k)  = magnitude(k) * fraction(k)             (Fig. 6c, gradient per path length)

``effective`` is the paper's "total gradient magnitude per path length" divided by ``2**n``;
its sum is not the norm of the full gradient (paths add as vectors, not as norms). In the paper,
almost all of ResNet-110's gradient comes from paths of length 5 to 17.

Residual blocks are found in the autograd graph, as everywhere in gradsight
(:mod:`gradsight.instrument.residual`): each residual addition ``s + f(s)`` is one block (a
transformer layer has two), named after the innermost module whose forward holds it. So any
residual network works (the zoo's, torchvision's ``resnet18`` with its in-place
``out += identity``, a GPT-2), and ``n`` counts the additions of the outermost level that has
them. The gradient is measured at the input of the module that owns the first addition.

Gating leaves every forward value unchanged: in each forward pass, the split of every block is
found again, and a hook on the autograd nodes where the skip path (or the branch) consumes the
addition's stream replaces the gradient they pass to it by zeros. One forward pass per sample.
In post-activation blocks (``relu(branch(x) + shortcut(x))``, the CIFAR ResNet) the gradient
goes through the ReLU's mask, which depends on both terms, before it splits; that mask is part
of every path through the block. BN layers run in the model's current mode (batch statistics
in training mode); their running statistics are restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from gradsight.instrument.activations import ActivationRecorder, block_owner
from gradsight.instrument.hooks import HookRegistry
from gradsight.instrument.outputs import main_output
from gradsight.instrument.residual import ResidualSplit
from gradsight.models.info import input_spec
from gradsight.probes._state import state_restored

__all__ = ["PathLengthResult", "find_residual_blocks", "path_fractions", "path_gradient", "path_lengths"]


def path_fractions(n_blocks: int) -> torch.Tensor:
    """``C(n, k) / 2**n`` for ``k = 0..n``: shape ``(n + 1,)``, float64, sums to 1."""
    return torch.tensor(
        [math.comb(n_blocks, k) / 2**n_blocks for k in range(n_blocks + 1)], dtype=torch.float64
    )


@dataclass
class PathLengthResult:
    """Gradient magnitude per path length for a residual network of ``n`` blocks.

    Attributes:
        lengths: ``0..n``, shape ``(n + 1,)``.
        magnitudes: ``||g(S)||_2`` for every sample, shape ``(n + 1, samples)``, float64.
        fraction: ``C(n, k) / 2**n``, shape ``(n + 1,)``, float64.
    """

    lengths: torch.Tensor
    magnitudes: torch.Tensor
    fraction: torch.Tensor

    @property
    def n_blocks(self) -> int:
        """Number of residual blocks ``n``."""
        return len(self.lengths) - 1

    @property
    def magnitude(self) -> torch.Tensor:
        """Mean gradient magnitude of one path of each length, shape ``(n + 1,)``."""
        return self.magnitudes.mean(dim=1)

    @property
    def effective(self) -> torch.Tensor:
        """``magnitude * fraction``: how much gradient each path length carries, ``(n + 1,)``."""
        return self.magnitude * self.fraction

    @property
    def peak_length(self) -> int:
        """Path length that carries the most gradient (argmax of ``effective``)."""
        return int(self.effective.argmax())

    @property
    def mean_length(self) -> float:
        """Mean path length, weighted by ``effective`` (``nan`` if no gradient arrives)."""
        total = self.effective.sum()
        if total == 0:
            return math.nan
        return float((self.effective * self.lengths.double()).sum() / total)

    def effective_range(self, mass: float = 0.9) -> tuple[int, int]:
        """Path lengths ``(lo, hi)`` holding the central ``mass`` of ``effective``
        (``(1 - mass) / 2`` of it below ``lo`` and above ``hi``); ``(0, n)`` if no gradient
        arrives."""
        total = self.effective.sum()
        if total == 0:
            return 0, self.n_blocks
        cdf = (self.effective / total).cumsum(0)
        tail = (1.0 - mass) / 2
        lo = int((cdf < tail).sum())
        hi = int((cdf < 1.0 - tail).sum())
        return lo, min(hi, self.n_blocks)


def _recorder(model: nn.Module, hooks: HookRegistry) -> ActivationRecorder:
    """The monitor's detection of residual additions, measuring nothing."""
    return ActivationRecorder(model, [], None, hooks, is_active=lambda: True)


def find_residual_blocks(model: nn.Module, inputs: torch.Tensor) -> list[str]:
    """The residual additions of ``model``, in forward order, found in one forward pass.

    The rule of the monitor and ``gs.probe`` (:mod:`gradsight.instrument.residual`): every
    addition ``s + f(s)`` is one block, named after the innermost module whose forward holds
    it (``module[branch]`` when that module holds several, as a transformer block does), so
    stages and the model itself are not blocks and a container of one block is that block.
    Additions inside another addition's branch are dropped, so only the outermost level
    counts. Training flags and BN buffers are restored.
    """
    hooks = HookRegistry()
    try:
        recorder = _recorder(model, hooks)
        with state_restored(model), torch.enable_grad():
            x = inputs.detach().requires_grad_(True) if inputs.is_floating_point() else inputs
            model(x)
        recorder.finish_discovery()
        return [row for row in recorder.blocks if row not in recorder.nested]
    finally:
        hooks.remove_all()


class _PathGates:
    """Routes the gradient along one path at a time, and catches the first block's input.

    While open, a forward pre-hook on the module that owns the first addition replaces its
    input by a detached copy that requires grad (the measuring point), and the monitor's
    detection finds every addition again in each forward and hooks the autograd nodes where
    the blocked path consumes the addition's stream, so that path passes no gradient to it.
    Closing removes every module hook; the node hooks go with the graph of the pass.
    """

    def __init__(self, model: nn.Module, blocks: Sequence[str]) -> None:
        if not blocks:
            raise ValueError(
                f"{type(model).__name__} has no active residual blocks: path lengths need modules "
                "whose output adds their input (or a shortcut of it) to a branch"
            )
        self.model = model
        self.blocks = list(blocks)
        self.index = {row: i for i, row in enumerate(self.blocks)}
        self.through_branch = [False] * len(blocks)
        self.found = [0] * len(blocks)
        self.starts: list[torch.Tensor] = []
        self.hooks = HookRegistry()

    def __enter__(self) -> _PathGates:
        try:
            self.recorder = _recorder(self.model, self.hooks)
            self.recorder.on_addition = self._gate
            first = dict(self.model.named_modules())[block_owner(self.blocks[0])]
            self.hooks.attach(first, "register_forward_pre_hook", self._measuring_point, prepend=True)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.hooks.remove_all()

    def _measuring_point(self, _module: nn.Module, args: tuple) -> tuple | None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is None or not x.is_floating_point():
            return None
        x = x.detach().requires_grad_(True)
        self.starts.append(x)
        return (x, *args[1:])

    def _gate(self, row: str, split: ResidualSplit) -> None:
        index = self.index.get(row)
        if index is None:
            return
        self.found[index] += 1
        skip_consumers, branch_consumers = split.consumers
        blocked = skip_consumers if self.through_branch[index] else branch_consumers
        indices: dict[Any, set[int]] = {}
        for node, input_index in blocked:
            indices.setdefault(node, set()).add(input_index)
        for node, zeroed in indices.items():
            def hook(grad_inputs: tuple, _grad_outputs: tuple, zeroed: set[int] = zeroed) -> tuple:
                return tuple(
                    torch.zeros_like(g) if i in zeroed and g is not None else g
                    for i, g in enumerate(grad_inputs)
                )

            node.register_hook(hook)

    def gradient(
        self, inputs: torch.Tensor, through_branch: Sequence[bool], output_grad: torch.Tensor | None
    ) -> torch.Tensor:
        """One forward and backward pass along the path ``through_branch``."""
        if len(through_branch) != len(self.blocks):
            raise ValueError(
                f"through_branch has {len(through_branch)} flags for {len(self.blocks)} "
                "residual blocks"
            )
        self.through_branch = [bool(flag) for flag in through_branch]
        self.found = [0] * len(self.blocks)
        self.starts = []
        self.recorder.reset()
        with torch.enable_grad():
            output = self.model(inputs)
        self.recorder.finish_discovery()
        calls = self.recorder.owner_calls
        twice = {owner: n for owner, n in calls.items() if n != 1 and any(block_owner(b) == owner for b in self.blocks)}
        if len(self.starts) != 1 or twice:
            raise ValueError(
                "every residual block must run once per forward pass; in this model "
                + ", ".join(f"{name} ran {count} times" for name, count in twice.items())
            )
        if any(found != 1 for found in self.found):
            missing = [name for name, found in zip(self.blocks, self.found) if found != 1]
            raise ValueError(f"the residual addition of {', '.join(missing)} was not found in this forward pass")
        (start,) = self.starts
        self.starts = []
        output = main_output(output)
        if output is None or not output.requires_grad:
            return torch.zeros_like(start)
        if output_grad is None:
            output_grad = torch.ones_like(output)
        (grad,) = torch.autograd.grad(output, start, output_grad, allow_unused=True)
        return torch.zeros_like(start) if grad is None else grad


def path_gradient(
    model: nn.Module,
    inputs: torch.Tensor,
    through_branch: Sequence[bool],
    output_grad: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient at the first residual block's input along one path.

    Args:
        model: a network with residual blocks (see :func:`find_residual_blocks`).
        inputs: a batch for ``model``.
        through_branch: one flag per residual block, in forward order: ``True`` lets the
            gradient pass only through that block's branch, ``False`` only through its skip
            path (the identity or a shortcut).
        output_grad: ``v``, the gradient fed to the output (same shape as ``model(inputs)``);
            ones when ``None``.

    Returns:
        The gradient of ``<v, model(inputs)>`` w.r.t. the first block's input along the path,
        shaped like that input (zeros if the path does not reach it). Parameters get no
        ``.grad``; hooks are removed, training flags and BN running statistics restored.

    Raises:
        ValueError: no residual blocks, a wrong number of flags, or a block that does not run
            exactly once per forward pass.
    """
    blocks = find_residual_blocks(model, inputs)
    with _PathGates(model, blocks) as gates, state_restored(model):
        return gates.gradient(inputs, through_branch, output_grad)


def path_lengths(
    model: nn.Module,
    inputs: torch.Tensor | None = None,
    *,
    samples: int = 10,
    seed: int = 0,
    input_shape: Sequence[int] | None = None,
    batch_size: int = 8,
    output_grad: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PathLengthResult:
    """Gradient magnitude of paths of each length ``k = 0..n`` (Veit et al. 2016, Fig. 6).

    For every ``k``, ``samples`` random sets of ``k`` blocks are drawn; each gives one
    :func:`path_gradient` and its L2 norm over the whole batch.

    Args:
        model: a network with ``n >= 1`` residual blocks (see :func:`find_residual_blocks`).
        inputs: the batch to measure on; by default ``batch_size`` samples of ``input_shape``
            (:func:`~gradsight.models.input_spec`: standard normal, drawn in float64 and rounded to
            the parameters' dtype, or token ids for a registered token model).
        samples: random block sets per path length.
        seed: seeds the input batch, the output gradient and the block sets.
        input_shape: shape of one sample without the batch dimension, e.g. ``(1, 28, 28)``;
            by default the registered model's (``model.model_info``).
        batch_size: samples in the default batch.
        output_grad: gradient fed to the output; by default a fixed random direction of unit
            norm (over the whole batch), e.g. pass ``dL/dy`` to measure a loss's gradient.
        progress: called as ``progress(done, total)`` after each of the ``(n + 1) * samples``
            passes.

    Returns:
        A :class:`PathLengthResult`. The model's parameters get no ``.grad``.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1; got {samples}")
    generator = torch.Generator().manual_seed(seed)
    param = next(model.parameters(), None)
    if inputs is None:
        spec = input_spec(model, input_shape=input_shape)
        if spec.is_float:
            spec = replace(spec, dtype=torch.float64)  # then rounded to the parameters' dtype
        inputs = spec.batch(batch_size, generator=generator)
        if param is not None:
            inputs = inputs.to(param.device, param.dtype if inputs.is_floating_point() else inputs.dtype)
    blocks = find_residual_blocks(model, inputs)
    n = len(blocks)
    if output_grad is None:
        with torch.no_grad(), state_restored(model):
            output = main_output(model(inputs))
        output_grad = torch.randn(output.shape, generator=generator, dtype=torch.float64)
        output_grad = (output_grad / output_grad.norm()).to(output)
    magnitudes = torch.empty(n + 1, samples, dtype=torch.float64)
    with _PathGates(model, blocks) as gates, state_restored(model):
        for k in range(n + 1):
            for s in range(samples):
                flags = [False] * n
                for index in torch.randperm(n, generator=generator)[:k].tolist():
                    flags[index] = True
                grad = gates.gradient(inputs, flags, output_grad)
                magnitudes[k, s] = float(grad.double().norm())
                if progress is not None:
                    progress(k * samples + s + 1, (n + 1) * samples)
    return PathLengthResult(
        lengths=torch.arange(n + 1), magnitudes=magnitudes, fraction=path_fractions(n)
    )

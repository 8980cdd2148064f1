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

Gating leaves every forward value unchanged: a temporary forward hook on each ``branch`` and
``shortcut`` returns its output as is (gradient passes) or ``output.detach()`` (gradient 0),
the ``m in {0, 1}`` case of ``t.detach() + m * (t - t.detach())``. One forward pass per sample.
In post-activation blocks (``relu(branch(x) + shortcut(x))``, the CIFAR ResNet) the gradient
goes through the ReLU's mask, which depends on both terms, before it splits; that mask is part
of every path through the block. BN layers run in the model's current mode (batch statistics
in training mode); their running statistics are restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gradsight.models import residual_blocks
from gradsight.probes._state import state_restored

__all__ = ["PathLengthResult", "path_fractions", "path_gradient", "path_lengths"]


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


def _gated_modules(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """``(branch, shortcut)`` of every active residual block, checked for the protocol."""
    blocks = residual_blocks(model)
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no active residual blocks: path lengths need blocks "
            "with is_residual_block = True, skip = True and modules `branch` and `shortcut` "
            "(see gradsight.models.residual_blocks)"
        )
    pairs, seen = [], set()
    for block in blocks:
        branch, shortcut = getattr(block, "branch", None), getattr(block, "shortcut", None)
        if not isinstance(branch, nn.Module) or not isinstance(shortcut, nn.Module):
            raise ValueError(
                f"residual block {type(block).__name__} needs modules `branch` and `shortcut`"
            )
        for module in (branch, shortcut):
            if id(module) in seen:
                raise ValueError(
                    f"module {module!r} is the branch or shortcut of two blocks; gating "
                    "needs one module object per block and path"
                )
            seen.add(id(module))
        pairs.append((branch, shortcut))
    return pairs


class _PathGates:
    """Hooks that route the gradient along one path at a time, and catch the first block's input.

    While open, a forward pre-hook on the first block replaces its input by a detached copy
    that requires grad (the measuring point), and forward hooks on every ``branch`` and
    ``shortcut`` return their output as is or detached, as ``through_branch`` says at the time
    of the forward pass. Closing removes every hook.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.pairs = _gated_modules(model)
        self.through_branch = [False] * len(self.pairs)
        self.calls = [0] * (2 * len(self.pairs))
        self.starts: list[torch.Tensor] = []
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _PathGates:
        try:
            first_block = residual_blocks(self.model)[0]
            self.handles.append(first_block.register_forward_pre_hook(self._capture))
            for i, (branch, shortcut) in enumerate(self.pairs):
                self.handles.append(branch.register_forward_hook(self._gate(i, True)))
                self.handles.append(shortcut.register_forward_hook(self._gate(i, False)))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def _capture(self, _module: nn.Module, args: tuple) -> tuple:
        start = args[0].detach().requires_grad_(True)
        self.starts.append(start)
        return (start, *args[1:])

    def _gate(self, index: int, is_branch: bool):
        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
            self.calls[2 * index + (0 if is_branch else 1)] += 1
            passes = self.through_branch[index] == is_branch
            return output if passes else output.detach()

        return hook

    def gradient(
        self, inputs: torch.Tensor, through_branch: Sequence[bool], output_grad: torch.Tensor | None
    ) -> torch.Tensor:
        """One forward and backward pass along the path ``through_branch``."""
        if len(through_branch) != len(self.pairs):
            raise ValueError(
                f"through_branch has {len(through_branch)} flags for {len(self.pairs)} "
                "residual blocks"
            )
        self.through_branch = [bool(flag) for flag in through_branch]
        self.calls = [0] * len(self.calls)
        self.starts = []
        output = self.model(inputs)
        if len(self.starts) != 1 or any(count != 1 for count in self.calls):
            raise ValueError(
                "every residual block must run once per forward pass and call its branch and "
                "shortcut exactly once (out-of-place add); this model does not"
            )
        (start,) = self.starts
        self.starts = []
        if not output.requires_grad:
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
        model: a network whose residual blocks follow the block protocol.
        inputs: a batch for ``model``.
        through_branch: one flag per active residual block, in forward order: ``True`` lets the
            gradient pass only through that block's ``branch``, ``False`` only through its
            ``shortcut``.
        output_grad: ``v``, the gradient fed to the output (same shape as ``model(inputs)``);
            ones when ``None``.

    Returns:
        The gradient of ``<v, model(inputs)>`` w.r.t. the first block's input along the path,
        shaped like that input (zeros if the path does not reach it). Parameters get no
        ``.grad``; hooks are removed, training flags and BN running statistics restored.

    Raises:
        ValueError: no residual blocks, a wrong number of flags, or a block that does not call
            its ``branch`` and ``shortcut`` exactly once per forward pass.
    """
    with _PathGates(model) as gates, state_restored(model):
        return gates.gradient(inputs, through_branch, output_grad)


def _guess_input_shape(model: nn.Module) -> tuple[int, ...]:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return (module.in_features,)
        if isinstance(module, nn.Conv2d):
            return (module.in_channels, 32, 32)
    raise ValueError(
        f"cannot guess the input shape of {type(model).__name__}; pass inputs or input_shape"
    )


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
        model: a network with ``n >= 1`` residual blocks following the block protocol.
        inputs: the batch to measure on; by default ``batch_size`` standard normal samples of
            ``input_shape``.
        samples: random block sets per path length.
        seed: seeds the input batch, the output gradient and the block sets.
        input_shape: shape of one sample without the batch dimension, e.g. ``(1, 28, 28)``;
            guessed from the first linear (``(in_features,)``) or conv layer
            (``(in_channels, 32, 32)``) when ``None``.
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
    n = len(_gated_modules(model))
    generator = torch.Generator().manual_seed(seed)
    param = next(model.parameters(), None)
    if inputs is None:
        shape = tuple(input_shape) if input_shape is not None else _guess_input_shape(model)
        inputs = torch.randn((batch_size, *shape), generator=generator, dtype=torch.float64)
        if param is not None:
            inputs = inputs.to(param)
    if output_grad is None:
        with torch.no_grad(), state_restored(model):
            output = model(inputs)
        output_grad = torch.randn(output.shape, generator=generator, dtype=torch.float64)
        output_grad = (output_grad / output_grad.norm()).to(output)
    magnitudes = torch.empty(n + 1, samples, dtype=torch.float64)
    with _PathGates(model) as gates, state_restored(model):
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

"""Shattered gradients: how white-noise-like dy/dx of a scalar network is along a line.

Balduzzi et al. (2017), "The Shattered Gradients Problem: If resnets are the answer, then what
is the question?" (ICML). For a network ``f: R -> R`` evaluated at ``n`` evenly spaced inputs
``x_1 < ... < x_n``, the gradient sequence ``g_i = f'(x_i)`` of a shallow network changes
smoothly with ``x`` (brown noise), while that of a deep plain network decorrelates into white
noise; residual networks keep it correlated. The normalized autocorrelation of the sequence::

    r(k) = sum_{i=1}^{n-k} (g_i - mean g)(g_{i+k} - mean g) / sum_{i=1}^{n} (g_i - mean g)^2

is 1 at lag 0; white noise has ``r(k) ~ 0`` for ``k >= 1``, brown noise ``r(1) ~ 1``. The
spectral flatness (geometric over arithmetic mean of the periodogram) is another summary: about
``exp(-0.5772) = 0.56`` for white Gaussian noise, near 0 for smooth or brown-noise signals.

Batch normalization: the ``n`` points are one batch. Every BN layer is evaluated with the mean
and (biased) variance of this batch, as in a training-mode forward pass, but as fixed constants
(eval mode), so that ``f`` is a function of each point on its own and one backward pass of
``sum(f(x_i))`` gives every ``f'(x_i)`` exactly. The model's modes and BN buffers are restored
afterwards.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gradsight.instrument.outputs import main_output
from gradsight.probes._state import batchnorms, state_restored

__all__ = [
    "ShatteringResult",
    "autocorrelation",
    "batch_statistics_frozen",
    "shattering",
    "spectral_flatness",
]


def autocorrelation(sequence: torch.Tensor) -> torch.Tensor:
    """Normalized autocorrelation ``r(0..n-1)`` of a 1-D sequence (see the module docstring).

    Returns a float64 tensor of shape ``(n,)`` with ``r(0) = 1`` (all zeros for a constant
    sequence). Computed with an FFT, zero-padded so that it is not circular.
    """
    g = sequence.detach().double().flatten()
    g = g - g.mean()
    n = g.numel()
    energy = g.square().sum()
    if energy == 0:
        return torch.zeros(n, dtype=torch.float64)
    spectrum = torch.fft.rfft(g, n=2 * n)
    return torch.fft.irfft(spectrum.abs().square(), n=2 * n)[:n] / energy


def spectral_flatness(sequence: torch.Tensor) -> float:
    """Geometric over arithmetic mean of the periodogram of the mean-removed ``sequence``.

    The zero-frequency bin (removed mean) is left out. About 0.56 for white Gaussian noise, close
    to 0 for smooth or brown-noise signals; ``nan`` for a constant sequence.
    """
    g = sequence.detach().double().flatten()
    power = torch.fft.rfft(g - g.mean()).abs().square()[1:]
    if power.sum() == 0:
        return math.nan
    power = power.clamp_min(torch.finfo(torch.float64).tiny)
    return float(power.log().mean().exp() / power.mean())


@dataclass
class ShatteringResult:
    """dy/dx of a scalar network along a line, and how correlated it is.

    Attributes:
        x: the inputs, shape ``(n,)``, evenly spaced in ``[lo, hi]``.
        y: the network's outputs ``f(x)``, shape ``(n,)``.
        grad: ``f'(x)`` at every input, shape ``(n,)``.
        autocorrelation: normalized autocorrelation of ``grad`` at lags ``0..n-1``, shape
            ``(n,)``, float64.
    """

    x: torch.Tensor
    y: torch.Tensor
    grad: torch.Tensor
    autocorrelation: torch.Tensor

    @property
    def lag1(self) -> float:
        """Lag-1 autocorrelation of the gradient: ~0 for white noise, ~1 for brown noise."""
        return float(self.autocorrelation[1])

    @property
    def spectral_flatness(self) -> float:
        """Spectral flatness of the gradient sequence (~0.56 white noise, ~0 brown)."""
        return spectral_flatness(self.grad)

    def correlation_length(self, threshold: float = 0.5) -> int:
        """Smallest lag at which the autocorrelation drops below ``threshold`` (``n`` if never)."""
        below = (self.autocorrelation < threshold).nonzero()
        return int(below[0]) if below.numel() else self.autocorrelation.numel()


@contextlib.contextmanager
def batch_statistics_frozen(model: nn.Module, inputs: torch.Tensor) -> Iterator[nn.Module]:
    """Context: ``model`` in eval mode with every BN layer's running statistics set to the
    statistics of ``inputs`` (mean and biased variance, as a training-mode pass would use).

    Inside, the model's outputs for ``inputs`` equal those of a training-mode forward pass, but
    each sample's output depends on that sample alone. On exit the training flags and BN
    buffers are restored. Raises ``ValueError`` for BN layers without running statistics.
    """
    norms = batchnorms(model)
    for norm in norms:
        if not norm.track_running_stats or norm.running_mean is None:
            raise ValueError(
                f"{type(norm).__name__} with track_running_stats=False always uses the batch's "
                "statistics, so per-sample gradients are not defined"
            )

    def set_stats(norm: _BatchNorm, args: tuple[torch.Tensor, ...]) -> None:
        h = args[0].detach()
        dims = [d for d in range(h.dim()) if d != 1]
        norm.running_mean.copy_(h.mean(dims))
        norm.running_var.copy_(h.var(dims, unbiased=False))

    with state_restored(model):
        model.eval()
        handles = [norm.register_forward_pre_hook(set_stats) for norm in norms]
        try:
            with torch.no_grad():
                model(inputs)
        finally:
            for handle in handles:
                handle.remove()
        yield model


def shattering(
    model: nn.Module, n_points: int = 256, lo: float = -2.0, hi: float = 2.0
) -> ShatteringResult:
    """dy/dx of a scalar-input, scalar-output ``model`` at ``n_points`` evenly spaced inputs.

    The inputs form one batch of shape ``(n_points, 1)``; BN layers use that batch's statistics
    (see :func:`batch_statistics_frozen`). The model must map ``(n, 1)`` to ``(n,)`` or
    ``(n, 1)`` (its main output, :func:`~gradsight.instrument.outputs.main_output`), e.g.
    ``create_model("mlp", in_features=1, num_classes=1, ...)``. Its parameters
    get no ``.grad``; its modes and BN buffers are left as they were.

    Raises:
        ValueError: ``n_points < 2``, ``lo >= hi``, or an output that is not one scalar per point.
    """
    if n_points < 2 or not lo < hi:
        raise ValueError(f"need n_points >= 2 and lo < hi; got n_points={n_points}, [{lo}, {hi}]")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.linspace(lo, hi, n_points, device=device, dtype=dtype).unsqueeze(1)
    with batch_statistics_frozen(model, x):
        x.requires_grad_(True)
        y = main_output(model(x))
        if y is None or y.shape not in ((n_points,), (n_points, 1)):
            got = "no floating-point tensor" if y is None else f"output shape {tuple(y.shape)}"
            raise ValueError(
                f"shattering needs one scalar output per point: input (n, 1) -> output (n,) or "
                f"(n, 1); got {got} (build e.g. "
                "create_model('mlp', in_features=1, num_classes=1))"
            )
        (grad,) = torch.autograd.grad(y.sum(), x)
    grad = grad.detach().flatten().cpu()
    return ShatteringResult(
        x=x.detach().flatten().cpu(),
        y=y.detach().flatten().cpu(),
        grad=grad,
        autocorrelation=autocorrelation(grad),
    )

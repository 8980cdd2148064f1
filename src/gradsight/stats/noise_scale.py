"""The gradient noise scale ``B_simple = tr(Σ) / |G|²`` from two batch sizes.

McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", App. A.1: the
squared norm of a gradient estimated on a batch of ``B`` samples has the expectation
``E|G_B|² = |G|² + tr(Σ) / B``, where ``G`` is the true gradient and ``Σ`` the per-sample
gradient covariance. Two batch sizes ``B_small < B_big`` give unbiased estimates of both::

    |G|²  = (B_big |G_big|² - B_small |G_small|²) / (B_big - B_small)
    tr(Σ) = (|G_small|² - |G_big|²) / (1 / B_small - 1 / B_big)

Here the small batches are the ``m`` micro-batches of ``b`` samples each that one
optimizer step sums (gradient accumulation on every rank, times the ranks under DDP),
``|G_small|²`` the mean of their squared norms, and the big batch their union of
``m b`` samples. With ``B_small = b``, ``B_big = m b`` the two estimates become the pure
functions below. ``B_simple`` itself is a ratio of two noisy estimates: it is taken as
the ratio of their exponential moving averages (:data:`EMA_BETA`), never per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: The moving averages' decay per recorded step. The per-step estimates of |G|² are noisy
#: (one draw of m micro-batches; negative ones are common when the batch is far below the
#: noise scale): with 0.95 the averages span about 1 / (1 - 0.95) = 20 recorded steps,
#: which brings the per-step spread of the ratio down about sqrt(2 * 20 - 1) ~ 6x while
#: following a noise scale that changes over hundreds of steps (McCandlish's grows over
#: training as the loss falls). The averages start at zero: their bias (1 - beta^t) is the
#: same for both and cancels in the ratio.
EMA_BETA = 0.95


#: A batch size more than this factor below or above the noise scale is far from it. The
#: model of McCandlish et al. (eq. 2.11) puts the steps and samples to reach a loss at
#: ``S = S_min (1 + B_noise / B)`` and ``E = E_min (1 + B / B_noise)``: at a tenth of the noise
#: scale training takes 11x the fewest steps (a larger batch would cut them about tenfold at
#: about the same samples), at ten times it takes 11x the fewest samples (a smaller batch
#: would reach the loss with about a tenth of the compute). Within the factor neither is
#: more than 11x its minimum; B = B_noise costs 2x each.
FAR_FACTOR = 10.0


def unbiased(small_sq: Tensor, big_sq: Tensor, micro_batches: Tensor | float,
             micro_batch_size: float = 1.0) -> tuple[Tensor, Tensor]:
    """Unbiased ``|G|²`` and ``tr(Σ)`` from one step's two batch sizes (any shape, elementwise).

    Args:
        small_sq: the mean squared norm of the ``m`` micro-batch gradients.
        big_sq: the squared norm of their mean (the accumulated gradient).
        micro_batches: ``m`` (>= 2).
        micro_batch_size: ``b``, the samples of one micro-batch (1: tr(Σ) per micro-batch).

    Returns:
        ``(grad_sq, trace)``: ``(m |G_big|² - |G_small|²) / (m - 1)`` and
        ``b m (|G_small|² - |G_big|²) / (m - 1)``.
    """
    m = torch.as_tensor(micro_batches, dtype=small_sq.dtype, device=small_sq.device)
    grad_sq = (m * big_sq - small_sq) / (m - 1)
    trace = micro_batch_size * m * (small_sq - big_sq) / (m - 1)
    return grad_sq, trace


def ema_update(average: Tensor, value: Tensor, beta: float = EMA_BETA) -> Tensor:
    """``beta * average + (1 - beta) * value``, in place into ``average`` (returned)."""
    return average.mul_(beta).add_(value, alpha=1.0 - beta)


__all__ = ["EMA_BETA", "FAR_FACTOR", "ema_update", "unbiased"]

"""Gradient statistics computed in as few passes over memory as possible.

Every statistic of a parameter is derived from seven *raw sums* of its gradient
``g`` and weight ``w`` (one row per tensor)::

    sumsq      = sum(g**2)                 sumabs    = sum(|g|)
    maxabs     = max(|g|)                  zeros     = count(g == 0)
    nonfinite  = count(not isfinite(g))    numel     = g.numel()
    w_sumsq    = sum(w**2)

Raw sums add up across tensors (``maxabs`` takes the max), so layer- and
model-level statistics are exact aggregates of parameter rows, and the
derived statistics (``grad_norm = sqrt(sumsq)``, ``grad_rms = sqrt(sumsq / numel)``,
...) are computed once, vectorized, at the end.

Two ways to compute raw sums:

* ``eager``: multi-tensor ``torch._foreach_norm`` passes (L2, L1, Linf and L0,
  the count of nonzeros) over all tensors at once, plus one over the weights. On a
  GPU these are a handful of kernel launches for the whole model. ``nonfinite`` is
  not counted here: a tensor whose ``sumsq`` is finite has no NaN/Inf, so the count
  is only needed (and taken by :func:`count_nonfinite`) on the rare steps where a
  norm is not finite.
* ``fused``: one ``torch.compile``-d kernel per tensor that reads the gradient (and
  the weight, unless weight statistics are off) once and produces all seven sums.
  Used for large tensors on the CPU when compilation works; any failure falls back
  to ``eager``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: Columns of a raw-sum row, in order.
RAW_FIELDS = ("sumsq", "sumabs", "maxabs", "zeros", "nonfinite", "numel", "w_sumsq")
SUMSQ, SUMABS, MAXABS, ZEROS, NONFINITE, NUMEL, W_SUMSQ = range(len(RAW_FIELDS))

#: Statistics derived from raw sums, in the order :func:`derive_stats` returns them.
GRAD_STATS = (
    "grad_norm",
    "grad_rms",
    "grad_abs_mean",
    "grad_abs_max",
    "grad_zero_frac",
    "grad_nonfinite",
    "weight_norm",
    "grad_weight_ratio",
)

#: Tensors with at least this many elements use the fused kernel on the CPU.
FUSED_MIN_NUMEL = 1 << 16


def _fused_kernel(g: Tensor, w: Tensor | None) -> Tensor:
    g = g.float()
    a = g.abs()
    if w is None:
        w_sumsq = torch.full((), float("nan"), dtype=torch.float32, device=g.device)
    else:
        w = w.float()
        w_sumsq = (w * w).sum()
    return torch.stack(
        [
            (g * g).sum(),
            a.sum(),
            a.amax(),
            (g == 0).sum().float(),
            (~torch.isfinite(g)).sum().float(),
            torch.zeros((), dtype=torch.float32, device=g.device) + g.numel(),
            w_sumsq,
        ]
    )


class _FusedKernel:
    """Lazily compiled fused kernel; remembers a failure and stops trying."""

    def __init__(self) -> None:
        self._fn = None
        self._failed = False
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return not self._failed

    def __call__(self, g: Tensor, w: Tensor | None) -> Tensor | None:
        if self._failed:
            return None
        try:
            with self._lock:
                if self._fn is None:
                    log.info("gradsight: compiling the fused statistics kernel (once per process)")
                    self._fn = torch.compile(_fused_kernel, dynamic=True, fullgraph=True)
            return self._fn(g.reshape(-1), None if w is None else w.reshape(-1))
        except Exception as exc:  # no compiler, unsupported device, ...
            self._failed = True
            log.warning("gradsight: fused statistics kernel unavailable (%s); using eager ops", exc)
            return None


_FUSED = _FusedKernel()


def _sparse_row(g: Tensor, w: Tensor | None) -> Tensor:
    """Raw sums of a sparse (COO) gradient: implicit entries are zeros."""
    values = g.coalesce().values().float()
    a = values.abs()
    numel = g.numel()
    implicit_zeros = numel - values.numel()
    maxabs = a.max() if values.numel() else torch.zeros((), device=values.device)
    return torch.stack(
        [
            (values * values).sum(),
            a.sum(),
            maxabs,
            (values == 0).sum().float() + implicit_zeros,
            (~torch.isfinite(values)).sum().float(),
            torch.tensor(float(numel), device=values.device),
            w.detach().float().pow(2).sum() if w is not None else torch.tensor(float("nan"), device=values.device),
        ]
    )


def raw_sums(
    grads: Sequence[Tensor], weights: Sequence[Tensor], backend: str = "auto", with_weights: bool = True
) -> Tensor:
    """Raw sums of each (gradient, weight) pair.

    Args:
        grads: gradient tensors (dense or sparse COO), any floating dtype.
        weights: the matching parameter tensors, same order and shapes.
        backend: ``"eager"``, ``"fused"`` (every dense tensor through the compiled
            kernel) or ``"auto"`` (fused for large tensors on the CPU).
        with_weights: False skips the pass over the weights (``w_sumsq`` is NaN).

    Returns:
        float32 tensor of shape ``[len(grads), 7]`` with columns :data:`RAW_FIELDS`,
        on the gradients' device. ``nonfinite`` is only exact in rows whose
        ``sumsq`` is not finite when the eager path was used; call
        :func:`count_nonfinite` for those rows (finite ``sumsq`` implies zero).
    """
    if len(grads) != len(weights):
        raise ValueError("grads and weights differ in length")
    n = len(grads)
    if n == 0:
        return torch.zeros((0, len(RAW_FIELDS)))
    rows: dict[int, Tensor] = {}
    eager_idx: list[int] = []
    for i, (g, w) in enumerate(zip(grads, weights)):
        wd = w.detach() if with_weights else None
        if g.is_sparse:
            rows[i] = _sparse_row(g, wd)
            continue
        if g.numel() == 0:  # no identity for max: every sum is 0
            rows[i] = torch.tensor([0.0] * (len(RAW_FIELDS) - 1) + [0.0 if with_weights else float("nan")],
                                   device=g.device)
            continue
        if backend == "fused" or (
            backend == "auto" and g.device.type == "cpu" and g.numel() >= FUSED_MIN_NUMEL and _FUSED.available
        ):
            row = _FUSED(g, wd)
            if row is not None:
                rows[i] = row
                continue
        eager_idx.append(i)
    device = grads[0].device
    out = torch.empty((n, len(RAW_FIELDS)), dtype=torch.float32, device=device)
    if eager_idx:
        out[eager_idx] = _eager_rows([grads[i] for i in eager_idx], [weights[i].detach() for i in eager_idx],
                                     with_weights, device)
    if rows:
        out[list(rows)] = torch.stack([r.to(device) for r in rows.values()])
    return out


def _eager_rows(grads: list[Tensor], weights: list[Tensor], with_weights: bool, device: torch.device) -> Tensor:
    """Raw-sum rows ``[len(grads), 7]`` from multi-tensor norm kernels (one call per column)."""

    one_device = all(g.device == device for g in grads)

    def column(scalars) -> Tensor:  # per-tensor 0-d results, possibly on several devices
        return torch.stack(list(scalars) if one_device else [t.to(device) for t in scalars])

    sumsq = column(torch._foreach_norm(grads, 2, dtype=torch.float32)).square()
    sumabs = column(torch._foreach_norm(grads, 1, dtype=torch.float32))
    maxabs = column(torch._foreach_norm(grads, math.inf, dtype=torch.float32))
    nonzero = column(torch._foreach_norm(grads, 0, dtype=torch.float32))  # L0 "norm": count of nonzeros
    numel = torch.tensor([float(g.numel()) for g in grads], dtype=torch.float32, device=device)
    if with_weights:
        w_sumsq = column(torch._foreach_norm(weights, 2, dtype=torch.float32)).square()
    else:
        w_sumsq = torch.full_like(numel, float("nan"))
    # nonfinite stays 0 here: a finite sumsq implies none; see count_nonfinite
    return torch.stack([sumsq, sumabs, maxabs, numel - nonzero, torch.zeros_like(numel), numel, w_sumsq], dim=1)


def count_nonfinite(g: Tensor) -> float:
    """Number of NaN/Inf elements of a (dense or sparse) gradient, as a float."""
    if g.is_sparse:
        g = g.coalesce().values()
    return float((~torch.isfinite(g)).sum().item())


def aggregate(raw: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """Combine raw-sum rows into groups (sums add, ``maxabs`` takes the max).

    Args:
        raw: ``[R, 7]`` raw sums.
        group: ``[R]`` int64 group index of each row.
        num_groups: number of groups G.

    Returns:
        ``[G, 7]`` raw sums of each group (rows of empty groups are zero).
    """
    out = torch.zeros((num_groups, raw.shape[1]), dtype=raw.dtype, device=raw.device)
    out.index_add_(0, group, raw)
    maxabs = torch.zeros(num_groups, dtype=raw.dtype, device=raw.device)
    maxabs.scatter_reduce_(0, group, raw[:, MAXABS], reduce="amax", include_self=True)
    out[:, MAXABS] = maxabs
    return out


def derive_stats(raw: Tensor, inv_scale: Tensor | float | None = None) -> Tensor:
    """Statistics :data:`GRAD_STATS` from raw sums.

    Args:
        raw: ``[R, 7]`` raw sums.
        inv_scale: optional loss-scale reciprocal (mixed precision): gradients were
            multiplied by ``1/inv_scale`` and are reported unscaled.

    Returns:
        ``[R, 8]`` float32: grad_norm, grad_rms, grad_abs_mean, grad_abs_max,
        grad_zero_frac, grad_nonfinite, weight_norm, grad_weight_ratio.
    """
    sumsq, sumabs, maxabs = raw[:, SUMSQ], raw[:, SUMABS], raw[:, MAXABS]
    if inv_scale is not None:
        sumsq = sumsq * (inv_scale * inv_scale)
        sumabs = sumabs * inv_scale
        maxabs = maxabs * inv_scale
    numel = raw[:, NUMEL].clamp_min(1)
    grad_norm = sumsq.sqrt()
    weight_norm = raw[:, W_SUMSQ].sqrt()
    return torch.stack(
        [
            grad_norm,
            (sumsq / numel).sqrt(),
            sumabs / numel,
            maxabs,
            raw[:, ZEROS] / numel,
            raw[:, NONFINITE],
            weight_norm,
            grad_norm / weight_norm,
        ],
        dim=1,
    )

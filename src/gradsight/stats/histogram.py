"""Log2-magnitude histograms of gradients and their precision headroom.

Bucket ``e`` of a tensor's histogram counts its nonzero finite elements with
``2**e <= |g| < 2**(e+1)`` (zeros and NaN/Inf are left out: ``grad_zero_frac`` and
``grad_nonfinite`` count them). Buckets come from ``torch.frexp`` (``|g| = m * 2**x``
with ``0.5 <= m < 1``, so ``e = x - 1``), which is exact for subnormals too.

The *headroom* of a low-precision format is read from the same pass:

* ``<format>_underflow``: the fraction of elements that are nonzero and finite and
  become 0 when cast to the format. Casting rounds to nearest, ties to even: with
  ``s`` the format's smallest subnormal, ``|g| < s/2`` rounds to 0, ``|g| == s/2``
  is a tie and rounds to 0 (the even neighbour), anything above rounds to ``s``. So
  the count is every bucket below ``log2(s) - 1`` plus the elements equal to
  ``2**(log2(s) - 1)``, the lower edge of that bucket.
* ``<format>_overflow``: the fraction of finite elements whose magnitude exceeds
  the format's largest finite value ``torch.finfo(dtype).max`` (``2**q * f``): every
  bucket above ``q`` plus the elements of bucket ``q`` whose ``frexp`` mantissa is
  above ``f / 2``.

Both edges are counted in the same pass as the histogram: every element gets one
of a few *mantissa classes*, split at ``0.5`` (exact powers of two) and at each
format's ``f / 2``, and one ``bincount`` counts ``(tensor, bucket, class)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

#: The formats whose headroom is recorded: name -> dtype.
FORMATS: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8e4m3": torch.float8_e4m3fn,
    "fp8e5m2": torch.float8_e5m2,
}
#: Formats with a smaller range than float32 (bf16 has float32's exponent range).
OVERFLOW_FORMATS = ("fp16", "fp8e4m3", "fp8e5m2")

#: Headroom statistics, in the order :func:`headroom_counts` returns them.
HEADROOM_STATS = tuple(f"{f}_underflow" for f in FORMATS) + tuple(f"{f}_overflow" for f in OVERFLOW_FORMATS)


def smallest_subnormal(dtype: torch.dtype) -> float:
    """The smallest positive value of a floating format (its smallest subnormal)."""
    info = torch.finfo(dtype)
    return float(info.smallest_normal) * float(info.eps)


def underflow_threshold(dtype: torch.dtype) -> float:
    """The largest magnitude that rounds to 0 in ``dtype``: half its smallest subnormal."""
    return smallest_subnormal(dtype) / 2


#: log2 of each format's underflow threshold (a power of two).
UNDERFLOW_LOG2 = {f: int(math.log2(underflow_threshold(d))) for f, d in FORMATS.items()}


def _max_split(dtype: torch.dtype) -> tuple[int, float]:
    """``(q, m)`` of a format's largest value: ``max = m * 2**(q + 1)``, ``0.5 <= m < 1``,
    i.e. it lies in bucket ``q`` and larger elements of that bucket have mantissa ``> m``."""
    m, x = math.frexp(float(torch.finfo(dtype).max))
    return x - 1, m


OVERFLOW_SPLIT = {f: _max_split(FORMATS[f]) for f in OVERFLOW_FORMATS}

#: Mantissa class boundaries for ``torch.bucketize`` (``right=False``): class 0 holds
#: zeros, class 1 exact powers of two (m == 0.5), then one class per format maximum,
#: the last class (m > 1) NaN and Inf.
_BOUNDARIES = (0.25, 0.5, *sorted({m for _, m in OVERFLOW_SPLIT.values()}), 1.0)
N_CLASSES = len(_BOUNDARIES) + 1
_POW2_CLASS = 1
_VALID = slice(1, N_CLASSES - 1)

#: Bucket ranges: every nonzero float32 (and fp16/bf16) magnitude, and every float64 one.
RANGE_FP32 = (-149, 127)
RANGE_FP64 = (-1074, 1023)

#: Elements processed at once (bounds the temporaries of a pass).
CHUNK_NUMEL = 1 << 22


def bucket_range(dtypes: Sequence[torch.dtype]) -> tuple[int, int]:
    """``(lowest, highest)`` bucket that gradients of these dtypes can fill."""
    return RANGE_FP64 if torch.float64 in dtypes else RANGE_FP32


def log2_counts(grads: Sequence[Tensor], scale: Tensor | float | None = None,
                bucket_lo: int | None = None, bucket_hi: int | None = None) -> Tensor:
    """Counts of each gradient's elements by log2 bucket and mantissa class.

    Args:
        grads: dense or sparse (COO) gradients of any floating dtype, on one device.
        scale: multiply the gradients by this first (a loss scale), in float32.
        bucket_lo, bucket_hi: the bucket range (default :func:`bucket_range`).

    Returns:
        int64 ``[len(grads), bucket_hi - bucket_lo + 1, N_CLASSES]`` on the gradients'
        device; reduce it with :func:`histogram` and :func:`headroom_counts`.
    """
    if bucket_lo is None or bucket_hi is None:
        bucket_lo, bucket_hi = bucket_range([g.dtype for g in grads])
    n_buckets = bucket_hi - bucket_lo + 1
    per_tensor = n_buckets * N_CLASSES
    device = grads[0].device if grads else torch.device("cpu")
    out = torch.zeros(len(grads) * per_tensor, dtype=torch.int64, device=device)
    if not grads:
        return out.reshape(0, n_buckets, N_CLASSES)
    wide = any(g.dtype == torch.float64 for g in grads)
    work_dtype = torch.float64 if wide else torch.float32
    boundaries = torch.tensor(_BOUNDARIES, dtype=work_dtype, device=device)
    if isinstance(scale, Tensor):
        scale = scale.to(device=device, dtype=torch.float32)

    def flat(g: Tensor) -> Tensor:
        values = g.coalesce().values() if g.is_sparse else g
        values = values.reshape(-1)
        if scale is not None:  # the gradient as it is stored: float32 (float64 stays float64)
            values = values.float() * scale if values.dtype != torch.float64 else values * scale.double()
        return values

    def count(values: Tensor, owner: Tensor | int) -> None:
        m, x = torch.frexp(values.to(work_dtype))
        cls = torch.bucketize(m.abs_(), boundaries)
        # zeros, NaN and Inf land in classes 0 and N_CLASSES - 1 whatever their exponent
        key = x.clamp_(bucket_lo + 1, bucket_hi + 1).to(torch.int64).sub_(bucket_lo + 1).mul_(N_CLASSES).add_(cls)
        key += owner * per_tensor
        out.add_(torch.bincount(key, minlength=out.numel()))

    pending: list[Tensor] = []
    owners: list[int] = []
    pending_numel = 0

    def drain() -> None:
        nonlocal pending_numel
        if not pending:
            return
        values = torch.cat([v.to(work_dtype) for v in pending]) if len(pending) > 1 else pending[0]
        sizes = torch.tensor([v.numel() for v in pending], device=device)
        owner = torch.repeat_interleave(torch.tensor(owners, dtype=torch.int64, device=device), sizes)
        count(values, owner)
        pending.clear()
        owners.clear()
        pending_numel = 0

    for i, g in enumerate(grads):
        values = flat(g)
        if values.numel() >= CHUNK_NUMEL:
            for start in range(0, values.numel(), CHUNK_NUMEL):
                count(values[start : start + CHUNK_NUMEL], i)
            continue
        if values.numel() == 0:
            continue
        if pending_numel + values.numel() > CHUNK_NUMEL:
            drain()
        pending.append(values)
        owners.append(i)
        pending_numel += values.numel()
    drain()
    return out.reshape(len(grads), n_buckets, N_CLASSES)


def histogram(counts: Tensor) -> Tensor:
    """``[R, n_buckets]`` int64 log2 histograms from :func:`log2_counts` output ``[R, n_buckets, C]``."""
    return counts[..., _VALID].sum(-1)


def headroom_counts(counts: Tensor, bucket_lo: int) -> Tensor:
    """``[R, len(HEADROOM_STATS)]`` int64: per row, the elements that underflow each
    format (:data:`FORMATS`) and overflow each of :data:`OVERFLOW_FORMATS`.

    Args:
        counts: :func:`log2_counts` output (or any sum of its rows), ``[R, n_buckets, C]``.
        bucket_lo: the bucket of column 0.
    """
    hist = histogram(counts)
    n_buckets = hist.shape[1]
    cols = []
    for fmt in FORMATS:
        edge = UNDERFLOW_LOG2[fmt] - bucket_lo  # column of the bucket whose lower edge rounds to 0
        below = hist[:, : max(0, min(edge, n_buckets))].sum(1)
        at_edge = counts[:, edge, _POW2_CLASS] if 0 <= edge < n_buckets else torch.zeros_like(below)
        cols.append(below + at_edge)
    for fmt in OVERFLOW_FORMATS:
        q, m = OVERFLOW_SPLIT[fmt]
        col = q - bucket_lo
        first_above = _BOUNDARIES.index(m) + 1  # classes whose mantissa is > m
        above = hist[:, col + 1 :].sum(1)
        at_edge = counts[:, col, first_above : N_CLASSES - 1].sum(-1)
        cols.append(above + at_edge)
    return torch.stack(cols, dim=1)

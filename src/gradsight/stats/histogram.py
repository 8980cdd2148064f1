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

Both edges come with the histogram: the buckets hold everything strictly below an
underflow edge or strictly above a bucket holding a format's maximum, and the ties at
the edges (exact powers of two) and the partly-overflowing buckets are counted exactly
on the side (see :func:`log2_counts`).

Float64 gradients: PyTorch casts float64 to these formats through float32, so a
value within float32 rounding of an underflow edge can round differently from the
direct rounding counted here.

Complex gradients: the histogram is that of the moduli ``|g|``; the headroom is that of a
cast to a complex format, which rounds each part: an element underflows when it is
nonzero and finite and both parts round to 0, overflows when it is finite and either
part exceeds the format's largest value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from gradsight.stats import native
from gradsight.stats.formats import OVERFLOW_FORMATS, OVERFLOW_STATS, UNDERFLOW_STATS
from gradsight.stats.grad import flat_in_memory_order

#: The formats whose headroom is recorded: name -> dtype.
FORMATS: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8e4m3": torch.float8_e4m3fn,
    "fp8e5m2": torch.float8_e5m2,
}
#: Headroom statistics, in the order :func:`headroom_counts` returns them.
HEADROOM_STATS = UNDERFLOW_STATS + OVERFLOW_STATS


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

#: Mantissa class boundaries for ``torch.bucketize`` (``right=False``) in the exact
#: path: class 0 holds zeros, class 1 exact powers of two (m == 0.5), then one class
#: per format maximum, the last class (m > 1) NaN and Inf.
_BOUNDARIES = (0.25, 0.5, *sorted({m for _, m in OVERFLOW_SPLIT.values()}), 1.0)
N_CLASSES = len(_BOUNDARIES) + 1
_POW2_CLASS = 1
_VALID = slice(1, N_CLASSES - 1)

#: Bucket ranges: every nonzero float32 (and fp16/bf16) magnitude, and every float64 one.
RANGE_FP32 = (-149, 127)
RANGE_FP64 = (-1074, 1023)
N_HEADROOM = len(HEADROOM_STATS)

#: Elements processed at once by the exact path (bounds the temporaries of a pass).
CHUNK_NUMEL = 1 << 22

# float32 bit patterns
_EXP_MASK = 0x7F800000
_MANT_MASK = 0x007FFFFF
_ABS_MASK = 0x7FFFFFFF
_FIELD_BIAS = 127


def _f32_bits(value: float) -> int:
    import struct

    return struct.unpack("<i", struct.pack("<f", value))[0]


#: The exponent field of each format's underflow edge (a normal float32: half the
#: smallest subnormal of fp16, fp8; bf16's lies among float32's subnormals).
_EDGE_FIELD = {f: e + _FIELD_BIAS for f, e in UNDERFLOW_LOG2.items()}
#: ``(field, bit pattern)`` of each overflow format's largest value.
_MAX_FIELD = {f: (q + _FIELD_BIAS, _f32_bits(float(torch.finfo(FORMATS[f]).max))) for f, (q, _) in
              OVERFLOW_SPLIT.items()}


def bucket_range(dtypes: Sequence[torch.dtype]) -> tuple[int, int]:
    """``(lowest, highest)`` bucket that gradients of these dtypes can fill."""
    return RANGE_FP64 if torch.float64 in dtypes or torch.complex128 in dtypes else RANGE_FP32


def log2_counts(grads: Sequence[Tensor], scale: Tensor | float | None = None,
                bucket_lo: int | None = None, bucket_hi: int | None = None) -> Tensor:
    """Log2 histogram and headroom counts of each gradient.

    Float32, fp16 and bf16 gradients are read as float32 bit patterns (on the CPU all of
    them in one pass of the C kernel, :func:`native.exponent_counts`, with no float32 copy;
    elsewhere one ``bincount`` of the sign and exponent bits per tensor): the counts per
    exponent field give the buckets of normal numbers,
    and the few elements whose mantissa bits are all zero (exact powers of two,
    zeros, infinities) are picked out for the ties at the underflow edges. A tensor
    with subnormal elements, or with elements in a bucket that holds a format's
    largest value, gets those counted exactly on the side. Float64 gradients go
    through ``torch.frexp`` and a mantissa classification.

    Args:
        grads: dense or sparse (COO) gradients of any floating or complex dtype, on one device.
        scale: multiply the gradients by this first (a loss scale), in float32.
        bucket_lo, bucket_hi: the bucket range (default :func:`bucket_range`).

    Returns:
        int64 ``[len(grads), n_buckets + len(HEADROOM_STATS)]`` on the gradients'
        device: the counts of buckets ``bucket_lo .. bucket_hi``, then the elements
        that underflow each format and overflow each overflow format
        (:func:`histogram` and :func:`headroom_counts` split it).
    """
    if bucket_lo is None or bucket_hi is None:
        bucket_lo, bucket_hi = bucket_range([g.dtype for g in grads])
    n_buckets = bucket_hi - bucket_lo + 1
    device = grads[0].device if grads else torch.device("cpu")
    out = torch.zeros((len(grads), n_buckets + N_HEADROOM), dtype=torch.int64, device=device)
    if scale is not None:
        scale = torch.as_tensor(scale, dtype=torch.float32).to(device)
    fast: list[tuple[int, Tensor, Tensor | None, Tensor, Tensor]] = []  # (i, flat, scaled values, by_field, pow2)
    by_native: list[tuple[int, Tensor]] = []
    use_native = device.type == "cpu" and native.library() is not None
    for i, g in enumerate(grads):
        values = flat_in_memory_order(g.coalesce().values() if g.is_sparse else g)  # a channels-last gradient: no copy
        if values.numel() == 0:
            continue
        if values.is_complex():
            out[i] = _complex_counts(values, scale, bucket_lo, bucket_hi)
            continue
        if values.dtype == torch.float64:
            out[i] = _exact(values * scale.double() if scale is not None else values, bucket_lo, bucket_hi)
            continue
        if (use_native and values.dtype in native.HIST_DTYPES and values.is_contiguous()
                and native.kind_taken(type(values), values.dtype, values.layout, values.device, values.numel())):
            by_native.append((i, values))
            continue
        scaled = values.float() * scale if scale is not None else values.float()
        by_field, pow2 = _fp32_pass(scaled)
        fast.append((i, values, scaled, by_field, pow2))
    if by_native:  # one pass of the C kernel over all of them, no float32 copy
        counts = torch.from_numpy(native.exponent_counts(
            [v for _, v in by_native], None if scale is None else float(scale), _TIE_MASK, _TIE_PATTERN)).long()
        for (i, values), row in zip(by_native, counts):
            pow2 = row[256:512].clone()
            if _TIE_PATTERN:
                pow2[0] = row[512]
            fast.append((i, values, None, row[:256], pow2))
    if not fast:
        return out
    by_field = torch.stack([f for *_, f, _ in fast])
    pow2 = torch.stack([p for *_, p in fast])
    rows = [i for i, *_ in fast]
    out[rows] = _assemble(by_field, pow2, bucket_lo, bucket_hi)
    # exact counts on the side, decided with one look at the counts (one sync on an accelerator)
    subnormal = (by_field[:, 0] - pow2[:, 0]) > 0
    partial = torch.stack([by_field[:, field] > 0 for field, _ in _MAX_FIELD.values()], dim=1)
    flags = torch.cat([subnormal[:, None], partial], dim=1).cpu().tolist()
    for (i, flat, values, _, _), (has_subnormal, *has_partial) in zip(fast, flags):
        if (has_subnormal or any(has_partial)) and values is None:
            values = flat.float() * scale if scale is not None else flat.float()
        if has_subnormal:
            bits = values.view(torch.int32)
            out[i] += _exact(values[(bits & _EXP_MASK) == 0], bucket_lo, bucket_hi)
        if any(has_partial):
            abits = values.view(torch.int32) & _ABS_MASK
            for k, (fmt, (field, max_bits)) in enumerate(_MAX_FIELD.items()):
                if has_partial[k]:
                    col = n_buckets + HEADROOM_STATS.index(f"{fmt}_overflow")
                    in_field = abits < ((field + 1) << 23)  # the higher fields are counted already
                    out[i, col] += ((abits > max_bits) & in_field).sum()
    return out


def _complex_counts(values: Tensor, scale: Tensor | None, lo: int, hi: int) -> Tensor:
    """Histogram and headroom counts ``[n_buckets + N_HEADROOM]`` of a 1-d complex tensor
    (see the module docstring): the histogram of ``|g|``, the headroom part by part."""
    if scale is not None:
        values = values * (scale.double() if values.dtype == torch.complex128 else scale)
    out = log2_counts([values.abs()], None, lo, hi)[0]
    n_buckets = hi - lo + 1
    head = torch.zeros(N_HEADROOM, dtype=torch.int64, device=values.device)
    for start in range(0, values.numel(), CHUNK_NUMEL):
        parts = torch.view_as_real(values[start : start + CHUNK_NUMEL]).abs()  # [n, 2]
        finite = torch.isfinite(parts).all(-1)
        counted = [(parts <= underflow_threshold(d)).all(-1) & (parts != 0).any(-1) for d in FORMATS.values()]
        counted += [(parts > torch.finfo(FORMATS[f]).max).any(-1) for f in OVERFLOW_FORMATS]
        head += torch.stack([(c & finite).sum() for c in counted])
    out[n_buckets:] = head
    return out


def _tie_mask() -> tuple[int, int]:
    """``(mask, pattern)``: ``bits & mask == pattern`` holds for every float32 ``±2**e`` at an
    underflow edge of a normal float32 (and for few other values: exact powers of two
    sharing one exponent bit with all the edges, infinities), never for zeros, so
    picking those elements out costs little even when half a gradient is zero."""
    fields = [f for f in _EDGE_FIELD.values() if f >= 1]
    common = [b for b in range(8) if all(f >> b & 1 for f in fields)]
    bit = (1 << (23 + common[0])) if common else 0  # no common bit: zeros are picked out too
    return _MANT_MASK | bit, bit


_TIE_MASK, _TIE_PATTERN = _tie_mask()


def _fp32_pass(values: Tensor) -> tuple[Tensor, Tensor]:
    """``(by_field, pow2)``: int64 ``[256]`` element counts of a float32 tensor by exponent
    field (either sign; field 0 holds zeros and subnormals), and the exact powers of two
    ``±2**e`` among them at the underflow edges, with the count of zeros in ``pow2[0]``."""
    bits = values.contiguous().view(torch.int32)
    key = bits >> 23  # sign and exponent: -256..255
    key += 256
    counts = torch.bincount(key, minlength=512)
    by_field = counts[:256] + counts[256:]
    ties = bits[(bits & _TIE_MASK) == _TIE_PATTERN]
    pow2 = torch.bincount((ties >> 23) & 0xFF, minlength=256)
    if _TIE_PATTERN:
        pow2[0] = values.numel() - torch.count_nonzero(values)
    return by_field, pow2


def _assemble(by_field: Tensor, pow2: Tensor, lo: int, hi: int) -> Tensor:
    """Histogram and headroom counts ``[R, n_buckets + N_HEADROOM]`` of the normal
    elements from :func:`_fp32_pass` rows (subnormals and partial overflow buckets
    are added by the caller)."""
    n_buckets = hi - lo + 1
    rows = by_field.shape[0]
    out = torch.zeros((rows, n_buckets + N_HEADROOM), dtype=torch.int64, device=by_field.device)
    # fields 1..254 are the buckets -126..127
    first = 1 - _FIELD_BIAS - lo
    out[:, first : first + 254] = by_field[:, 1:255]
    for k, fmt in enumerate(FORMATS):
        field = _EDGE_FIELD[fmt]
        if field >= 1:  # below the edge's bucket, plus the ties at the edge itself
            out[:, n_buckets + k] = by_field[:, 1:field].sum(1) + pow2[:, field]
    for k, (fmt, (field, _)) in enumerate(_MAX_FIELD.items()):
        out[:, n_buckets + len(FORMATS) + k] = by_field[:, field + 1 : 255].sum(1)
    return out


def _exact(values: Tensor, lo: int, hi: int) -> Tensor:
    """Histogram and headroom counts ``[n_buckets + N_HEADROOM]`` of a 1-d tensor of any
    floating dtype, by ``torch.frexp`` and a mantissa classification (float64 gradients,
    and the subnormal elements of float32 ones)."""
    n_buckets = hi - lo + 1
    work = torch.float64 if values.dtype == torch.float64 else torch.float32
    boundaries = torch.tensor(_BOUNDARIES, dtype=work, device=values.device)
    counts = torch.zeros(n_buckets * N_CLASSES, dtype=torch.int64, device=values.device)
    for start in range(0, values.numel(), CHUNK_NUMEL):
        m, x = torch.frexp(values[start : start + CHUNK_NUMEL].to(work))
        cls = torch.bucketize(m.abs_(), boundaries)
        # zeros, NaN and Inf land in classes 0 and N_CLASSES - 1 whatever their exponent
        key = x.clamp_(lo + 1, hi + 1).to(torch.int64).sub_(lo + 1).mul_(N_CLASSES).add_(cls)
        counts += torch.bincount(key, minlength=counts.numel())
    counts = counts.reshape(n_buckets, N_CLASSES)
    hist = counts[:, _VALID].sum(-1)
    head = []
    for fmt in FORMATS:
        edge = UNDERFLOW_LOG2[fmt] - lo  # the bucket whose lower edge rounds to 0
        below = hist[: max(0, min(edge, n_buckets))].sum()
        head.append(below + (counts[edge, _POW2_CLASS] if 0 <= edge < n_buckets else 0))
    for fmt in OVERFLOW_FORMATS:
        q, m_max = OVERFLOW_SPLIT[fmt]
        col = q - lo
        first_above = _BOUNDARIES.index(m_max) + 1  # classes whose mantissa is > m_max
        head.append(hist[col + 1 :].sum() + counts[col, first_above : N_CLASSES - 1].sum())
    return torch.cat([hist, torch.stack([torch.as_tensor(h, device=values.device) for h in head])])


def histogram(counts: Tensor) -> Tensor:
    """``[R, n_buckets]`` log2 histograms from :func:`log2_counts` output (or sums of its rows)."""
    return counts[..., :-N_HEADROOM]


def headroom_counts(counts: Tensor) -> Tensor:
    """``[R, len(HEADROOM_STATS)]``: per row, the elements that underflow each format
    (:data:`FORMATS`) and overflow each of :data:`OVERFLOW_FORMATS`."""
    return counts[..., -N_HEADROOM:]

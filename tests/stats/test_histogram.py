"""Log2 histograms and precision headroom (``gradsight.stats.histogram``) against a slow
reference: ``math.frexp`` element by element for the buckets (NumPy's ``frexp`` in float64
for large tensors), actual casts (``.to(torch.float8_e4m3fn)`` ...) for underflow, float64
comparisons with ``torch.finfo(dtype).max`` for overflow; on every device
(``tests/devices.py``), the references always on the CPU."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from gradsight.stats import histogram as H
from gradsight.stats import native
from gradsight.stats.histogram import (
    FORMATS,
    HEADROOM_STATS,
    OVERFLOW_FORMATS,
    bucket_range,
    headroom_counts,
    histogram,
    log2_counts,
    smallest_subnormal,
)
from tests.devices import DEVICES


def reference_histogram(g: torch.Tensor) -> dict[int, int]:
    """``{e: count}`` of nonzero finite elements with ``2**e <= |x| < 2**(e+1)``, one by one."""
    dense = g.to_dense() if g.is_sparse else g
    out: dict[int, int] = {}
    for x in dense.double().reshape(-1).tolist():
        if x == 0 or not math.isfinite(x):
            continue
        e = math.frexp(abs(x))[1] - 1
        assert Fraction(2) ** e <= Fraction(abs(x)) < Fraction(2) ** (e + 1)  # exact, no overflow
        out[e] = out.get(e, 0) + 1
    return out


def reference_headroom(g: torch.Tensor) -> dict[str, int]:
    """Elements that become 0 when actually cast to each format (nonzero finite ones), and
    finite elements whose magnitude exceeds the format's largest value."""
    dense = (g.to_dense() if g.is_sparse else g).reshape(-1)
    finite_nonzero = torch.isfinite(dense) & (dense != 0)
    out = {}
    for fmt, dtype in FORMATS.items():
        cast = dense.to(dtype).float()
        out[f"{fmt}_underflow"] = int((finite_nonzero & (cast == 0)).sum())
    wide = dense.double().abs()
    for fmt in OVERFLOW_FORMATS:
        out[f"{fmt}_overflow"] = int((torch.isfinite(wide) & (wide > torch.finfo(FORMATS[fmt]).max)).sum())
    return out


def boundary_values() -> torch.Tensor:
    """Every edge that matters, with its float32 neighbours, both signs, plus zeros and NaN/Inf."""
    edges = [2.0**e for e in range(-149, 128)]
    for dtype in FORMATS.values():
        s = smallest_subnormal(dtype)
        info = torch.finfo(dtype)
        edges += [s, s / 2, s * 0.75, s * 1.5, float(info.max), float(info.smallest_normal), float(info.max) * 1.0625]
    edges += [65519.0, 65520.0, 65536.0, 464.0, 480.0, 61440.0, float(torch.finfo(torch.float32).max)]
    base = torch.tensor(edges, dtype=torch.float32)
    up = torch.nextafter(base, torch.tensor(math.inf))
    down = torch.nextafter(base, torch.tensor(0.0))
    values = torch.cat([base, up, down])
    return torch.cat([values, -values, torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan])])


def dense_of(counts: torch.Tensor, lo: int) -> list[dict[int, int]]:
    hist = histogram(counts)
    return [{lo + int(k): int(v) for k, v in enumerate(row.tolist()) if v} for row in hist]


def check(grads: list[torch.Tensor], scale: float | None = None) -> None:
    lo, hi = bucket_range([g.dtype for g in grads])
    counts = log2_counts(grads, None if scale is None else torch.tensor(scale), lo, hi)
    assert counts.shape[0] == len(grads)
    heads = headroom_counts(counts)
    for g, got_hist, got_head in zip(grads, dense_of(counts, lo), heads.tolist()):
        if scale is not None:
            g = (g.to_dense() if g.is_sparse else g).float() * scale
        assert got_hist == reference_histogram(g)
        ref = reference_headroom(g)
        assert dict(zip(HEADROOM_STATS, got_head)) == ref


def test_bucket_edges_and_subnormals_are_exact():
    values = boundary_values()
    check([values])
    assert bool((values == 0).any()) and bool(values.isnan().any())  # zeros and NaN present, left out
    # the smallest float32 subnormal has its own bucket
    lo, hi = bucket_range([torch.float32])
    counts = log2_counts([torch.tensor([2.0**-149, 2.0**-148 * 1.5, 3.0 * 2.0**-149])], None, lo, hi)
    assert dense_of(counts, lo) == [{-149: 1, -148: 2}]


def test_rounding_to_the_smallest_subnormal_is_not_an_underflow():
    for fmt, dtype in FORMATS.items():
        s = smallest_subnormal(dtype)
        half = torch.tensor([s / 2], dtype=torch.float32)
        above = torch.nextafter(half, torch.tensor(1.0))
        assert float(half.to(dtype).float()) == 0.0  # the tie rounds to even: 0
        assert float(above.to(dtype).float()) == s
        lo, hi = bucket_range([torch.float32])
        head = headroom_counts(log2_counts([torch.cat([half, above])], None, lo, hi))[0]
        assert int(head[HEADROOM_STATS.index(f"{fmt}_underflow")]) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_random_wide_range_in_each_gradient_dtype(dtype):
    gen = torch.Generator().manual_seed(0)
    exps = torch.randint(-150, 20, (5000,), generator=gen).float()
    g = (torch.rand(5000, generator=gen) + 0.5) * torch.pow(2.0, exps) * torch.sign(torch.randn(5000, generator=gen))
    g[::97] = 0
    check([g.to(dtype), boundary_values().to(dtype)])


def test_float64_gradients_use_the_float64_range():
    g = torch.tensor([2.0**-1074, 2.0**-1000, 1e-300, 1.0, 2.0**1023, 1e300, 0.0, math.inf], dtype=torch.float64)
    lo, hi = bucket_range([g.dtype])
    assert (lo, hi) == H.RANGE_FP64
    counts = log2_counts([g], None, lo, hi)
    assert dense_of(counts, lo) == [reference_histogram(g)]
    assert int(headroom_counts(counts)[0, HEADROOM_STATS.index("fp16_underflow")]) == 3
    check([g, boundary_values().double()])


def test_sparse_gradients_count_their_stored_values():
    i = torch.tensor([[0, 2, 2, 5], [1, 0, 0, 3]])
    v = torch.tensor([2.0**-30, 3.0, 1.0, 0.0])  # the duplicate entry (2, 0) sums to 4
    g = torch.sparse_coo_tensor(i, v, (6, 4), check_invariants=True)
    check([g, torch.randn(3)])
    lo, hi = bucket_range([g.dtype])
    assert dense_of(log2_counts([g], None, lo, hi), lo) == [{-30: 1, 2: 1}]


def test_a_loss_scale_multiplies_in_float32():
    g = torch.tensor([2.0**-40, 1e-7, 3e-9, 1.0, 0.5, 2.0**-30])
    check([g], scale=65536.0)
    check([g], scale=1000.0)
    lo, hi = bucket_range([torch.float64])
    for grads in ([g], [g.double()]):  # a plain float works as the scale too
        assert torch.equal(log2_counts(grads, 1000.0, lo, hi), log2_counts(grads, torch.tensor(1000.0), lo, hi))


def test_several_tensors_and_chunks_agree_with_one_at_a_time(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(n, generator=gen) * 10.0 ** float(k - 4) for k, n in enumerate([7, 300, 1, 5000, 64])]
    grads[2] = torch.zeros(1)
    grads.append(boundary_values())
    lo, hi = bucket_range([torch.float32])
    whole = log2_counts(grads, None, lo, hi)
    for k, g in enumerate(grads):
        assert torch.equal(whole[k], log2_counts([g], None, lo, hi)[0])
    # the float64 path (frexp, in chunks) agrees with the float32 bit path on the same values
    monkeypatch.setattr(H, "CHUNK_NUMEL", 100)
    wide = log2_counts([g.double() for g in grads], None, lo, hi)
    assert torch.equal(whole, wide)
    check(grads)


def test_subnormal_and_overflow_buckets_are_counted_on_the_side():
    # a tensor with a float32 subnormal, one with elements in the buckets of 448 and 65504
    lo, hi = bucket_range([torch.float32])
    g = torch.tensor([1e-40, 2.0**-134, 2.0**-133, 0.0, 1.0])
    big = torch.tensor([300.0, 448.0, 449.0, 500.0, 60000.0, 65504.0, 65505.0, 1e5, math.inf])
    check([g, big, torch.ones(3)])
    head = dict(zip(HEADROOM_STATS, headroom_counts(log2_counts([big], None, lo, hi))[0].tolist()))
    assert head["fp8e4m3_overflow"] == 6 and head["fp16_overflow"] == 2 and head["fp8e5m2_overflow"] == 4


def test_headroom_of_summed_rows_is_the_headroom_of_the_union():
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(200, generator=gen) * 1e-6, torch.randn(300, generator=gen) * 1e4]
    lo, hi = bucket_range([torch.float32])
    counts = log2_counts(grads, None, lo, hi)
    union = torch.cat(grads)
    assert dense_of(counts.sum(0, keepdim=True), lo) == [reference_histogram(union)]
    assert dict(zip(HEADROOM_STATS, headroom_counts(counts.sum(0, keepdim=True))[0].tolist())) == \
        reference_headroom(union)


def test_thresholds_come_from_the_formats():
    assert H.UNDERFLOW_LOG2 == {"fp16": -25, "bf16": -134, "fp8e4m3": -10, "fp8e5m2": -17}
    for fmt in OVERFLOW_FORMATS:
        q, m = H.OVERFLOW_SPLIT[fmt]
        assert m * 2.0 ** (q + 1) == torch.finfo(FORMATS[fmt]).max


def test_empty_input():
    lo, hi = bucket_range([])
    counts = log2_counts([], None, lo, hi)
    assert counts.shape == (0, hi - lo + 1 + len(HEADROOM_STATS))
    assert headroom_counts(counts).shape == (0, len(HEADROOM_STATS))
    assert np.array_equal(histogram(log2_counts([torch.zeros(3)], None, lo, hi)).numpy(), np.zeros((1, hi - lo + 1)))


def test_channels_last_gradient_counts_equal_the_contiguous_ones():
    g = torch.randn(16, 8, 3, 3) * torch.logspace(-30, 3, 9 * 8 * 16).reshape(16, 8, 3, 3)
    cl = g.contiguous(memory_format=torch.channels_last)
    assert torch.equal(log2_counts([cl]), log2_counts([g]))


def numpy_histogram(g: torch.Tensor, lo: int, hi: int) -> np.ndarray:
    """Counts of buckets ``lo .. hi`` by NumPy on the CPU in float64: ``frexp`` of every nonzero
    finite element (exact for fp16, bf16, float32 and float64 values, subnormals included)."""
    x = g.detach().cpu().double().numpy().reshape(-1)
    _, exponent = np.frexp(np.abs(x[np.isfinite(x) & (x != 0)]))
    return np.bincount(exponent - 1 - lo, minlength=hi - lo + 1)


@pytest.mark.parametrize("path", ["c kernel, 2 threads", "torch"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("scale", [None, 65536.0])
def test_counts_on_each_device_match_numpy_in_float64(device, dtype, scale, path, monkeypatch):
    """Counts taken on the device (the bit-pattern pass: on the CPU the C kernel's, elsewhere or
    without it PyTorch's; subnormals and the buckets of the formats' largest values counted on the
    side, float64 through frexp) equal NumPy's on the CPU: a wide range of magnitudes, every edge,
    a transposed and a channels-last tensor, zeros, an empty one."""
    if path == "torch":
        monkeypatch.setattr(native, "library", lambda: None)
    else:
        assert native.library() is not None, native.error()
        monkeypatch.setattr(native, "THREAD_MIN_NUMEL", 1)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    gen = torch.Generator().manual_seed(3)
    n = 200_000
    exps = torch.randint(-150, 20, (n,), generator=gen).float()
    wide = (torch.rand(n, generator=gen) + 0.5) * torch.pow(2.0, exps) * torch.sign(torch.randn(n, generator=gen))
    wide[::97] = 0
    conv = (torch.randn(32, 16, 3, 3, generator=gen) * 1e-3).contiguous(memory_format=torch.channels_last)
    grads = [wide, boundary_values(), torch.randn(300, 70, generator=gen).t() * 1e-6, conv, torch.zeros(50),
             torch.zeros(0)]
    grads = [g.to(dtype) for g in grads]
    assert not grads[2].is_contiguous() and grads[3].is_contiguous(memory_format=torch.channels_last)
    lo, hi = bucket_range([dtype])
    counts = log2_counts([g.to(device) for g in grads], scale, lo, hi)
    assert counts.device.type == device
    counts = counts.cpu()
    for g, row in zip(grads, counts):
        scaled = g if scale is None else g.to(torch.float64 if dtype == torch.float64 else torch.float32) * scale
        np.testing.assert_array_equal(histogram(row).numpy(), numpy_histogram(scaled, lo, hi))
        assert dict(zip(HEADROOM_STATS, headroom_counts(row).tolist())) == reference_headroom(scaled)
    assert int(histogram(counts[0]).sum()) == int((grads[0] != 0).sum()) - int((~grads[0].isfinite()).sum())

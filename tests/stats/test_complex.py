"""Complex gradients and weights: raw sums of the moduli (``|g|`` the modulus) and log2
histograms with their headroom, against complex128 references element by element, small
(multi-tensor norms) and at >= 65,536 elements (the compiled fused kernel on the CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradsight.stats import native
from gradsight.stats.grad import NONFINITE, RAW_FIELDS, count_nonfinite, raw_sums
from gradsight.stats.histogram import (
    FORMATS,
    HEADROOM_STATS,
    OVERFLOW_FORMATS,
    bucket_range,
    log2_counts,
)

LARGE = 1 << 16  #: elements: a tensor the C kernel takes (the compiled kernel of old dropped the imaginary part there)


def complex_tensor(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """Random complex values; some elements zero in both parts, some in one part only
    (those are not zero), and the first row all zero when there are rows."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)).to(dtype)
    flat = t.view(-1)
    n = flat.numel()
    flat[torch.randperm(n, generator=gen)[: n // 10]] = 0
    real_only = torch.randperm(n, generator=gen)[: n // 10]
    flat[real_only] = torch.complex(torch.zeros(len(real_only)), torch.randn(len(real_only), generator=gen)).to(dtype)
    if len(shape) >= 2:
        t[0] = 0
    return t


def reference_raw(g: torch.Tensor, w: torch.Tensor) -> list[float]:
    """The nine raw sums in complex128, element by element: ``|g|`` is the modulus."""
    g128, w128 = g.to(torch.complex128).reshape(g.shape[0] if g.dim() >= 2 else 1, -1), w.to(torch.complex128)
    mod = g128.abs()
    zero = (g128.real == 0) & (g128.imag == 0)
    rows = g.shape[0] if g.dim() >= 2 else 0
    return [
        float((mod**2).sum()), float(mod.sum()), float(mod.max()), float(zero.sum()),
        float((~torch.isfinite(g128.real) | ~torch.isfinite(g128.imag)).sum()), float(g.numel()),
        float((w128.abs() ** 2).sum()), float(rows), float(zero.all(1).sum()) if rows else 0.0,
    ]


@pytest.mark.parametrize("backend", ["auto", "eager", "fused"])
@pytest.mark.parametrize("numel", [24, LARGE + 1024])
def test_raw_sums_of_complex_tensors_are_those_of_the_moduli(backend, numel):
    """Regression: small complex tensors raised in the norm kernels; the fused kernel dropped
    the imaginary part (sumsq 36 % low at 65,536 elements)."""
    shapes = [(4, numel // 4), (numel,)]
    grads = [complex_tensor(s, seed) for seed, s in enumerate(shapes)]
    weights = [complex_tensor(s, seed + 10) for seed, s in enumerate(shapes)]
    grads.append(torch.randn(5, 3))  # a real one among them
    weights.append(torch.randn(5, 3))
    got = raw_sums(grads, weights, backend=backend).double().numpy()
    for i, (g, w) in enumerate(zip(grads, weights)):
        want = reference_raw(g, w) if g.is_complex() else reference_raw(g.to(torch.complex64), w)
        for k, field in enumerate(RAW_FIELDS):
            if field == "nonfinite" and backend == "eager":
                continue  # left to count_nonfinite (finite sums here)
            assert math.isclose(got[i, k], want[k], rel_tol=1e-5, abs_tol=0), (i, field, got[i, k], want[k])


def test_the_c_kernel_takes_the_complex_tensors_moduli(monkeypatch):
    calls = []
    real = native.raw_sums

    def counting(grads, weights, *known):
        calls.extend(g.dtype for g in grads)
        return real(grads, weights, *known)

    monkeypatch.setattr(native, "raw_sums", counting)
    raw_sums([complex_tensor((LARGE,), 0)], [complex_tensor((LARGE,), 1)], backend="auto")
    assert calls == [torch.float32] and native.library() is not None


@pytest.mark.parametrize("numel", [24, LARGE])
def test_complex128_and_nonfinite_parts(numel):
    """complex128 in float64; an element is non-finite when either part is."""
    g = complex_tensor((numel,), 3, torch.complex128)
    w = complex_tensor((numel,), 4, torch.complex128)
    g[1] = complex(math.inf, 0.0)
    g[2] = complex(0.0, math.nan)
    got = raw_sums([g], [w], backend="auto")
    want = reference_raw(g, w)
    assert count_nonfinite(g) == want[NONFINITE] == 2.0
    assert math.isclose(float(got[0, 6]), want[6], rel_tol=1e-6)  # w_sumsq
    assert not math.isfinite(float(got[0, 0]))  # sumsq: the monitor then counts exactly


def test_sparse_complex_gradient():
    dense = complex_tensor((6, 3), 5)
    g = dense.to_sparse()
    w = complex_tensor((6, 3), 6)
    got = raw_sums([g], [w]).double().numpy()[0]
    want = reference_raw(dense, w)
    for k, field in enumerate(RAW_FIELDS):
        assert math.isclose(got[k], want[k], rel_tol=1e-6), (field, got[k], want[k])


# -- histograms ------------------------------------------------------------------------------


def wide_range_complex(numel: int, seed: int, dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """Moduli from 2**-140 to 2**18 at random phases (every format's underflow and overflow),
    zeros, a part-only-zero element, and non-finite parts."""
    gen = torch.Generator().manual_seed(seed)
    modulus = torch.pow(2.0, torch.empty(numel, dtype=torch.float64).uniform_(-140, 18, generator=gen))
    phase = torch.rand(numel, generator=gen, dtype=torch.float64) * 2 * math.pi
    t = torch.polar(modulus, phase).to(dtype)
    t[:7] = torch.tensor([0, complex(0, 2.0**-30), complex(math.inf, 1), complex(1, math.nan),
                          complex(2.0**-25, 2.0**-25), complex(70000.0, 1.0), complex(3.0, -4.0)], dtype=dtype)
    return t


def reference_complex_counts(g: torch.Tensor, lo: int, hi: int) -> np.ndarray:
    """Buckets of ``|g|`` (the modulus as the tensor's precision gives it) by ``math.frexp``;
    underflow: nonzero finite elements whose parts both become 0 when actually cast;
    overflow: finite elements with a part above the format's largest value."""
    counts = np.zeros(hi - lo + 1 + len(HEADROOM_STATS), dtype=np.int64)
    for x in g.abs().double().tolist():
        if x != 0 and math.isfinite(x):
            counts[math.frexp(x)[1] - 1 - lo] += 1
    parts = torch.view_as_real(g)
    finite = torch.isfinite(parts).all(-1)
    nonzero = (parts != 0).any(-1)
    n_buckets = hi - lo + 1
    for k, dtype in enumerate(FORMATS.values()):
        zero_when_cast = (parts.to(dtype).float() == 0).all(-1)
        counts[n_buckets + k] = int((finite & nonzero & zero_when_cast).sum())
    for k, fmt in enumerate(OVERFLOW_FORMATS):
        above = (parts.double().abs() > torch.finfo(FORMATS[fmt]).max).any(-1)
        counts[n_buckets + len(FORMATS) + k] = int((finite & above).sum())
    return counts


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("numel", [200, LARGE])
def test_log2_counts_of_complex_gradients(dtype, numel):
    """Regression: complex gradients were cast to float32, losing the imaginary part."""
    g = wide_range_complex(numel, 7, dtype)
    lo, hi = bucket_range([g.dtype])
    got = log2_counts([g, torch.randn(9)], None, lo, hi)[0].numpy()
    want = reference_complex_counts(g, lo, hi)
    np.testing.assert_array_equal(got, want)
    assert want[-len(HEADROOM_STATS):].min() > 0  # every headroom count is exercised


def test_log2_counts_of_complex_gradients_times_a_loss_scale():
    g = wide_range_complex(500, 8)
    lo, hi = bucket_range([g.dtype])
    got = log2_counts([g], torch.tensor(1024.0), lo, hi)[0].numpy()
    np.testing.assert_array_equal(got, reference_complex_counts(g * 1024.0, lo, hi))

"""Raw sums and derived statistics (``gradsight.stats.grad``) against a slow float64 NumPy reference.

Each path of :func:`raw_sums` is covered: small dense tensors grouped into one flat
buffer, eager multi-tensor norms, the C kernel (:mod:`gradsight.stats.native`, the CPU
tensors that are not grouped), coalesced sparse gradients, and empty inputs; every backend
on every device (``tests/devices.py``: CUDA where present, where every tensor is eager).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from gradsight.instrument import rows as rows_module
from gradsight.instrument.rows import StepRows
from gradsight.stats import grad as grad_stats
from gradsight.stats import native
from gradsight.stats.grad import (
    DEAD_ROWS,
    GRAD_STATS,
    GROUP_MAX_NUMEL,
    MAXABS,
    NONFINITE,
    NUMEL,
    RAW_FIELDS,
    ROWS,
    SUMSQ,
    W_SUMSQ,
    ZEROS,
    count_nonfinite,
    dead_rows,
    derive_stats,
    raw_sums,
)
from tests.devices import DEVICES

EXACT = (MAXABS, ZEROS, NONFINITE, NUMEL, ROWS, DEAD_ROWS)  #: columns that float32 holds exactly here


def reference_dead_rows(x: np.ndarray) -> tuple[float, float]:
    """``(rows, dead rows)`` of a float64 array: a row is a slice along dim 0 of an array of
    >= 2 dims, dead when every element of it is exactly zero; arrays of fewer dims have none."""
    if x.ndim < 2:
        return 0.0, 0.0
    dead = 0
    for r in range(x.shape[0]):
        if all(v == 0 for v in x[r].reshape(-1).tolist()):
            dead += 1
    return float(x.shape[0]), float(dead)


def reference_raw(g: torch.Tensor, w: torch.Tensor | None) -> np.ndarray:
    """Raw sums of one tensor, element by element in float64 (sparse gradients densified)."""
    dense = g.to_dense() if g.is_sparse else g
    full = dense.detach().to(torch.float64).numpy()
    x = full.reshape(-1)
    row = [
        float(np.sum(x * x)),
        float(np.sum(np.abs(x))),
        float(np.max(np.abs(x))) if x.size else 0.0,
        float(np.count_nonzero(x == 0)),
        float(np.count_nonzero(~np.isfinite(x))),
        float(x.size),
        math.nan if w is None else float(np.sum(w.detach().to(torch.float64).numpy() ** 2)),
        *(reference_dead_rows(full) if x.size else (0.0, 0.0)),
    ]
    return np.array(row)


def reference_stats(raw: np.ndarray, inv_scale: float = 1.0) -> np.ndarray:
    """:data:`GRAD_STATS` of float64 raw-sum rows, written out one formula at a time."""
    out = []
    for sumsq, sumabs, maxabs, zeros, nonfinite, numel, w_sumsq, _rows, _dead in raw:
        sumsq, sumabs, maxabs = sumsq * inv_scale**2, sumabs * inv_scale, maxabs * inv_scale
        n = max(numel, 1.0)
        norm, wnorm = math.sqrt(sumsq), math.sqrt(w_sumsq)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = float(np.float64(norm) / np.float64(wnorm))
        out.append([norm, math.sqrt(sumsq / n), sumabs / n, maxabs, zeros / n, nonfinite, wnorm, ratio])
    return np.array(out)


def assert_raw_close(got: torch.Tensor | np.ndarray, want: np.ndarray, rtol: float = 1e-5) -> None:
    got = got.double().numpy() if isinstance(got, torch.Tensor) else np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape
    for col in range(len(RAW_FIELDS)):
        g, w = got[:, col], want[:, col]
        if col in EXACT:
            np.testing.assert_array_equal(g, w, err_msg=RAW_FIELDS[col])
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=0, equal_nan=True, err_msg=RAW_FIELDS[col])


def _tensors(seed: int, shapes, zero_frac: float = 0.2, dtype=torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        t = torch.randn(shape, generator=gen) * 3
        t[torch.rand(shape, generator=gen) < zero_frac] = 0
        out.append(t.to(dtype))
    return out


class CountingKernel:
    """Stands in for :func:`native.raw_sums`: notes the element counts of the tensors of each
    call, then runs the real one."""

    def __init__(self, real) -> None:
        self.real = real
        self.calls: list[list[int]] = []

    def __call__(self, grads, weights, *known):
        self.calls.append([g.numel() for g in grads])
        return self.real(grads, weights, *known)


@pytest.fixture
def fused(monkeypatch) -> CountingKernel:
    assert native.library() is not None, f"the C kernel was not built: {native.error()}: the eager path was measured"
    kernel = CountingKernel(native.raw_sums)
    monkeypatch.setattr(native, "raw_sums", kernel)
    return kernel


@pytest.fixture
def grouped(monkeypatch) -> None:
    """No C kernel (as on a GPU, or without a C compiler): ``backend="auto"`` groups the small
    tensors (:class:`grad_stats._Segments`) and takes the eager path for the others."""
    monkeypatch.setattr(native, "library", lambda: None)


# -- grouped and eager -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["grouped", "c kernel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_small_tensors_match_float64_reference(dtype, path, monkeypatch):
    """Small tensors, grouped where there is no C kernel, through it (in one call) where there is."""
    calls = []
    if path == "grouped":
        monkeypatch.setattr(native, "library", lambda: None)
    else:
        real = native.raw_sums
        monkeypatch.setattr(native, "raw_sums", lambda *a: calls.append(len(a[0])) or real(*a))
    shapes = [(7, 5), (1,), (3, 4, 2), (130,)]
    grads, weights = _tensors(0, shapes, dtype=dtype), _tensors(1, shapes, zero_frac=0.0)
    got = raw_sums(grads, weights, backend="auto")
    assert got.dtype == torch.float32 and got.shape == (len(shapes), len(RAW_FIELDS))
    assert calls == ([] if path == "grouped" else [len(shapes)])
    assert_raw_close(got, np.stack([reference_raw(g, w) for g, w in zip(grads, weights)]), rtol=1e-5)


def test_float64_gradients_and_weights_among_float32_ones(fused):
    """A float64 model (or part of one): norms may not narrow their input, so float64 tensors
    are reduced in float64 and cast; the result matches the reference like the others."""
    shapes = [(7, 5), (1,), (3, 4, 2), (130,)]
    dtypes = [torch.float64, torch.float32, torch.float64, torch.float32]
    grads = [t.to(d) for t, d in zip(_tensors(0, shapes), dtypes)]
    weights = [t.to(d) for t, d in zip(_tensors(1, shapes, zero_frac=0.0), dtypes)]
    got = raw_sums(grads, weights, backend="auto")
    assert got.dtype == torch.float32
    assert_raw_close(got, np.stack([reference_raw(g, w) for g, w in zip(grads, weights)]), rtol=1e-5)


def test_eager_leaves_nonfinite_to_count_nonfinite():
    g = torch.tensor([1.0, float("nan"), -2.0, float("inf"), 0.0])
    row = raw_sums([g], [torch.ones(5)], backend="eager")[0]
    assert not math.isfinite(float(row[SUMSQ]))  # the signal that counting is needed
    assert float(row[NONFINITE]) == 0.0
    assert count_nonfinite(g) == reference_raw(g, None)[NONFINITE] == 2.0


def test_without_weights_w_sumsq_is_nan():
    grads = _tensors(2, [(4, 3), (5,)])
    got = raw_sums(grads, grads, backend="eager", with_weights=False)
    assert torch.isnan(got[:, W_SUMSQ]).all()
    want = np.stack([reference_raw(g, None) for g in grads])
    assert_raw_close(got, want)


# -- grouped ---------------------------------------------------------------------------


def _many_tiny(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Gradients and weights of 1,500 small tensors of mixed sizes, dims, layouts and dtypes,
    with NaN, +-Inf, zeros, all-zero tensors and rows, among a few that are not grouped."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(), (1,), (5,), (3, 4), (2, 3, 2), (1, 1), (GROUP_MAX_NUMEL,), (16, 16), (4, 3, 2, 2)]
    dtypes = [torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.float64]
    grads, weights = [], []
    for i in range(1_500):
        shape, dtype = shapes[i % len(shapes)], dtypes[i % len(dtypes)]
        g = torch.randn(shape, generator=gen) * 10.0 ** float(torch.randint(-6, 3, (), generator=gen))
        g[torch.rand(shape, generator=gen) < 0.2] = 0
        if i % 7 == 0:
            g.zero_()
        if g.dim() >= 2 and i % 3 == 0:
            g[0] = 0  # a dead row
        w = torch.randn(shape, generator=gen)
        if i % 11 == 0 and g.dim() == 4:  # channels-last, as a small convolution's gradient can be
            g, w = g.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
        if i % 13 == 0 and g.dim() == 2:
            g = g.t().contiguous().t()  # not contiguous
        grads.append(g.to(dtype))
        weights.append(w.to(dtype))
    for i, value in [(2, float("nan")), (3, float("inf")), (40, float("-inf")), (41, float("nan"))]:
        grads[i].view(-1)[0] = value
    grads[42].view(-1)[:2] = torch.tensor([float("nan"), float("inf")])
    # not grouped: empty, larger than GROUP_MAX_NUMEL, sparse
    extra = [torch.zeros(0), torch.randn(GROUP_MAX_NUMEL + 1, generator=gen),
             torch.sparse_coo_tensor(torch.tensor([[0, 2, 2]]), torch.tensor([1.0, -2.0, 0.5]), (4,), check_invariants=True)]
    grads[5:5] = extra
    weights[5:5] = [torch.zeros(0), torch.randn(GROUP_MAX_NUMEL + 1, generator=gen), torch.randn(4, generator=gen)]
    return grads, weights


@pytest.mark.parametrize("path", ["grouped", "c kernel"])
def test_many_tiny_tensors_match_a_float64_per_tensor_reference(path, monkeypatch):
    if path == "grouped":
        monkeypatch.setattr(native, "library", lambda: None)
    grads, weights = _many_tiny(30)
    got = raw_sums(grads, weights, backend="auto")
    want = np.stack([reference_raw(g, w) for g, w in zip(grads, weights)])
    bad = want[:, NONFINITE] > 0
    assert bad.sum() == 5
    assert not np.isfinite(got[:, SUMSQ].numpy()[bad]).any()  # the signal for count_nonfinite
    assert (got[:, NONFINITE] == 0).all()  # as the eager path: counted only where the norm is not finite
    assert [count_nonfinite(grads[i]) for i in np.flatnonzero(bad)] == want[bad, NONFINITE].tolist()
    want[:, NONFINITE] = 0
    grouped = np.ones(len(grads), dtype=bool)
    grouped[5:8] = False  # the extra ones
    # grouped: summed in float64, only the float32 rounding; the C kernel adds float32 lanes
    assert_raw_close(got[grouped], want[grouped], rtol=2e-7 if path == "grouped" else 1e-6)
    assert_raw_close(got[~grouped], want[~grouped], rtol=1e-5)
    assert (want[:, DEAD_ROWS] > 0).sum() > 100 and (want[:, ZEROS] == want[:, NUMEL]).sum() > 100
    stats = derive_stats(got).numpy()  # grad_abs_max is NaN where a NaN is, inf where only an inf is
    np.testing.assert_array_equal(stats[:, 3], want[:, MAXABS])


@pytest.mark.usefixtures("grouped")
def test_many_tiny_tensors_are_reduced_together_not_one_by_one(monkeypatch):
    """Thousands of tiny parameters: a multi-tensor norm pass costs per tensor, not per
    element, and it was taken five times a step; the grouped path hands no tensor to it."""
    per_tensor: list[int] = []
    real = torch._foreach_norm

    def counting(tensors, *args, **kwargs):
        per_tensor.append(len(tensors))
        return real(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_norm", counting)
    grads = [torch.randn(()) for _ in range(1_000)] + [torch.randn(3) for _ in range(1_000)]
    weights = [torch.randn(g.shape) for g in grads]
    got = raw_sums(grads, weights)
    sumsq = grad_stats.sumsq_fp32(weights)
    assert per_tensor == []
    assert_raw_close(got, np.stack([reference_raw(g, w) for g, w in zip(grads, weights)]), rtol=2e-7)
    np.testing.assert_allclose(sumsq.double().numpy(), [float(w.double().pow(2).sum()) for w in weights], rtol=2e-7)


@pytest.mark.parametrize("path", ["grouped", "c kernel"])
def test_a_changed_shape_dtype_or_layout_is_planned_again(path, monkeypatch):
    """The plan is cached per list of kinds of tensors; a tensor whose rows, dtype or layout
    changed (same element count) gets a new plan, not the old segments (or the C kernel's rows)."""
    if path == "grouped":
        monkeypatch.setattr(native, "library", lambda: None)
    grads = [torch.randn(2, 6), torch.randn(4)]
    weights = [torch.randn(2, 6), torch.randn(4)]
    first = raw_sums(grads, weights)
    assert first[:, ROWS].tolist() == [2.0, 0.0]
    for grads2, weights2 in [
        ([torch.zeros(3, 4), torch.randn(4)], [torch.randn(3, 4), torch.randn(4)]),  # rows 2 -> 3
        ([torch.zeros(2, 6).double(), torch.randn(4)], [torch.randn(2, 6).double(), torch.randn(4)]),
        ([torch.zeros(2, 6).to_sparse(), torch.randn(4)], [torch.randn(2, 6), torch.randn(4)]),
    ]:
        got = raw_sums(grads2, weights2)
        assert_raw_close(got, np.stack([reference_raw(g, w) for g, w in zip(grads2, weights2)]), rtol=2e-7)


# -- fused -----------------------------------------------------------------------------


def test_cpu_tensors_take_the_c_kernel_in_one_call_and_match_the_reference(fused):
    n = 1 << 16
    shapes = [(n,), (3, n // 2 + 1), (10,), (1000,), (40, 9)]
    grads, weights = _tensors(3, shapes), _tensors(4, shapes, zero_frac=0.0)
    grads[1][0, 5] = float("nan")
    grads[1][2, 7] = float("-inf")
    got = raw_sums(grads, weights, backend="auto")
    assert fused.calls == [[n, 3 * (n // 2 + 1), 10, 1000, 360]]  # one call, the small one too
    want = np.stack([reference_raw(g, w) for g, w in zip(grads, weights)])
    assert want[1, NONFINITE] == 2.0
    want[:, NONFINITE] = 0  # left to count_nonfinite, below
    assert_raw_close(got, want, rtol=1e-5)
    # as on the eager path, NaN/Inf are counted where the sum of squares says there are some
    assert not math.isfinite(float(got[1, SUMSQ])) and count_nonfinite(grads[1]) == 2.0
    assert math.isnan(float(got[1, MAXABS])) and math.isnan(float(reference_raw(grads[1], None)[MAXABS]))


PART = 4096  #: the C kernel's part (GS_PART in _native.c): sums in float32 lanes over at most this many elements


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_c_kernel_reads_rows_in_parts_and_splits_them_across_threads_with_the_same_sums(
        dtype, threads, fused, monkeypatch):
    """Rows longer than a part, a row length no vector width divides, 1-d tensors of several
    parts, a channels-last gradient (its rows are blocks of memory in another order), a dead
    row, a row zero in one part only (alive), the max in a row's last part, a NaN row (alive),
    -Inf; one thread and two (the elements split at row and part boundaries, inside tensors):
    every sum, count and maximum equal a float64 reference."""
    monkeypatch.setattr(native, "THREAD_MIN_NUMEL", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        shapes = [(5, 3 * PART), (3, 4099), (2 * PART + 37,), (8, 6, 3, 3), (300, 11), (33,), (1, 70000)]
        grads, weights = _tensors(15, shapes, zero_frac=0.3), _tensors(16, shapes, zero_frac=0.0)
        grads[0][1] = 0
        grads[0][3, :PART] = 0  # zero in one part only: alive
        grads[1][2] = 0
        grads[0][4, 2 * PART + 7] = -50.0  # the max in the last part
        grads[3] = grads[3].to(memory_format=torch.channels_last)
        weights[3] = weights[3].to(memory_format=torch.channels_last)
        grads[3][2] = 0
        grads[4][7] = 0
        grads[4][8, 3] = float("nan")  # with NaN: alive
        grads[4][8, 4:] = 0
        grads[6][0, 12345] = float("-inf")
        grads, weights = [g.to(dtype) for g in grads], [w.to(dtype) for w in weights]
        got = raw_sums(grads, weights, backend="fused")
    finally:
        torch.set_num_threads(before)
    assert [len(c) for c in fused.calls] == [len(shapes)]
    want = np.stack([reference_raw(g, w) for g, w in zip(grads, weights)])
    assert list(want[:, DEAD_ROWS]) == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0] and float(got[0, MAXABS]) == 50.0
    want[:, NONFINITE] = 0
    assert_raw_close(got, want, rtol=1e-5)


def test_the_c_kernels_columns_are_the_raw_sums_it_fills():
    """``_native_rows`` copies the kernel's first columns into the raw sums' first ones."""
    k = grad_stats.DEAD_ROWS_COLUMN
    assert native.FIELDS[:k] == RAW_FIELDS[:k] and native.FIELDS[k] == "dead_rows"


def test_c_kernel_reads_every_float16_value_exactly():
    """Every float16 bit pattern (subnormals, -0, the largest finite, infinities, NaNs) read
    as the number it is: the sums of the finite ones equal float64 sums, and with the others
    the sums are NaN and the zeros are counted (+0 and -0)."""
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.float16)
    finite = every[torch.isfinite(every)].clone()
    (got,) = native.raw_sums([finite], None)
    f64 = finite.double()
    assert got[1] == pytest.approx(float(f64.abs().sum()), rel=1e-7)
    assert got[0] == pytest.approx(float(f64.square().sum()), rel=1e-6)
    assert got[2] == 65504.0 and got[3] == 2.0
    tiny = finite[(finite != 0) & (finite.abs() < 2.0**-14)]  # the subnormals: none is read as 0
    assert len(tiny) == 2 * 1023 and native.raw_sums([tiny], None)[0][3] == 0.0
    (with_nan,) = native.raw_sums([every.clone()], None)
    assert math.isnan(with_nan[0]) and math.isnan(with_nan[2]) and with_nan[3] == 2.0


def test_fused_backend_equals_eager_on_small_tensors():
    grads, weights = _tensors(5, [(9, 4), (17,)]), _tensors(6, [(9, 4), (17,)], zero_frac=0.0)
    fused = raw_sums(grads, weights, backend="fused")
    eager = raw_sums(grads, weights, backend="eager")
    torch.testing.assert_close(fused, eager, rtol=1e-6, atol=0)


# -- every device ----------------------------------------------------------------------


def _every_kind(seed: int, dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Gradients and weights in ``dtype`` of every kind a step hands :func:`raw_sums`: large 1-d
    and 2-d ones, a transposed one (not contiguous: eager), a
    channels-last convolution's, an all-zero one, an empty one, one with NaN and +Inf, one
    with -Inf and a dead row, and small ones (grouped)."""
    n = 1 << 16
    shapes = [(n + 3,), (96, 700), (700, 96), (128, 64, 3, 3), (37, 5), (0,), (5000,), (300, 11), (7, 3), (9,)]
    grads, weights = _tensors(seed, shapes), _tensors(seed + 1, shapes, zero_frac=0.0)
    grads[2], weights[2] = grads[2].t(), weights[2].t()
    grads[3] = grads[3].contiguous(memory_format=torch.channels_last)
    weights[3] = weights[3].contiguous(memory_format=torch.channels_last)
    grads[4].zero_()
    grads[6][[3, 77]] = float("nan")
    grads[6][100] = float("inf")
    grads[7][2, 5] = float("-inf")
    grads[7][4] = 0
    return [g.to(dtype) for g in grads], [w.to(dtype) for w in weights]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["fused", "eager", "auto"])
def test_raw_sums_on_each_device_match_a_float64_reference(device, dtype, backend, fused):
    """Every backend on every device, in every gradient dtype, against the float64 sums of the
    same values on the CPU: non-contiguous, channels-last, empty, all-zero and NaN/Inf tensors."""
    grads, weights = _every_kind(40, dtype)
    assert not grads[2].is_contiguous() and grads[3].is_contiguous(memory_format=torch.channels_last)
    on_device = [g.to(device) for g in grads], [w.to(device) for w in weights]
    assert on_device[0][2].stride() == grads[2].stride()  # moved as they are, not made contiguous
    got = raw_sums(*on_device, backend=backend)
    assert got.device.type == device
    got = got.cpu()
    want = np.stack([reference_raw(g, w) for g, w in zip(grads, weights)])
    if backend != "eager" and device == "cpu":  # the C kernel takes the dense ones, not the transposed one
        (taken,) = fused.calls
        assert taken == [g.numel() for g in on_device[0] if native.takes(g)]  # what takes() says, in order
        assert 65539 in taken and taken.count(96 * 700) == 1 and 0 not in taken
        assert 7 * 3 in taken  # the small ones too (grouped only without the C kernel)
    else:
        assert fused.calls == []
    # every path counts NaN/Inf only where a norm is not finite (count_nonfinite)
    bad = np.flatnonzero(~np.isfinite(got[:, SUMSQ].numpy()))
    assert bad.tolist() == [6, 7]
    assert [count_nonfinite(on_device[0][i]) for i in bad] == want[bad, NONFINITE].tolist() == [3.0, 1.0]
    want[:, NONFINITE] = 0
    assert_raw_close(got, want, rtol=1e-4)  # float32 sums over ~10^5 elements
    assert want[4, DEAD_ROWS] == 37 and want[7, DEAD_ROWS] == 1  # dead rows counted exactly, above


# -- sparse ----------------------------------------------------------------------------


def test_sparse_gradient_with_duplicates_and_explicit_zeros():
    indices = torch.tensor([[0, 3, 3, 7, 9], [1, 0, 0, 2, 2]])
    values = torch.tensor([1.5, -2.0, 0.5, 0.0, float("nan")])
    g = torch.sparse_coo_tensor(indices, values, (10, 4), check_invariants=True)  # not coalesced: (3, 0) twice
    w = torch.randn(10, 4)
    for backend in ("auto", "eager", "fused"):
        got = raw_sums([g], [w], backend=backend)
        assert_raw_close(got, reference_raw(g, w)[None])
    assert count_nonfinite(g) == 1.0


def test_sparse_gradient_without_values():
    g = torch.sparse_coo_tensor(torch.zeros((2, 0), dtype=torch.long), torch.zeros(0), (3, 5), check_invariants=True)
    w = torch.ones(3, 5)
    got = raw_sums([g], [w])
    assert_raw_close(got, reference_raw(g, w)[None])
    assert float(got[0, ZEROS]) == 15.0 and float(got[0, MAXABS]) == 0.0


# -- empty -----------------------------------------------------------------------------


def test_no_tensors_gives_zero_rows():
    got = raw_sums([], [])
    assert got.shape == (0, len(RAW_FIELDS))
    assert derive_stats(got).shape == (0, len(GRAD_STATS))


@pytest.mark.parametrize("backend", ["eager", "fused"])
def test_empty_tensor_among_others(backend):
    grads = [torch.zeros(0), *_tensors(7, [(6,)])]
    weights = [torch.zeros(0), torch.ones(6)]
    got = raw_sums(grads, weights, backend=backend)
    assert_raw_close(got, np.stack([reference_raw(g, w) for g, w in zip(grads, weights)]))
    stats = derive_stats(got)[0]
    # numel 0: means are 0 (not NaN); the weight norm is 0, so the ratio is 0/0
    assert stats[:6].tolist() == [0.0] * 6 and float(stats[6]) == 0.0 and math.isnan(float(stats[7]))


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="differ in length"):
        raw_sums([torch.ones(2)], [])


# -- dead rows -------------------------------------------------------------------------


def _with_dead_rows(seed: int, shapes, dead: dict[int, list[int]]) -> list[torch.Tensor]:
    """Random gradients (some zero elements) whose listed rows (along dim 0) are all zero."""
    grads = _tensors(seed, shapes, zero_frac=0.3)
    for i, rows in dead.items():
        grads[i][rows] = 0
    return grads


@pytest.mark.parametrize("backend", ["eager", "fused", "auto"])
def test_dead_rows_match_a_float64_count(backend):
    shapes = [(6, 3, 3, 3), (5, 4), (7,), (4, 1), (3, 2, 2), (2, 1 << 16)]
    grads = _with_dead_rows(12, shapes, {0: [1, 4], 1: [0, 1, 2, 3, 4], 2: [0, 1], 4: [2], 5: [1]})
    grads[3][:] = 0.0
    grads[3][2, 0] = 1.0  # one live row among zeros
    weights = _tensors(13, shapes, zero_frac=0.0)
    got = raw_sums(grads, weights, backend=backend)
    want = np.stack([reference_raw(g, w) for g, w in zip(grads, weights)])
    assert_raw_close(got, want, rtol=1e-4)
    assert got[:, DEAD_ROWS].tolist() == [2.0, 5.0, 0.0, 3.0, 1.0, 1.0]
    assert got[:, ROWS].tolist() == [6.0, 5.0, 0.0, 4.0, 3.0, 2.0]  # a vector has no rows


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dead_rows_in_low_precision_and_nan_rows_are_alive(dtype):
    g = torch.randn(5, 8)
    g[[0, 3]] = 0
    g[1] = 0
    g[1, 2] = float("nan")  # not zero: a NaN row is not dead
    got = raw_sums([g.to(dtype)], [torch.ones(5, 8)], backend="eager")
    assert float(got[0, DEAD_ROWS]) == reference_dead_rows(g.double().numpy())[1] == 2.0


def test_dead_rows_of_a_channels_last_convolution_gradient():
    g = torch.randn(8, 4, 3, 3)
    g[[2, 5]] = 0
    cl = g.contiguous(memory_format=torch.channels_last)
    got = raw_sums([cl], [torch.ones_like(cl)], backend="eager")
    assert_raw_close(got, reference_raw(g, torch.ones_like(g))[None])


def test_dead_rows_of_a_sparse_embedding_gradient():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([[1, 3, 3], [7, 1, 0]])).sum().backward()
    g = emb.weight.grad
    got = raw_sums([g], [emb.weight])
    assert_raw_close(got, reference_raw(g, emb.weight)[None])
    assert float(got[0, DEAD_ROWS]) == 10 - 4  # tokens 0, 1, 3, 7 got a gradient


def test_dead_rows_statistic_is_nan_without_rows():
    grads = [torch.zeros(4, 2), torch.zeros(3), torch.randn(2, 2)]
    raw = raw_sums(grads, grads, backend="eager")
    rows = StepRows([0, 1, 2], np.array([0, 0, 1]), 3, torch.device("cpu"))
    got = dead_rows(rows.stack_host(raw.numpy(), maxima=(MAXABS,))).tolist()
    assert got[:3] == [4.0, got[1], 0.0] and math.isnan(got[1])
    assert got[3:6] == [4.0, 0.0, 4.0]  # layers 0 and 1 (2 has no parameter: no row), the model


# -- derived statistics and aggregation ------------------------------------------------------------


@pytest.mark.parametrize("inv_scale", [None, 1 / 1024])
def test_derived_statistics_match_the_formulas(inv_scale):
    shapes = [(5, 5), (12,), (3,)]
    grads, weights = _tensors(8, shapes), _tensors(9, shapes, zero_frac=0.0)
    weights[2] = torch.zeros(3)  # ratio with a zero weight norm: inf
    raw = raw_sums(grads, weights, backend="eager")
    scale = None if inv_scale is None else torch.tensor(inv_scale)
    got = derive_stats(raw, scale).double().numpy()
    want = reference_stats(raw.double().numpy(), 1.0 if inv_scale is None else inv_scale)
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
    assert math.isinf(got[2, GRAD_STATS.index("grad_weight_ratio")])


@pytest.mark.parametrize("dense", [True, False])
def test_layer_and_model_rows_are_the_raw_sums_of_their_parameters_together(dense, monkeypatch):
    """A layer's row (sums added, ``maxabs`` the maximum) is what the raw sums of its
    parameters' elements taken as one tensor are; by a product with the membership matrix
    or, for many rows, by ``np.add.at``."""
    if not dense:
        monkeypatch.setattr(rows_module, "_DENSE_MAX", 0)
    shapes = [(4,), (9,), (2, 3), (5,)]
    grads = _tensors(10, shapes)
    weights = _tensors(11, shapes, zero_frac=0.0)
    raw = raw_sums(grads, weights, backend="eager")
    rows = StepRows([0, 1, 2, 3], np.array([1, 0, 1, 1]), 3, torch.device("cpu"))
    assert (rows._members is not None) == dense
    got = rows.stack_host(raw.numpy(), maxima=(MAXABS,))
    assert_raw_close(got[:4], raw.numpy())
    for row, members in ((4, [1]), (5, [0, 2, 3]), (6, [0, 1, 2, 3])):  # layers 0 and 1, the model
        g = torch.cat([grads[i].reshape(-1) for i in members])
        w = torch.cat([weights[i].reshape(-1) for i in members])
        want = reference_raw(g, w)
        want[[ROWS, DEAD_ROWS]] = sum(reference_raw(grads[i], None)[[ROWS, DEAD_ROWS]] for i in members)  # rows add
        assert_raw_close(got[row : row + 1], want[None])


def test_a_model_row_of_many_rows_is_their_float64_sum():
    """The model row of 20,000 scalar parameters adds 20,000 raw-sum rows (in float64)."""
    gen = torch.Generator().manual_seed(21)
    raw = raw_sums([torch.randn((), generator=gen) for _ in range(20_000)],
                   [torch.randn((), generator=gen) for _ in range(20_000)])
    rows = StepRows(range(20_000), np.arange(20_000), 20_000, torch.device("cpu"))
    assert rows._members is None  # (too many for a dense product)
    got = rows.stack_host(raw.numpy(), maxima=(MAXABS,))[-1]
    want = raw.double().sum(0).numpy()
    want[MAXABS] = float(raw[:, MAXABS].max())
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_without_the_c_kernel_every_tensor_goes_eager_and_fused_says_so_once(monkeypatch, caplog):
    """No compiler (or a failed build): the same sums from the eager path, said once at WARNING
    with ``backend="fused"``, not at all with ``"auto"``."""
    grads, weights = _tensors(14, [(40, 50), (3000,)]), _tensors(15, [(40, 50), (3000,)], zero_frac=0.0)
    want = raw_sums(grads, weights, backend="eager")
    monkeypatch.setattr(native, "_LIBRARY", native._Library())
    monkeypatch.setattr(native, "_compiler", lambda: None)
    monkeypatch.setattr(native, "cache_dir", lambda: Path(os.devnull) / "none")
    monkeypatch.setattr(native, "_fallback_dir", lambda: Path(os.devnull) / "none")
    monkeypatch.setattr(grad_stats, "_warned_native", False)
    with caplog.at_level("INFO", logger="gradsight"):
        for backend in ("auto", "fused", "fused"):
            torch.testing.assert_close(raw_sums(grads, weights, backend=backend), want, rtol=0, atol=0)
    said = [r for r in caplog.records if "unavailable" in r.getMessage() and r.levelname == "WARNING"]
    assert len(said) == 1 and "no C compiler" in said[0].getMessage()


def test_gradsight_native_0_turns_the_c_kernel_off(monkeypatch):
    """``GRADSIGHT_NATIVE=0``: no library (nothing built or loaded), the eager path's sums."""
    grads, weights = _tensors(17, [(30, 20), (500,)]), _tensors(18, [(30, 20), (500,)], zero_frac=0.0)
    monkeypatch.setattr(native, "_LIBRARY", native._Library())
    monkeypatch.setenv("GRADSIGHT_NATIVE", "0")
    assert native.library() is None and native.error() == "GRADSIGHT_NATIVE=0"
    torch.testing.assert_close(raw_sums(grads, weights, backend="fused"), raw_sums(grads, weights, backend="eager"),
                               rtol=0, atol=0)


def test_the_c_kernel_is_built_where_it_can_be_written_and_a_slow_build_is_said_once(monkeypatch, tmp_path, caplog):
    """An unwritable cache folder: the library is built in the user's temporary folder
    instead, and loaded from there; a build slower than SLOW_BUILD_S is said in one line."""
    monkeypatch.setattr(native, "_LIBRARY", native._Library())
    monkeypatch.setattr(native, "cache_dir", lambda: Path(os.devnull) / "cache")  # (not a folder: unwritable)
    monkeypatch.setattr(native, "_fallback_dir", lambda: tmp_path / "fallback")
    monkeypatch.setattr(native, "SLOW_BUILD_S", 0.0)
    with caplog.at_level("WARNING", logger="gradsight"):
        assert native.library() is not None, native.error()
    assert [p.suffix for p in (tmp_path / "fallback").iterdir()] == [".so"]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("gradsight: building the statistics kernel took")
    g = torch.randn(40, 50)
    np.testing.assert_allclose(native.raw_sums([g], None)[0, 0], float(g.double().square().sum()), rtol=1e-6)
    monkeypatch.setattr(native, "_LIBRARY", native._Library())  # a new process: loads it, says nothing
    caplog.clear()
    assert native.library() is not None and caplog.records == []


def _openmp_runtimes_mapped() -> set[str]:
    """Every mapped file that looks like an OpenMP runtime (GNU, LLVM or Intel's)."""
    with open("/proc/self/maps") as f:
        paths = {line.split(None, 5)[-1].strip() for line in f if ".so" in line}
    return {p for p in paths if re.search(r"gomp|libomp|iomp", Path(p).name)}


@pytest.mark.skipif(native.openmp_runtime() is None, reason="PyTorch loaded no OpenMP runtime here")
def test_the_c_kernel_takes_its_threads_from_the_openmp_runtime_pytorch_loaded():
    """Not a second runtime (a second pool of threads competing with PyTorch's for the cores)."""
    assert native.library() is not None, native.error()
    assert native.uses_openmp()
    assert _openmp_runtimes_mapped() == {str(native.openmp_runtime())}


@pytest.mark.parametrize("runtime", [None, "missing"])
def test_without_an_openmp_runtime_the_c_kernel_splits_the_work_across_posix_threads_alike(
        runtime, monkeypatch, tmp_path):
    """No runtime found, or one that cannot be linked against (a file gone): the same shares,
    so the same sums to the last bit, from threads of its own."""
    monkeypatch.setattr(native, "THREAD_MIN_NUMEL", 1)
    shapes = [(5, 3 * PART), (2 * PART + 37,), (300, 11), (1, 70000)]
    grads = _tensors(17, shapes, zero_frac=0.3)
    grads[2][4] = 0
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = native.raw_sums(grads, grads)
        monkeypatch.setattr(native, "_LIBRARY", native._Library())
        monkeypatch.setattr(native, "openmp_runtime", lambda: None if runtime is None else tmp_path / "libgomp.so.1")
        monkeypatch.setattr(native, "cache_dir", lambda: tmp_path)
        assert native.library() is not None, native.error()
        assert not native.uses_openmp()
        again = native.raw_sums(grads, grads)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(again, first)
    want = np.stack([reference_raw(g, g) for g in grads])
    np.testing.assert_allclose(again[:, 0], want[:, SUMSQ], rtol=1e-6)
    np.testing.assert_array_equal(again[:, 4], want[:, DEAD_ROWS])


BUILD_SCRIPT = textwrap.dedent(
    """
    import time
    import torch
    from torch import nn
    import gradsight as gs
    from gradsight.stats import native

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.AdamW(model.parameters())
    with gs.watch(model, RUN_DIR, optimizer=optimizer) as monitor:
        for _ in range(2):
            model(torch.randn(8, 512)).pow(2).mean().backward()
            monitor.step()
            optimizer.step()
            optimizer.zero_grad()
    assert native.library() is not None, native.error()
    print("ok")
    """
)


@pytest.mark.slow
def test_a_fresh_process_builds_the_c_kernel_once_and_the_next_loads_it(tmp_path):
    """The first process on a machine (an empty cache) builds the library at its first
    recorded step, printing nothing; the next one loads it without a compiler (CC names a
    program that fails: a build would have made the kernel unavailable)."""
    env = {**os.environ, "GRADSIGHT_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path / "tmp"),
           "OMP_NUM_THREADS": "1"}
    (tmp_path / "tmp").mkdir()
    for k, run in enumerate(("first", "second")):
        script = f"RUN_DIR = {str(tmp_path / run)!r}\n" + BUILD_SCRIPT
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                              check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ok" and done.stderr == ""
        built = sorted(p.name for p in (tmp_path / "cache").iterdir())
        assert len(built) == 1 and built[0].startswith("native-"), built
        env["CC"] = "false"
        env["PATH"] = ""  # (no cc, gcc or clang either)


# -- sums of squares -------------------------------------------------------------------


def test_sumsq_fp32_within_1e_6_of_float64_on_large_and_odd_layouts():
    torch.manual_seed(0)
    same_sign = torch.full((2_000_003,), 1e-3) * (1 + 0.1 * torch.rand(2_000_003))  # worst case for float32 drift
    channels_last = torch.randn(64, 32, 9, 9).to(memory_format=torch.channels_last)
    strided = torch.randn(300, 400)[:, ::2]  # not dense: copied
    tensors = [same_sign, channels_last, strided, torch.randn(5).double(), torch.randn(70_000).half(),
               torch.zeros(0), torch.randn(3, 4).t()]
    tensors += [torch.randn(()), torch.randn(7).half(), torch.randn(3, 5).bfloat16().t(), torch.randn(2, 2).double()]
    got = grad_stats.sumsq_fp32(tensors)
    assert got.dtype == torch.float32 and got.shape == (len(tensors),)
    for value, t in zip(got.tolist(), tensors):
        want = float(t.double().pow(2).sum())
        assert abs(value - want) <= 1e-6 * want, (tuple(t.shape), value, want)
    assert grad_stats.sumsq_fp32([torch.zeros(0), torch.ones(3)]).tolist() == [0.0, 3.0]  # (an FSDP rank's empty shard)
    plain = float(torch._foreach_norm([same_sign], 2)[0]) ** 2  # what one float32 norm pass gives
    assert abs(plain - float(same_sign.double().pow(2).sum())) > 1e-6 * float(same_sign.double().pow(2).sum())

"""Raw sums and derived statistics (``gradsight.stats.grad``) against a slow float64 NumPy reference.

Each path of :func:`raw_sums` is covered: small dense tensors grouped into one flat
buffer, eager multi-tensor norms, the compiled fused kernel (large CPU tensors),
coalesced sparse gradients, and empty inputs; every backend on every device
(``tests/devices.py``: CUDA where present, the fused kernel then compiled through Triton).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from typing import ClassVar

import numpy as np
import pytest
import torch

from gradsight.stats import grad as grad_stats
from gradsight.stats.grad import (
    FUSED_MIN_NUMEL,
    GROUP_MAX_NUMEL,
    DEAD_ROWS,
    GRAD_STATS,
    MAXABS,
    NONFINITE,
    NUMEL,
    RAW_FIELDS,
    ROWS,
    SUMSQ,
    W_SUMSQ,
    ZEROS,
    aggregate,
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


def assert_raw_close(got: torch.Tensor, want: np.ndarray, rtol: float = 1e-5) -> None:
    got = got.double().numpy()
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
    """Stands in for the compiled kernel: counts the tensors it gets, then runs the real one,
    compiled here at once (no warm-up process: ``wait`` is ignored)."""

    def __init__(self, real) -> None:
        self.real = real
        self.calls: list[int] = []

    @property
    def available(self) -> bool:
        return self.real.available

    def __call__(self, g, w, wait=True):
        self.calls.append(g.numel())
        return self.real(g, w)

    def warm_up(self) -> None:
        pass


@pytest.fixture
def fused(monkeypatch) -> CountingKernel:
    kernel = CountingKernel(grad_stats._FUSED)
    monkeypatch.setattr(grad_stats, "_FUSED", kernel)
    return kernel


# -- eager -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_eager_raw_sums_match_float64_reference(dtype, fused):
    shapes = [(7, 5), (1,), (3, 4, 2), (130,)]
    grads, weights = _tensors(0, shapes, dtype=dtype), _tensors(1, shapes, zero_frac=0.0)
    got = raw_sums(grads, weights, backend="auto")
    assert got.dtype == torch.float32 and got.shape == (len(shapes), len(RAW_FIELDS))
    assert fused.calls == []  # small tensors: grouped
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


def test_many_tiny_tensors_grouped_match_a_float64_per_tensor_reference():
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
    assert_raw_close(got[grouped], want[grouped], rtol=2e-7)  # summed in float64: only the float32 rounding
    assert_raw_close(got[~grouped], want[~grouped], rtol=1e-5)
    assert (want[:, DEAD_ROWS] > 0).sum() > 100 and (want[:, ZEROS] == want[:, NUMEL]).sum() > 100
    stats = derive_stats(got).numpy()  # grad_abs_max is NaN where a NaN is, inf where only an inf is
    np.testing.assert_array_equal(stats[:, 3], want[:, MAXABS])


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


def test_a_changed_shape_dtype_or_layout_is_planned_again():
    """The grouping is cached per list of kinds of tensors; a tensor whose rows, dtype or layout
    changed (same element count) gets a new plan, not the old segments."""
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


def test_large_cpu_tensors_take_the_fused_kernel_and_match_the_reference(fused):
    n = FUSED_MIN_NUMEL
    shapes = [(n,), (3, n // 2 + 1), (10,)]
    grads, weights = _tensors(3, shapes), _tensors(4, shapes, zero_frac=0.0)
    grads[1][0, 5] = float("nan")
    grads[1][2, 7] = float("-inf")
    got = raw_sums(grads, weights, backend="auto")
    assert fused.calls == [n, 3 * (n // 2 + 1)]  # the small one stays eager
    assert fused.available, "the fused kernel failed to compile: the eager fallback was measured"
    want = np.stack([reference_raw(g, w) for g, w in zip(grads, weights)])
    assert want[1, NONFINITE] == 2.0
    want[:, NONFINITE] = 0  # left to count_nonfinite, below
    assert_raw_close(got, want, rtol=1e-4)  # float32 sums over ~10^5 elements
    # as on the eager path, NaN/Inf are counted where the sum of squares says there are some
    assert not math.isfinite(float(got[1, SUMSQ])) and count_nonfinite(grads[1]) == 2.0


def test_fused_kernel_counts_the_zeros_of_short_rows_in_float32_and_long_rows_in_int64(monkeypatch):
    """Parts of rows from FLOAT_COUNT_MAX_ROW elements on take a kernel of their own (int64 counts);
    the zero counts of both kinds equal a float64 count, and so do the other sums."""
    monkeypatch.setattr(grad_stats, "FLOAT_COUNT_MAX_ROW", 64)
    shapes = [(40, 8), (3, 100), (70,)]
    grads, weights = _tensors(11, shapes, zero_frac=0.4), _tensors(12, shapes, zero_frac=0.0)
    got = raw_sums(grads, weights, backend="fused")
    assert grad_stats._FUSED.available, "the fused kernel failed to compile: the eager fallback was measured"
    assert {False, True} <= {kind[-1] for kind in grad_stats._FUSED._fns}
    want = np.stack([reference_raw(g, w) for g, w in zip(grads, weights)])
    assert_raw_close(got, want, rtol=1e-5)
    np.testing.assert_array_equal(got[:, ZEROS].numpy(), [float((g == 0).sum()) for g in grads])


def test_fused_kernel_reads_long_rows_in_parts_with_the_same_sums():
    """Rows longer than PART_MAX are read as parts of a divisor's length (a view): sums, zeros, the
    max and the dead rows equal a float64 reference, for rows split in three, a prime row length
    (one part), a 1-d tensor, and a non-contiguous gradient (read in place)."""
    long = 3 * grad_stats.PART_MAX
    assert grad_stats._part_length(long) == grad_stats.PART_MAX and grad_stats._part_length(4099) == 4099
    assert grad_stats._as_parts(torch.zeros(5, long)).shape == (5, 3, grad_stats.PART_MAX)
    shapes = [(5, long), (3, 4099), (2 * long,), (8, 6, 3, 3)]
    grads, weights = _tensors(15, shapes, zero_frac=0.3), _tensors(16, shapes, zero_frac=0.0)
    grads[0][1] = 0
    grads[0][3, :grad_stats.PART_MAX] = 0  # zero in one part only: alive
    grads[1][2] = 0
    grads[0][4, 2 * grad_stats.PART_MAX + 7] = -50.0  # the max in the last part
    grads[3] = grads[3].to(memory_format=torch.channels_last)
    grads[3][2] = 0
    got = raw_sums(grads, weights, backend="fused")
    assert grad_stats._FUSED.available, "the fused kernel failed to compile: the eager fallback was measured"
    want = np.stack([reference_raw(g, w) for g, w in zip(grads, weights)])
    assert list(want[:, DEAD_ROWS]) == [1.0, 1.0, 0.0, 1.0] and float(got[0, MAXABS]) == 50.0
    assert_raw_close(got, want, rtol=1e-5)


def test_fused_backend_equals_eager_on_small_tensors():
    grads, weights = _tensors(5, [(9, 4), (17,)]), _tensors(6, [(9, 4), (17,)], zero_frac=0.0)
    fused = raw_sums(grads, weights, backend="fused")
    eager = raw_sums(grads, weights, backend="eager")
    torch.testing.assert_close(fused, eager, rtol=1e-6, atol=0)


# -- every device ----------------------------------------------------------------------


def _every_kind(seed: int, dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Gradients and weights in ``dtype`` of every kind a step hands :func:`raw_sums`: large 1-d
    and 2-d ones (the fused kernel's on the CPU), a transposed one (not contiguous), a
    channels-last convolution's, an all-zero one, an empty one, one with NaN and +Inf, one
    with -Inf and a dead row, and small ones (grouped)."""
    n = FUSED_MIN_NUMEL
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
    if backend == "fused" or (backend == "auto" and device == "cpu"):
        assert fused.calls and fused.available and not fused.real._eager_kinds, \
            "the fused kernel failed to compile: the eager fallback was measured"
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
    shapes = [(6, 3, 3, 3), (5, 4), (7,), (4, 1), (3, 2, 2), (2, FUSED_MIN_NUMEL)]
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
    layer = aggregate(raw, torch.tensor([0, 0, 1]), 3)
    got = dead_rows(torch.cat([raw, layer])).tolist()
    assert got[:3] == [4.0, got[1], 0.0] and math.isnan(got[1])
    assert got[3:5] == [4.0, 0.0] and math.isnan(got[5])  # the empty group has no rows


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


def test_aggregate_sums_rows_and_takes_the_max_of_maxabs():
    grads = _tensors(10, [(4,), (9,), (2, 3), (5,)])
    weights = _tensors(11, [(4,), (9,), (2, 3), (5,)], zero_frac=0.0)
    raw = raw_sums(grads, weights, backend="eager")
    group = torch.tensor([1, 0, 1, 1])
    got = aggregate(raw, group, 3)
    members = {0: [1], 1: [0, 2, 3], 2: []}
    for k, rows in members.items():
        if not rows:
            assert got[k].eq(0).all()
            continue
        g = torch.cat([grads[i].reshape(-1) for i in rows])
        w = torch.cat([weights[i].reshape(-1) for i in rows])
        want = reference_raw(g, w)
        want[[ROWS, DEAD_ROWS]] = sum(reference_raw(grads[i], None)[[ROWS, DEAD_ROWS]] for i in rows)  # rows add up
        assert_raw_close(got[k : k + 1], want[None])


def test_aggregate_of_many_rows_is_within_float32_rounding_of_a_float64_sum():
    """The model row of 20,000 scalar parameters adds 20,000 raw-sum rows."""
    gen = torch.Generator().manual_seed(21)
    raw = raw_sums([torch.randn((), generator=gen) for _ in range(20_000)],
                   [torch.randn((), generator=gen) for _ in range(20_000)])
    got = aggregate(raw, torch.zeros(20_000, dtype=torch.long), 1)[0].double().numpy()
    want = raw.double().sum(0).numpy()
    want[MAXABS] = float(raw[:, MAXABS].max())
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=0)


def test_a_kind_of_tensor_the_compiler_rejects_goes_eager_alone(monkeypatch):
    kernel = grad_stats._FusedKernel()
    real_copy = grad_stats._kernel_copy

    def copy(tag):
        if "float16" in tag:
            raise RuntimeError("recompile limit")
        return real_copy(tag)

    monkeypatch.setattr(grad_stats, "_kernel_copy", copy)
    monkeypatch.setattr(grad_stats, "_FUSED", kernel)
    grads = _tensors(14, [(4, 5)])
    raw_sums(grads, grads, backend="fused")
    half = [g.half() for g in grads]
    got = raw_sums(half, half, backend="fused")  # falls back to the eager path for this kind only
    assert kernel.available and len(kernel._eager_kinds) == 1
    assert_raw_close(got, np.stack([reference_raw(g, w) for g, w in zip(half, half)]), rtol=1e-3)
    assert raw_sums(grads, grads, backend="fused") is not None and len(kernel._fns) == 1


FIRST_STEP_SCRIPT = textwrap.dedent(
    """
    import time
    import torch
    from torch import nn
    import gradsight as gs
    from gradsight.stats import grad as G

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.AdamW(model.parameters())
    with gs.watch(model, RUN_DIR, optimizer=optimizer) as monitor:
        model(torch.randn(8, 512)).pow(2).mean().backward()
        monitor.step()
        optimizer.step()
        optimizer.zero_grad()
        assert not G._FUSED._fns, "the first step compiled the kernel in this process"
        warmup = G._FUSED._warmup
        assert warmup is not None and warmup.process.wait(timeout=900) == 0
        from torch._dynamo.utils import counters
        model(torch.randn(8, 512)).pow(2).mean().backward()
        monitor.step()
        optimizer.step()
    assert G._FUSED._compiled and G._FUSED.available, "the fused kernel did not compile"
    hits, misses = counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]
    assert hits >= 1 and misses == 0, (hits, misses)
    print("ok")
    """
)


@pytest.mark.slow
def test_first_step_in_a_fresh_process_is_eager_while_another_process_fills_the_compiler_cache(tmp_path):
    """A fresh process with an empty compiler cache does not compile the fused kernel at the
    first recorded step: a separate process compiles it for the same shapes into the cache
    while the step takes the eager path; the step after that process has ended compiles
    here from the cache (every graph a cache hit, none compiled anew). One line says so,
    nothing else is printed (no "No CUDA runtime is found")."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "OMP_NUM_THREADS": "1"}
    env.pop("TORCH_LOGS", None)
    script = f"RUN_DIR = {str(tmp_path / 'run')!r}\n" + FIRST_STEP_SCRIPT
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert done.stderr == grad_stats.WARMUP_NOTICE + "\n"


class _FakeWarmup:
    """Stands in for :class:`grad_stats._Warmup`: compiles nothing, and has ended once the test
    says so (the kernel then compiles here, synchronously)."""

    started: ClassVar[list[list]] = []
    finished = False

    def __init__(self, signatures) -> None:
        self.signatures = signatures
        _FakeWarmup.started.append(signatures)

    def done(self) -> bool:
        return _FakeWarmup.finished


def test_auto_backend_switches_from_eager_to_the_fused_kernel_with_the_same_statistics(monkeypatch, tmp_path):
    """With ``backend="auto"`` the steps before the warm-up process ends take the eager path,
    the later ones the fused kernel, for the same large tensors; every recorded statistic of
    every step, before and after the switch, matches a float64 reference."""
    from torch import nn

    import gradsight as gs
    from tests.instrument.reference import assert_matches, reference

    kernel = grad_stats._FusedKernel()
    kernel.quiet = True
    monkeypatch.setattr(grad_stats, "_FUSED", kernel)
    monkeypatch.setattr(grad_stats, "_Warmup", _FakeWarmup)
    monkeypatch.setattr(_FakeWarmup, "started", [])
    monkeypatch.setattr(_FakeWarmup, "finished", False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 256), nn.ReLU(), nn.Linear(256, 300), nn.ReLU(), nn.Linear(300, 4))
    model[2].weight.data[:3] = 0  # rows whose gradient is zero after the ReLU: dead rows in both paths
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    fused_at: list[bool] = []
    refs, dead = [], []
    with gs.watch(model, tmp_path / "run", optimizer=optimizer, update_ratio=False) as monitor:
        for step in range(6):
            _FakeWarmup.finished = step >= 3
            x = torch.randn(16, 300)
            x[:, :5] = 0  # some exact zeros in the first layer's gradient
            model(x).pow(2).mean().backward()
            refs.append(reference(model))
            dead.append(float((model[2].weight.grad == 0).all(1).sum()))
            monitor.step()
            fused_at.append(bool(kernel._fns))
            optimizer.step()
            optimizer.zero_grad()
    assert fused_at == [False, False, False, True, True, True]  # eager while the warm-up runs
    assert len(_FakeWarmup.started) == 1
    assert [sig[0][0] for sig in _FakeWarmup.started[0]] == [(256, 300), (300, 256)]  # the large tensors, in order
    frame = gs.open_run(tmp_path / "run").frame()
    for step, ref in enumerate(refs):
        assert_matches(frame, ref, step=step, rtol=1e-5)
    rows = frame[(frame.stat == "grad_dead_rows") & (frame.level == "param") & (frame.name == "2.weight")]
    assert rows.sort_values("step").value.tolist() == dead and min(dead) >= 3


def test_the_warm_up_process_compiles_what_the_kernel_is_asked_for(monkeypatch):
    """:func:`grad_stats._warm_up`, the warm-up process's body, runs the kernel on empty
    tensors of each signature given (same shapes, strides and dtypes), with the given
    number of threads."""
    seen = []

    class Recording:
        def __init__(self) -> None:
            self.quiet = False

        def __call__(self, g, w):
            seen.append((grad_stats._signature(g, w), torch.get_num_threads()))
            return torch.zeros(9)

    g = torch.randn(64, 3, 4, 5).to(memory_format=torch.channels_last)
    signatures = [grad_stats._signature(g, g), grad_stats._signature(torch.randn(70_000).half(), None)]
    threads = torch.get_num_threads()
    monkeypatch.setattr(grad_stats, "_FusedKernel", Recording)
    monkeypatch.setattr(sys, "argv", ["-c", json.dumps({"threads": 1, "signatures": signatures})])
    try:
        grad_stats._warm_up()
    finally:
        torch.set_num_threads(threads)
    assert seen == [(signatures[0], 1), (signatures[1], 1)]


def test_the_compile_notice_is_said_once_per_process_and_not_when_quiet(monkeypatch, caplog):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # the kernel as it is, compiled or not
    g = torch.randn(300, 300)
    with caplog.at_level("WARNING", logger="gradsight"):
        kernel = grad_stats._FusedKernel()
        for t in (g, g, g.flatten(), g.double()):  # three kinds of tensor, each compiled once
            kernel(t, t)
        assert len(kernel._fns) == 3
        with grad_stats.quiet_compile_notice():
            grad_stats._FusedKernel()(g, g)
    notices = [r for r in caplog.records if r.getMessage() == grad_stats.COMPILE_NOTICE]
    assert len(notices) == 1 and notices[0].levelname == "WARNING"
    assert not grad_stats._FusedKernel.quiet  # restored on leaving


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

"""Gradient statistics computed in as few passes over memory as possible.

Every statistic of a parameter is derived from nine *raw sums* of its gradient
``g`` and weight ``w`` (one row per tensor)::

    sumsq      = sum(g**2)                 sumabs    = sum(|g|)
    maxabs     = max(|g|)                  zeros     = count(g == 0)
    nonfinite  = count(not isfinite(g))    numel     = g.numel()
    w_sumsq    = sum(w**2)
    rows       = g.shape[0] if g.dim() >= 2 else 0
    dead_rows  = count of r with g[r] == 0 everywhere (tensors of >= 2 dims)

A *row* is one slice along dim 0: an output channel of a convolution, an output
unit of a linear layer, a token of an embedding table. Raw sums add up across
tensors (``maxabs`` takes the max), so layer- and model-level statistics are exact
aggregates of parameter rows, and the derived statistics (``grad_norm =
sqrt(sumsq)``, ``grad_rms = sqrt(sumsq / numel)``, ``grad_dead_rows``, ...) are
computed once, on whole columns, at the end (:func:`stats_rows`: on the host, in
float64, after the step's one transfer).

Three ways to compute raw sums:

* ``grouped`` (small tensors, ``backend="auto"``, where the C kernel does not take them:
  on a GPU, or without a C compiler): the dense float16, bfloat16, float32
  and float64 tensors of at most :data:`GROUP_MAX_NUMEL` elements of one dtype and
  device are copied into one flat buffer, widened to float64, and every sum is one
  segmented reduction over it (``index_add_``, ``scatter_reduce``), whatever the number
  of tensors: with thousands of tiny parameters the per-tensor work of the multi-tensor
  passes, not the memory, is the cost.
* ``eager``: multi-tensor ``torch._foreach_norm`` passes (L2, L1 and L0, the count
  of nonzeros) over all tensors at once, one row-wise max-abs reduction per tensor of
  >= 2 dims (``maxabs`` is the max of its row maxima, ``dead_rows`` counts the zero
  ones, both for all tensors at once; a ``_foreach_norm`` L-inf pass gives the other
  tensors' ``maxabs``), plus one pass over the weights. ``nonfinite`` is not
  counted here (nor by ``grouped`` or ``fused``): a tensor whose ``sumsq`` is finite has no
  NaN/Inf, so the count is only needed (and taken by :func:`count_nonfinite`) on the
  rare steps where a norm is not finite.
* ``fused``: a small C kernel (:mod:`gradsight.stats.native`) that reads each
  gradient (and weight) once, with independent vector accumulators, and takes every
  tensor of a step in one call, its threads splitting the elements: dense float32,
  float64, bfloat16 and float16 CPU tensors whose rows are blocks of memory (contiguous
  or channels-last). It is built by the machine's C compiler at the first recorded step
  (0.3-0.8 s, once per machine: later processes load it in milliseconds). Where it
  cannot be built, those tensors take ``eager``. Both give the same sums (tested).

``sumsq`` adds float32 squares (the C kernel, within parts of 4,096 elements; every path stores it as float32):
a gradient whose elements are all below about 1e-23 in magnitude squares to 0, one with
an element above about 1.8e19 to Inf. The monitor finds those tensors from ``maxabs``
(:func:`squares_lost`) and squares them again in float64 (:func:`sumsq_fp64`), on the
rare steps that have any.

Complex tensors: ``|g|`` is the modulus, so their raw sums are those of the real tensor
of moduli ``|g|`` (either path): ``sumsq = sum |g|**2``, ``sumabs = sum |g|``, ``maxabs =
max |g|``, an element is zero when both parts are and non-finite when either is;
``w_sumsq = sum |w|**2``; ``numel`` counts complex elements.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Sequence
from operator import attrgetter

import numpy as np
import torch
from torch import Tensor

from gradsight.stats import native

log = logging.getLogger(__name__)

#: Columns of a raw-sum row, in order.
RAW_FIELDS = ("sumsq", "sumabs", "maxabs", "zeros", "nonfinite", "numel", "w_sumsq", "rows", "dead_rows")
SUMSQ, SUMABS, MAXABS, ZEROS, NONFINITE, NUMEL, W_SUMSQ, ROWS, DEAD_ROWS = range(len(RAW_FIELDS))

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

#: Recorded only where it applies: for tensors (and layers) with rows, i.e. at least
#: one parameter of >= 2 dims (see :func:`dead_rows`).
DEAD_ROWS_STAT = "grad_dead_rows"

#: Dense float16/bfloat16/float32/float64 tensors with at most this many elements are reduced
#: together, one group per dtype and device (``backend="auto"``; :func:`sumsq_fp32` always).
#: Measured on the CPU: 500 tensors of 256 elements take 10 ms grouped against 21 ms in
#: multi-tensor passes; at 1024 elements the passes are faster (28 against 53 ms).
GROUP_MAX_NUMEL = 1 << 8


def row_count(shape: Sequence[int]) -> int:
    """The rows of a tensor of this shape: ``shape[0]`` for >= 2 dims, else 0 (no rows)."""
    return int(shape[0]) if len(shape) >= 2 else 0


def norms_fp32(tensors: Sequence[Tensor], ord: float) -> list[Tensor]:
    """``torch._foreach_norm(tensors, ord)`` as 0-d float32 tensors, accumulated in float32
    (float64 tensors in float64, then cast: a norm may not narrow its input's dtype)."""
    wide = [i for i, t in enumerate(tensors) if t.dtype == torch.float64]
    if not wide:
        return list(torch._foreach_norm(list(tensors), ord, dtype=torch.float32))
    out: list[Tensor] = [torch.empty(0)] * len(tensors)
    narrow = [i for i in range(len(tensors)) if tensors[i].dtype != torch.float64]
    if narrow:
        for i, v in zip(narrow, torch._foreach_norm([tensors[i] for i in narrow], ord, dtype=torch.float32)):
            out[i] = v
    for i, v in zip(wide, torch._foreach_norm([tensors[i] for i in wide], ord)):
        out[i] = v.float()
    return out


#: :func:`sumsq_fp32` on the CPU: tensors of at least ``SUMSQ_SPLIT`` elements are reduced
#: in rows of ``SUMSQ_ROW`` elements whose squares are added in float64 (the CPU's float32
#: norm kernel drifts by ~1e-5 relative over 10^6 elements; over 10^3 by ~1e-7, over 10^4
#: values of few magnitudes, such as the update of half-precision weights, by ~3e-6).
SUMSQ_ROW = 1 << 10
SUMSQ_SPLIT = 1 << 11


def flat_in_memory_order(t: Tensor) -> Tensor:
    """The elements of ``t`` as a 1-D tensor, in memory order: a view when ``t`` is dense
    (contiguous in any dim order, e.g. channels-last), else a copy."""
    if t.is_contiguous():
        return t.view(-1)
    order = sorted(range(t.dim()), key=lambda d: t.stride(d))
    expected = 1
    for d in order:
        if t.size(d) != 1 and t.stride(d) != expected:
            return t.reshape(-1)
        expected *= t.size(d)
    return t.as_strided((t.numel(),), (1,))


def sumsq_fp32(tensors: Sequence[Tensor]) -> Tensor:
    """``[len(tensors)]`` float32 sums of squares, within ~1e-6 relative of a float64 sum
    (real tensors: view complex ones as real pairs, ``torch.view_as_real``).

    On the CPU a large tensor is viewed as rows of :data:`SUMSQ_ROW` elements, the rows'
    norms taken in one reduction and their squares added in float64; the small tensors
    and the rows' remainders go through one multi-tensor norm pass. Costs about one
    ``torch._foreach_norm`` pass, without its drift on large tensors. Elsewhere (whose
    norm kernels reduce in a tree) it is that pass. Small dense real tensors (at most
    :data:`GROUP_MAX_NUMEL` elements) are summed in float64 as one group per dtype and device
    (:class:`_Segments`) on every device.
    """
    if not tensors:
        return torch.zeros(0)
    device = tensors[0].device
    plan = _plan(tensors, True, device)
    if not plan.groups:
        return _sumsq_ungrouped(tensors, device)
    out = torch.empty(len(tensors), dtype=torch.float32, device=device)
    with torch.no_grad():
        for segments, index in plan.groups:
            out[index] = segments.sumsq(segments.take(tensors)).float().to(device)
        if plan.others:
            out[plan.others] = _sumsq_ungrouped([tensors[i] for i in plan.others], device)
    return out


def _sumsq_ungrouped(tensors: Sequence[Tensor], device: torch.device, ord: float = 2) -> Tensor:
    """:func:`sumsq_fp32` of tensors that are not grouped (``ord=1``: their sums of ``|x|``,
    the same way)."""
    if device.type != "cpu":
        return torch.stack(norms_fp32(tensors, ord)).pow(ord)
    norms: list[Tensor] = []  # float32: the rows' norms of each large tensor, then the rest's
    owners: list[int] = []
    counts: list[int] = []
    rest: list[Tensor] = []
    rest_owners: list[int] = []
    for i, t in enumerate(tensors):
        flat = flat_in_memory_order(t)
        n = flat.numel()
        full = n - n % SUMSQ_ROW if n >= SUMSQ_SPLIT else 0
        if full:
            rows = flat[:full].view(-1, SUMSQ_ROW)
            norms.append(torch.linalg.vector_norm(rows, ord, dim=1,
                                                  dtype=None if t.dtype == torch.float64 else torch.float32))
            owners.append(i)
            counts.append(full // SUMSQ_ROW)
        if full < n:
            rest.append(flat[full:])
            rest_owners.append(i)
    if rest:
        norms.append(torch.stack(norms_fp32(rest, ord)))
        owners.extend(rest_owners)
        counts.extend([1] * len(rest))
    if not norms:  # only empty tensors
        return torch.zeros(len(tensors))
    squares = torch.cat([v.double() for v in norms]) if len({v.dtype for v in norms}) > 1 else torch.cat(norms).double()
    total = torch.zeros(len(tensors), dtype=torch.float64).index_add_(0, _row_owners(owners, counts), squares.pow(ord))
    return total.float()


_ROW_OWNERS: dict[tuple, Tensor] = {}
_ROW_OWNERS_MAX = 16


def _row_owners(owners: list[int], counts: list[int]) -> Tensor:
    """``repeat_interleave(owners, counts)``, made once per list of tensors' layouts (a recorded step
    of the same model reuses it)."""
    key = (*owners, -1, *counts)
    index = _ROW_OWNERS.get(key)
    if index is None:
        if len(_ROW_OWNERS) >= _ROW_OWNERS_MAX:
            _ROW_OWNERS.pop(next(iter(_ROW_OWNERS), None), None)
        index = _ROW_OWNERS[key] = torch.repeat_interleave(torch.tensor(owners), torch.tensor(counts))
    return index


def _row_max(g: Tensor) -> Tensor:
    """``[rows]`` float32 max |g| of each row of a tensor of >= 2 dims, as the larger of the
    row's max and minus its min (NaN if the row holds one); reduces over the other dims in
    place, so a channels-last gradient is not copied (a max is exact in any dtype, so it
    is taken in the gradient's own). On the CPU ``amax`` and ``amin`` take 0.2-0.3 ms
    together on a 1024 x 1024 float32 gradient, the L-inf row norm 3.6-7.5 ms."""
    dims = tuple(range(1, g.dim()))
    return torch.maximum(g.amax(dims), g.amin(dims).neg()).float()


def _complex_row(g: Tensor, w: Tensor | None, backend: str) -> Tensor:
    """Raw sums ``[9]`` of a dense complex gradient: those of its moduli ``|g|`` (and ``|w|``)."""
    moduli = g.abs()
    return raw_sums([moduli], [moduli if w is None else w.abs()], backend, w is not None)[0]


def _sparse_row(g: Tensor, w: Tensor | None) -> Tensor:
    """Raw sums of a sparse (COO) gradient: implicit entries are zeros."""
    coalesced = g.coalesce()
    values = coalesced.values()
    values = (values.abs() if values.is_complex() else values).float()
    if w is not None and w.is_complex():
        w = w.abs()
    a = values.abs()
    numel = g.numel()
    implicit_zeros = numel - values.numel()
    maxabs = a.max() if values.numel() else torch.zeros((), device=values.device)
    rows = row_count(g.shape)
    if rows:  # a row is alive when one of its stored values is nonzero
        per_entry = values.flatten(1) if values.dim() > 1 else values.unsqueeze(1)
        nonzero = (per_entry != 0).any(1).float()
        alive = torch.zeros(rows, device=values.device).index_add_(0, coalesced.indices()[0], nonzero)
        dead = (alive == 0).sum().float()
    else:
        dead = torch.zeros((), device=values.device)
    return torch.stack(
        [
            (values * values).sum(),
            a.sum(),
            maxabs,
            (values == 0).sum().float() + implicit_zeros,
            (~torch.isfinite(values)).sum().float(),
            torch.tensor(float(numel), device=values.device),
            w.detach().float().pow(2).sum() if w is not None else torch.tensor(float("nan"), device=values.device),
            torch.tensor(float(rows), device=values.device),
            dead,
        ]
    )


def _accumulator(device: torch.device) -> torch.dtype:
    """The dtype the grouped path sums in: float64, except where the device has none (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


class _Segments:
    """A group of small dense tensors of one dtype and device, as segments of one flat buffer.

    The tensors are concatenated 0-d ones first (stacked), then 1-d ones, then the others,
    each in row-major order, so that every row (a slice along dim 0 of a tensor with >= 2
    dims) is a contiguous run of the tail of the buffer. Only per-tensor and per-row counts
    are kept; the element-to-segment index is rebuilt at each use (one ``repeat_interleave``),
    so a group holds no memory proportional to its elements between steps.

    Args:
        members: positions of the tensors in the caller's list, in concatenation order.
        counts, dims, rows: their element counts, numbers of dims and rows (:func:`row_count`).
        device: their device.

    Attributes:
        members: as given; ``len(members)`` is ``k``.
        numel, rows: ``[k]`` element and row counts, in the accumulator dtype.
    """

    def __init__(self, members: list[int], counts: list[int], dims: list[int], rows: list[int],
                 device: torch.device) -> None:
        self.members = members
        self._all_in_order = members == list(range(len(members)))  # the caller's list is the group
        self.acc = _accumulator(device)
        self._scalars = dims.count(0)
        self._vectors = self._scalars + dims.count(1)  # members[_scalars:_vectors] are 1-d
        self._total = sum(counts)
        self._row_start = sum(counts[: self._vectors])  # the tensors with rows fill the rest
        self._counts = torch.tensor(counts, dtype=torch.long, device=device)
        self.numel = self._counts.to(self.acc)
        self.rows = torch.tensor(rows, dtype=self.acc, device=device)
        # every row of the tensors with rows: its length, and its tensor (position in members)
        with_rows = range(self._vectors, len(members))
        self._row_lengths = torch.tensor([counts[i] // rows[i] for i in with_rows for _ in range(rows[i])],
                                         dtype=torch.long, device=device)
        self._row_tensor = torch.tensor([i for i in with_rows for _ in range(rows[i])], dtype=torch.long,
                                        device=device)

    def take(self, tensors: Sequence[Tensor]) -> Sequence[Tensor]:
        """This group's tensors out of the caller's list, in ``members`` order."""
        if self._all_in_order and len(tensors) == len(self.members):
            return tensors
        return [tensors[i] for i in self.members]

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """The group's tensors (:meth:`take`) as one 1-D tensor."""
        a, b = self._scalars, self._vectors
        parts = []
        if a:
            parts.append(torch.stack(list(tensors[:a])))
        if b > a:
            parts.append(torch.cat(list(tensors[a:b])))
        if len(tensors) > b:
            parts.append(torch._utils._flatten_dense_tensors(list(tensors[b:])))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _owner(self) -> Tensor:
        """``[total]`` int64: the tensor (position in ``members``) of each element of the buffer."""
        return torch.repeat_interleave(self._counts, output_size=self._total)

    def _per_tensor(self, values: Tensor, owner: Tensor) -> Tensor:
        """``[k]`` sums of the ``[total]`` values over each tensor's segment (``owner``: :meth:`_owner`)."""
        return torch.zeros(len(self.members), dtype=values.dtype, device=values.device).index_add_(0, owner, values)

    def sumsq(self, tensors: Sequence[Tensor]) -> Tensor:
        """``[k]`` sums of squares of the group's tensors (:meth:`take`), in the accumulator dtype."""
        x = self.flatten(tensors).to(self.acc)
        return self._per_tensor(x * x, self._owner())

    def raw_sums(self, grads: Sequence[Tensor], weights: Sequence[Tensor], with_weights: bool) -> Tensor:
        """``[k, 9]`` float32 raw sums of the group's gradients and weights (:meth:`take`),
        summed in the accumulator dtype (``nonfinite`` left 0, as by the eager path)."""
        x = self.flatten(grads).to(self.acc)
        owner = self._owner()
        k = len(self.members)

        def per_tensor(values: Tensor) -> Tensor:
            return self._per_tensor(values, owner)

        a = x.abs()
        sumabs = per_tensor(a)
        maxabs = torch.zeros(k, dtype=self.acc, device=x.device).scatter_reduce_(0, owner, a, "amax",
                                                                                include_self=False)
        maxabs = torch.where(sumabs.isnan(), sumabs, maxabs)  # NaN is the max, whatever a device's amax does
        nonzero = (x != 0).to(self.acc)  # NaN is not zero
        dead = torch.zeros(k, dtype=self.acc, device=x.device)
        if len(self._row_lengths):  # a row is dead when none of its elements is nonzero
            row_owner = torch.repeat_interleave(self._row_lengths, output_size=self._total - self._row_start)
            row_nonzero = torch.zeros(len(self._row_lengths), dtype=self.acc, device=x.device).index_add_(
                0, row_owner, nonzero[self._row_start:])
            dead.index_add_(0, self._row_tensor, (row_nonzero == 0).to(self.acc))
        if with_weights:
            w = self.flatten(weights).to(self.acc)
            w_sumsq = per_tensor(w * w)
        else:
            w_sumsq = torch.full_like(sumabs, float("nan"))
        # nonfinite stays 0 here, as in the eager path: a finite sumsq implies none; see count_nonfinite
        return torch.stack([per_tensor(x * x), sumabs, maxabs, self.numel - per_tensor(nonzero),
                            torch.zeros_like(sumabs), self.numel, w_sumsq, self.rows, dead], dim=1).float()


_PLAIN = (Tensor, torch.nn.Parameter)
_GROUPED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: What a :class:`_Plan` depends on, read with one C-level call per attribute over the list:
#: none of them allocates an object the garbage collector tracks (a shape would: with tens
#: of thousands of tensors, keeping one per tensor alive triggers full collections).
_PLAN_ATTRIBUTES = (type, Tensor.numel, Tensor.dim, attrgetter("dtype"), attrgetter("layout"), attrgetter("device"))


class _Plan:
    """How a list of tensors is reduced: the small dense float16/bfloat16/float32/float64 ones
    grouped by dtype and device (:class:`_Segments`, with their positions as an index on ``device``), the others
    one by one (``others``, positions). A tensor is grouped only when it (and its weight,
    for :func:`raw_sums`) is a plain tensor or parameter."""

    def __init__(self, kinds: list[type], counts: list[int], dims: list[int], dtypes: list[torch.dtype],
                 layouts: list[torch.layout], devices: list[torch.device], rows: list[int],
                 weight_kinds: list[type] | None, group: bool, device: torch.device, native_cpu: bool = False) -> None:
        groups: dict[tuple, list[int]] = {}
        self.others: list[int] = []
        self.native: list[int] = []  #: of the others, those the C kernel may take (if their rows are blocks)
        for i, (kind, count, dtype, layout, dev) in enumerate(zip(kinds, counts, dtypes, layouts, devices)):
            plain = kind in _PLAIN and (weight_kinds is None or weight_kinds[i] in _PLAIN)
            by_native = native_cpu and dev.type == "cpu" and dtype in native.DTYPES  # (faster at any size)
            if (group and plain and layout == torch.strided and dtype in _GROUPED_DTYPES and not by_native
                    and 0 < count <= GROUP_MAX_NUMEL):
                groups.setdefault((dtype, dev), []).append(i)
                continue
            self.others.append(i)
            if plain and native.kind_taken(kind, dtype, layout, dev, count):  # (and, at each call, rows in blocks)
                self.native.append(i)
        # what the C kernel is told of them, and their raw-sum rows before the sums
        self.native_numel = np.array([counts[i] for i in self.native], dtype=np.int64)
        self.native_rows = np.array([rows[i] for i in self.native], dtype=np.int64)
        self.native_dtypes = np.array([native.DTYPES[dtypes[i]] for i in self.native], dtype=np.int32)
        self.native_block = np.zeros((len(self.native), len(RAW_FIELDS)), dtype=np.float32)
        self.native_block[:, NUMEL] = self.native_numel
        self.native_block[:, ROWS] = self.native_rows
        self.groups: list[tuple[_Segments, Tensor]] = []
        for (_, dev), members in groups.items():
            members.sort(key=lambda i: min(dims[i], 2))  # 0-d, 1-d, then the others
            segments = _Segments(members, [counts[i] for i in members], [dims[i] for i in members],
                                 [rows[i] for i in members], dev)
            self.groups.append((segments, torch.tensor(members, dtype=torch.long, device=device)))


_PLANS: list[tuple[tuple, _Plan]] = []  #: most recently used first
_PLANS_MAX = 8
_PLANS_LOCK = threading.Lock()  # monitors in several threads


def _plan(tensors: Sequence[Tensor], group: bool, device: torch.device,
          weights: Sequence[Tensor] | None = None, native_cpu: bool = False) -> _Plan:
    """The cached :class:`_Plan` of these tensors' kinds, element counts, dims, dtypes,
    layouts, devices and rows (and their weights' kinds); compared, not hashed: a few ms for
    20,000 tensors."""
    columns = [list(map(get, tensors)) for get in _PLAN_ATTRIBUTES]
    rows = [t.size(0) if d >= 2 else 0 for t, d in zip(tensors, columns[2])]
    weight_kinds = None if weights is None else list(map(type, weights))
    key = (group, native_cpu, device, *columns, rows, weight_kinds)
    with _PLANS_LOCK:
        for k, (cached_key, plan) in enumerate(_PLANS):
            if cached_key == key:
                if k:
                    _PLANS.insert(0, _PLANS.pop(k))
                return plan
    plan = _Plan(*columns, rows, weight_kinds, group=group, device=device, native_cpu=native_cpu)
    with _PLANS_LOCK:
        _PLANS.insert(0, (key, plan))
        del _PLANS[_PLANS_MAX:]
    return plan


def raw_sums(
    grads: Sequence[Tensor], weights: Sequence[Tensor], backend: str = "auto", with_weights: bool = True
) -> Tensor:
    """Raw sums of each (gradient, weight) pair.

    Args:
        grads: gradient tensors (dense or sparse COO), any floating or complex dtype.
        weights: the matching parameter tensors, same order and shapes.
        backend: ``"eager"`` (multi-tensor ``torch`` kernels), ``"fused"`` (every tensor
            that :func:`native.takes` through the C kernel, the others eager) or
            ``"auto"`` (small tensors grouped, the C kernel for the others on the CPU
            where it takes them, eager for the rest).
        with_weights: False skips the pass over the weights (``w_sumsq`` is NaN).

    Returns:
        float32 tensor of shape ``[len(grads), 9]`` with columns :data:`RAW_FIELDS`,
        on the gradients' device. ``nonfinite`` is only exact in rows whose
        ``sumsq`` is not finite when the eager path was used; call
        :func:`count_nonfinite` for those rows (finite ``sumsq`` implies zero).
    """
    if len(grads) != len(weights):
        raise ValueError("grads and weights differ in length")
    n = len(grads)
    if n == 0:
        return torch.zeros((0, len(RAW_FIELDS)))
    device = grads[0].device
    # on the CPU the C kernel takes small tensors too (faster than grouping them: 20,000 scalars
    # 17 against 26 ms, 500 of 256 elements 0.5 against 3.1 ms)
    native_cpu = backend == "auto" and device.type == "cpu" and native.library() is not None
    plan = _plan(grads, backend == "auto", device, weights, native_cpu)
    native_idx: list[int] = []
    block = None
    if plan.native and backend != "eager" and _native_library(backend):
        taken = [native.rows_in_blocks(grads[i]) for i in plan.native]
        native_idx = plan.native if all(taken) else [i for i, t in zip(plan.native, taken) if t]
        if native_idx:
            block = _native_rows(grads, weights, native_idx, plan, None if native_idx is plan.native else taken,
                                 with_weights)
            if len(native_idx) == n:  # (the common case on the CPU: nothing else to fill)
                return block if device.type == "cpu" else block.to(device)
    out = torch.empty((n, len(RAW_FIELDS)), dtype=torch.float32, device=device)
    if block is not None:
        out[native_idx] = block.to(device)
    with torch.no_grad():
        for segments, index in plan.groups:
            out[index] = segments.raw_sums(segments.take(grads), segments.take(weights), with_weights).to(device)
    rows: dict[int, Tensor] = {}
    eager_idx: list[int] = []
    skip = set(native_idx)
    for i in plan.others:
        if i in skip:
            continue
        g, w = grads[i], weights[i]
        wd = w.detach() if with_weights else None
        if g.is_sparse:
            rows[i] = _sparse_row(g, wd)
            continue
        if g.numel() == 0:  # no identity for max: every sum is 0, and there are no rows to count
            rows[i] = torch.tensor([0.0] * W_SUMSQ + [0.0 if with_weights else float("nan"), 0.0, 0.0],
                                   device=g.device)
            continue
        if g.is_complex():
            rows[i] = _complex_row(g, wd, backend)
            continue
        eager_idx.append(i)
    if eager_idx:
        out[eager_idx] = _eager_rows([grads[i] for i in eager_idx], [weights[i].detach() for i in eager_idx],
                                     with_weights, device)
    if rows:
        out[list(rows)] = torch.stack([r.to(device) for r in rows.values()])
    return out


_warned_native = False


def _native_library(backend: str) -> bool:
    """Whether the C kernel is at hand (built or loaded at the first call); with
    ``backend="fused"`` its absence is said once, at WARNING (``"auto"``: at INFO, by
    :mod:`native`)."""
    global _warned_native
    if native.library() is not None:
        return True
    if backend == "fused" and not _warned_native:
        _warned_native = True
        log.warning("gradsight: the fused statistics kernel is unavailable (%s); using eager ops", native.error())
    return False


def _native_rows(grads: Sequence[Tensor], weights: Sequence[Tensor], index: list[int], plan: _Plan,
                 taken: list[bool] | None, with_weights: bool) -> Tensor:
    """Raw-sum rows ``[len(index), 9]`` (on the CPU) of the gradients at ``index``, those of
    ``plan.native`` whose rows are blocks (``taken``; None: all of them), from one call of the
    C kernel, with the weights' sums of squares where it takes the weights too (else one
    :func:`sumsq_fp32` pass)."""
    gs = [grads[i] for i in index]
    ws = [weights[i] for i in index]
    numel, rows, dtypes, block = plan.native_numel, plan.native_rows, plan.native_dtypes, plan.native_block
    if taken is not None:
        mask = np.array(taken)
        numel, rows, dtypes, block = numel[mask], rows[mask], dtypes[mask], block[mask]
    together = with_weights and all(w.dtype == g.dtype and w.shape == g.shape and w.device == g.device
                                    and native.rows_in_blocks(w) for g, w in zip(gs, ws))
    sums = native.raw_sums(gs, ws if together else None, numel, rows, dtypes)
    block = block.copy()
    block[:, :DEAD_ROWS_COLUMN] = sums[:, :DEAD_ROWS_COLUMN]  # sumsq, sumabs, maxabs, zeros
    block[:, DEAD_ROWS] = sums[:, DEAD_ROWS_COLUMN]
    block[:, W_SUMSQ] = sums[:, native.FIELDS.index("w_sumsq")] if together else np.nan
    out = torch.from_numpy(block)
    if with_weights and not together:
        out[:, W_SUMSQ] = sumsq_fp32([w.detach() for w in ws]).cpu()
    return out


#: The C kernel's first four columns (:data:`native.FIELDS`) are the first four raw sums
#: (tested); then dead rows.
DEAD_ROWS_COLUMN = native.FIELDS.index("dead_rows")


class _Layout:
    """What the eager path needs to know about a list of gradients' shapes, on the device.

    Attributes:
        numel, rows: ``[n]`` float32 element and row counts (:func:`row_count`).
        with_rows, without_rows: the positions of the tensors of >= 2 dims, and of the others.
        owner: ``[sum(rows)]`` int64, the tensor of each row.
        without_rows_index: ``without_rows`` as an int64 tensor.
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]], device: torch.device) -> None:
        counts = [row_count(s) for s in shapes]
        self.with_rows = [i for i, r in enumerate(counts) if r]
        self.without_rows = [i for i, r in enumerate(counts) if not r]
        self.numel = torch.tensor([float(math.prod(s)) for s in shapes], dtype=torch.float32, device=device)
        self.rows = torch.tensor([float(r) for r in counts], dtype=torch.float32, device=device)
        self.owner = torch.repeat_interleave(torch.tensor(self.with_rows, dtype=torch.long),
                                             torch.tensor([counts[i] for i in self.with_rows], dtype=torch.long)
                                             ).to(device)
        self.without_rows_index = torch.tensor(self.without_rows, dtype=torch.long, device=device)


_LAYOUTS: dict[tuple, _Layout] = {}
_LAYOUTS_MAX = 16


def _layout(grads: Sequence[Tensor], device: torch.device) -> _Layout:
    """The cached :class:`_Layout` of these gradients' shapes: built once per set of
    shapes, so a recorded step copies nothing from the host to the device."""
    shapes = tuple(tuple(g.shape) for g in grads)
    key = (shapes, str(device))
    layout = _LAYOUTS.get(key)
    if layout is None:
        if len(_LAYOUTS) >= _LAYOUTS_MAX:
            _LAYOUTS.pop(next(iter(_LAYOUTS)))
        layout = _LAYOUTS[key] = _Layout(shapes, device)
    return layout


def _eager_rows(grads: list[Tensor], weights: list[Tensor], with_weights: bool, device: torch.device) -> Tensor:
    """Raw-sum rows ``[len(grads), 9]`` from multi-tensor norm kernels (one call per column) and
    one row-wise max per tensor."""

    one_device = all(g.device == device for g in grads)

    def column(scalars) -> Tensor:  # per-tensor 0-d results, possibly on several devices
        return torch.stack(list(scalars) if one_device else [t.to(device) for t in scalars])

    layout = _layout(grads, device)
    n = len(grads)
    if one_device and device.type == "cpu":  # in rows added in float64: as exact as the C kernel
        sumsq = _sumsq_ungrouped(grads, device).to(device)
        sumabs = _sumsq_ungrouped(grads, device, ord=1).to(device)
    else:
        sumsq = column(norms_fp32(grads, 2)).square()
        sumabs = column(norms_fp32(grads, 1))
    nonzero = column(norms_fp32(grads, 0))  # L0 "norm": count of nonzeros
    # the rows' max |g| of every tensor with rows gives its maxabs and its all-zero rows
    maxabs = torch.zeros(n, dtype=torch.float32, device=device)
    dead = torch.zeros(n, dtype=torch.float32, device=device)
    if layout.with_rows:
        row_max = [_row_max(grads[i]) for i in layout.with_rows]
        row_max = torch.cat(row_max if one_device else [t.to(device) for t in row_max])
        maxabs.scatter_reduce_(0, layout.owner, row_max, reduce="amax", include_self=False)
        dead.index_add_(0, layout.owner, (row_max == 0).float())
    if layout.without_rows:
        flat = column(norms_fp32([grads[i] for i in layout.without_rows], math.inf))
        maxabs.index_copy_(0, layout.without_rows_index, flat)
    numel = layout.numel
    if with_weights and one_device and device.type == "cpu":
        w_sumsq = _sumsq_ungrouped(weights, device).to(device)
    elif with_weights:
        w_sumsq = column(norms_fp32(weights, 2)).square()
    else:
        w_sumsq = torch.full_like(numel, float("nan"))
    # nonfinite stays 0 here: a finite sumsq implies none; see count_nonfinite
    return torch.stack([sumsq, sumabs, maxabs, numel - nonzero, torch.zeros_like(numel), numel, w_sumsq,
                        layout.rows, dead], dim=1)


def count_nonfinite(g: Tensor) -> float:
    """Number of NaN/Inf elements of a (dense or sparse) gradient, as a float."""
    if g.is_sparse:
        g = g.coalesce().values()
    return float((~torch.isfinite(g)).sum().item())


def sumsq_fp64(g: Tensor) -> float:
    """The sum of squares of a (dense, sparse or complex) gradient, squared in float64: for
    the rare tensors whose float32 squares underflow to 0 (every element below about 1e-23
    in magnitude) or overflow to Inf (an element above about 1.8e19) while the elements
    themselves are finite and not all zero."""
    if g.is_sparse:
        g = g.coalesce().values()
    g = g.detach()
    g = g.abs() if g.is_complex() else g
    return float(g.double().square().sum().item())


def squares_lost(sumsq: np.ndarray, maxabs: np.ndarray) -> np.ndarray:
    """Positions whose float32 sum of squares lost the gradient: 0 with a nonzero element
    (the squares underflowed) or Inf with every element finite (they overflowed; a NaN or
    Inf element makes ``maxabs`` non-finite too)."""
    return np.flatnonzero(((sumsq == 0) & (maxabs > 0)) | (np.isinf(sumsq) & np.isfinite(maxabs)))


def _on_host(fn):
    """Let a host function of float64 arrays take a tensor too: computed on the host in float64,
    returned as float32 on the tensor's device (the monitor calls these with host arrays, after
    the step's one transfer)."""
    @functools.wraps(fn)
    def either(raw, *args):
        if not isinstance(raw, Tensor):
            return fn(np.asarray(raw, dtype=np.float64), *args)
        host = [a.detach().cpu().numpy() if isinstance(a, Tensor) else a for a in args]
        out = fn(raw.detach().cpu().double().numpy(), *host)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(raw.device)
    return either


@_on_host
def derive_stats(raw: np.ndarray, inv_scale: float | None = None) -> np.ndarray:
    """Statistics :data:`GRAD_STATS` from raw sums, in float64.

    Args:
        raw: ``[R, 9]`` raw sums (a float64 array; a tensor is computed on the host and
            returned as float32 on its device).
        inv_scale: optional loss-scale reciprocal (mixed precision): gradients were
            multiplied by ``1/inv_scale`` and are reported unscaled.

    Returns:
        ``[R, 8]``: grad_norm, grad_rms, grad_abs_mean, grad_abs_max, grad_zero_frac,
        grad_nonfinite, weight_norm, grad_weight_ratio.
    """
    return stats_rows(raw, inv_scale)[:, :len(GRAD_STATS)]


def stats_rows(raw: np.ndarray, inv_scale: float | None = None, weights: bool = True) -> np.ndarray:
    """``[R, 9]`` float64: :func:`derive_stats`, then :func:`dead_rows`, of float64 raw sums
    (what the monitor records of each row; a few operations on whole columns); ``weights``
    False: ``weight_norm`` and ``grad_weight_ratio`` are NaN."""
    out = np.empty((len(raw), len(GRAD_STATS) + 1))
    numel = np.maximum(raw[:, NUMEL], 1)
    if inv_scale is None:
        np.sqrt(raw[:, SUMSQ], out=out[:, 0])
        out[:, 3] = raw[:, MAXABS]
        np.divide(raw[:, SUMABS], numel, out=out[:, 2])
    else:
        inv_scale = float(inv_scale)
        np.sqrt(raw[:, SUMSQ] * (inv_scale * inv_scale), out=out[:, 0])
        np.multiply(raw[:, MAXABS], inv_scale, out=out[:, 3])
        np.divide(raw[:, SUMABS] * inv_scale, numel, out=out[:, 2])
    np.divide(out[:, 0], np.sqrt(numel), out=out[:, 1])  # sqrt(sumsq / numel)
    np.divide(raw[:, ZEROS], numel, out=out[:, 4])
    out[:, 5] = raw[:, NONFINITE]
    if weights:
        np.sqrt(raw[:, W_SUMSQ], out=out[:, 6])
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero weight norm: inf, or NaN for 0/0
            np.divide(out[:, 0], out[:, 6], out=out[:, 7])
    else:
        out[:, 6:8] = np.nan
    out[:, 8] = dead_rows(raw)
    return out


@_on_host
def dead_rows(raw: np.ndarray) -> np.ndarray:
    """``grad_dead_rows`` of raw-sum rows: how many rows (along dim 0 of every tensor
    of >= 2 dims) have an all-zero gradient; NaN for a row without such tensors.

    Args:
        raw: ``[R, 9]`` raw sums (a parameter, or a layer's or the model's aggregate).

    Returns:
        ``[R]``.
    """
    return np.where(raw[:, ROWS] > 0, raw[:, DEAD_ROWS], np.nan)

"""``update_ratio = ||w_after - w_before|| / ||w_before||`` across the optimizer step after a recorded step.

Measured at every ``every``-th recorded step (``gs.watch(..., update_ratio=k)``, the first
recorded step included; ``True`` is every one). On the other recorded steps the monitor
does not arm it: nothing is copied, and its optimizer hooks return at once.

Several optimizers (``optimizer=[opt_a, opt_b]``, e.g. SparseAdam for the embeddings and
Adam for the rest, Muon and AdamW): each parameter belongs to the first watched optimizer
whose ``param_groups`` hold it (read again when those change), and its ratio is measured
across that optimizer's step. A parameter that none of them holds, or whose optimizer did
not step before the next recorded step (a GradScaler skipping it), has no ``update_ratio``
at that step. Layer and model rows combine the parameters measured:
``sqrt(sum ||dw||^2 / sum ||w||^2)`` over those parameters only.

Bounded memory: the weights are snapshotted one group of layers at a time. The layers are cut,
in inventory order, into chunks holding at most :data:`SNAPSHOT_SHARE` (1/8) of the watched
weights' bytes or :data:`SNAPSHOT_FLOOR_BYTES` (16 MiB), whichever is larger (a layer larger
than that is a chunk of its own: weights of up to 16 MiB are snapshotted whole); the ``j``-th measured step
(``j = recorded index // every``, from 0) snapshots chunk ``j % n_chunks`` only, so each
layer's ``update_ratio`` is exact and recorded at one measured step in ``n_chunks`` (at most
16, since two neighbouring chunks hold more than 1/8 between them), and the snapshot holds
at most 1/8 of the weights' bytes or 16 MiB unless one layer is larger. The model row combines every
layer, so it is recorded only when there is one chunk. ``update_ratio="whole"`` makes one chunk
of all the layers (a snapshot of every watched weight at every measured step): every layer and
the model at every measured step, as the model check records them.

Complex parameters are measured as real pairs (``torch.view_as_real``): ``||dw||^2`` is
the sum of ``|dw|^2`` over the complex elements.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradsight._text import few
from gradsight.instrument.rows import StepRows
from gradsight.instrument.series import SeriesIds
from gradsight.schedules import due

#: The share of the watched weights' bytes that one snapshot may hold.
SNAPSHOT_SHARE = 1 / 8
#: What one snapshot may hold whatever the weights' size (a fixed cost): smaller weights are snapshotted whole.
SNAPSHOT_FLOOR_BYTES = 16 * 2**20

#: ``(step, series ids, values on the device)`` waiting for the next host transfer.
Pending = tuple[int, np.ndarray, Tensor]


class UpdateRatio:
    """Snapshots the weights of a recorded step and measures how far the optimizers moved them.

    The snapshot is one multi-tensor copy into buffers kept between recorded steps (of the
    weights of one chunk of layers that a watched optimizer holds, :func:`snapshot_chunks`;
    the previous chunk's buffers are freed first, the last ones by :meth:`release`); each optimizer's step is then subtracted from
    its parameters' copies in place (its step post-hook, :meth:`measure`) and the norms
    taken by :func:`~gradsight.stats.grad.sumsq_fp32` (within ~1e-6 of float64). When every
    optimizer holding a parameter of the step has stepped, the ratios are combined per
    layer and for the model and stay on the device until the next recorded step's
    transfer takes them (:meth:`take_pending`).

    Args:
        watched: the watched parameters, in inventory order.
        param_names, layer_names: their names and the layer names (inventory order).
        series: the series ids of the run.
        sumsq: ``tensors -> [len(tensors)]`` float32 sums of squares (global under
            ``torch.distributed``).
        weights: whether weight norms are taken at record time (else they are taken
            from the snapshot).
        every: measure at every ``every``-th recorded step (0: never; see
            :func:`~gradsight.schedules.resolve_every`).
        optimizers: the watched optimizers.
        param_layer: the layer index of each watched parameter (default: each its own),
            which keeps a layer's parameters in one chunk.
        whole: one chunk of every layer (``update_ratio="whole"``): the whole snapshot
            at every measured step.
    """

    def __init__(
        self,
        watched: Sequence[Tensor],
        param_names: Sequence[str],
        layer_names: Sequence[str],
        series: SeriesIds,
        sumsq: Callable[[Sequence[Tensor]], Tensor],
        weights: bool,
        every: int = 1,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        param_layer: Sequence[int] | None = None,
        whole: bool = False,
    ) -> None:
        self.every = every
        self._watched = list(watched)
        self._param_names = list(param_names)
        self._layer_names = list(layer_names)
        self._series = series
        self._sumsq = sumsq
        self._weights = weights
        self._optimizers = list(optimizers)
        self._complex = any(w.is_complex() for w in self._watched)
        self._owners_key: tuple | None = None
        self._owner_of = np.full(len(self._watched), -1, dtype=np.int64)
        self._warned_unowned = False
        #: parameters with a gradient found in none of the optimizers (``meta.outside_optimizers``)
        self.unowned: set[str] = set()
        self.unowned_grew = False  #: ``unowned`` gained names since the monitor last wrote them
        self._step: int | None = None  #: the recorded step waiting for its optimizer steps
        self._rows: StepRows | None = None
        self._wsumsq: Tensor | None = None
        self._waiting: dict[int, list[int]] = {}  #: optimizer -> positions in rows.present it steps
        self._snapshot: dict[int, list[Tensor]] = {}  #: optimizer -> its parameters' copies
        self._measured: list[tuple[list[int], Tensor, Tensor]] = []  #: (positions, ||dw||^2, ||w||^2)
        self._buffers: dict[int, Tensor] = {}  #: watched index -> its snapshot buffer
        self._pending: list[Pending] = []
        layer_of = np.arange(len(self._watched)) if param_layer is None else np.asarray(param_layer, dtype=np.int64)
        share = 1.0 if whole else SNAPSHOT_SHARE
        self.chunk_of = snapshot_chunks(self._watched, layer_of, share, SNAPSHOT_FLOOR_BYTES)  #: watched index -> its chunk
        self.n_chunks = int(self.chunk_of.max()) + 1 if len(self.chunk_of) else 1
        self.peak_snapshot_bytes = 0  #: the most bytes the snapshot buffers held at once

    def chunk_due(self, recorded_index: int) -> int:
        """The chunk whose layers the recorded step with this index measures (when :meth:`due`)."""
        return (recorded_index // max(self.every, 1)) % self.n_chunks

    @property
    def snapshot_bytes(self) -> int:
        """The bytes the snapshot buffers hold now."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def due(self, recorded_index: int) -> bool:
        """Whether the recorded step with this index (0 = the first) measures its optimizer step."""
        return due(self.every, recorded_index)

    def forget(self) -> None:
        """End the measurement of the armed step: what was measured is combined (it waits
        for :meth:`take_pending`), the copies of optimizers that did not step are dropped."""
        if self._measured:
            self._finish()
        self._step = None
        self._waiting = {}
        self._snapshot = {}

    def release(self) -> None:
        """Free the snapshot buffers (the monitor is closing)."""
        self.forget()
        self._buffers = {}

    def _buffer(self, i: int) -> Tensor:
        """The snapshot buffer of watched parameter ``i``, (re)made to match it (float32 for
        half-precision weights: see :func:`_wide`)."""
        w = self._watched[i]
        buf = self._buffers.get(i)
        if buf is None or buf.shape != w.shape or buf.dtype != _wide(w.dtype) or buf.device != w.device:
            buf = self._buffers[i] = torch.empty_like(w, dtype=_wide(w.dtype), memory_format=torch.preserve_format)
        return buf

    def _owners(self) -> np.ndarray:
        """The optimizer (its index) that steps each watched parameter, -1 for none; read
        from the optimizers' ``param_groups`` again when their sizes changed
        (``add_param_group``)."""
        key = (len(self._watched), *(tuple(len(g["params"]) for g in o.param_groups) for o in self._optimizers))
        if key != self._owners_key:
            index = {id(w): i for i, w in enumerate(self._watched)}
            owner = np.full(len(self._watched), -1, dtype=np.int64)
            for k in reversed(range(len(self._optimizers))):  # the first optimizer holding a parameter owns it
                for group in self._optimizers[k].param_groups:
                    for p in group["params"]:
                        i = index.get(id(p))
                        if i is not None:
                            owner[i] = k
            self._owners_key, self._owner_of = key, owner
        return self._owner_of

    def arm(self, step: int, rows: StepRows, wsumsq: Tensor, recorded_index: int = 0) -> None:
        """Measure the next step of each watched optimizer for recorded ``step``, and take
        the snapshot now (optimizers that call ``step(closure)`` and record inside the
        closure, like Lightning's, are measured too).

        Args:
            step: the recorded step.
            rows: its rows (the watched parameters that had a gradient, their layers).
            wsumsq: ``[len(rows.present)]`` their squared weight norms (NaN if not taken).
            recorded_index: the step's recorded index, which picks the chunk of layers
                measured (:meth:`chunk_due`).
        """
        self.forget()
        if self.n_chunks > 1:
            positions = np.flatnonzero(self.chunk_of[rows.present] == self.chunk_due(recorded_index)).tolist()
            rows, wsumsq = rows.subset(positions, model=False), wsumsq[positions]
            if not rows.present:
                return
        owner = self._owners()[rows.present]
        waiting = {int(k): np.flatnonzero(owner == k).tolist() for k in np.unique(owner)}
        unowned = waiting.pop(-1, [])
        names = [self._param_names[rows.present[p]] for p in unowned]
        if not self.unowned.issuperset(names):
            self.unowned.update(names)
            self.unowned_grew = True
        if unowned and not self._warned_unowned:
            self._warned_unowned = True
            shown = few(names, 5)
            warnings.warn(f"gradsight: {len(names)} parameter(s) with a gradient are in none of the optimizers "
                          f"passed to gs.watch(optimizer=...), so no update_ratio is recorded for them: {shown}; "
                          "pass every optimizer that steps them (optimizer=[opt_a, opt_b]), or, if none does (a layer "
                          "replaced after the optimizer was built), build the optimizer over the final model",
                          stacklevel=5)
        if not waiting:
            return
        self._step, self._rows, self._wsumsq, self._waiting = step, rows, wsumsq, waiting
        with torch.no_grad():
            watched = [rows.present[p] for positions in waiting.values() for p in positions]
            current = [self._watched[i].detach() for i in watched]
            if all(type(t) is Tensor for t in current):
                if self.n_chunks > 1:  # free the last chunk's buffers before making this one's
                    keep = set(watched)
                    self._buffers = {i: b for i, b in self._buffers.items() if i in keep}
                copies = [self._buffer(i) for i in watched]
                self.peak_snapshot_bytes = max(self.peak_snapshot_bytes, self.snapshot_bytes)
                torch._foreach_copy_(copies, current)
            else:  # tensor subclasses (DTensor under FSDP) have no in-place multi-tensor copy
                copies = [t.to(_wide(t.dtype), copy=True) for t in current]
        start = 0
        for k, positions in waiting.items():
            self._snapshot[k] = copies[start : start + len(positions)]
            start += len(positions)

    def measure(self, optimizer: Any = None, *hook_args: Any) -> None:
        """Optimizer step post-hook: the ratios of the parameters ``optimizer`` steps (kept
        on the device); once every optimizer of the step has stepped, combined with the
        others'. A second step of the same optimizer before the next record is not measured."""
        k = next((k for k, o in enumerate(self._optimizers) if o is optimizer), 0)
        positions = self._waiting.pop(k, None)
        if self._step is None or positions is None:
            return
        snapshot = self._snapshot.pop(k)
        with torch.no_grad():
            current = [self._watched[self._rows.present[p]].detach() for p in positions]
            if self._weights and all(s.dtype == t.dtype for s, t in zip(snapshot, current)):
                # weight norms were taken at record time (not in half precision)
                wsq = self._wsumsq if len(positions) == len(self._rows.present) else self._wsumsq[positions]
            else:
                wsq = self._sumsq(self._real(snapshot))
            if all(type(t) is Tensor for t in snapshot):
                torch._foreach_sub_(snapshot, current)  # the snapshot becomes -(w_after - w_before)
                dsq = self._sumsq(self._real(snapshot))
            else:
                dsq = self._sumsq(self._real(torch._foreach_sub(current, snapshot)))
        self._measured.append((positions, dsq, wsq))
        if not self._waiting:
            self.forget()

    def _real(self, tensors: Sequence[Tensor]) -> Sequence[Tensor]:
        """Complex tensors as real pairs (the same sum of squares)."""
        if not self._complex:
            return tensors
        return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]

    def _finish(self) -> None:
        """Combine the measured parameters' ratios with their layers' and the model's."""
        measured, self._measured = self._measured, []
        positions = [p for part, _, _ in measured for p in part]
        rows = self._rows
        if positions != list(range(len(rows.present))):  # some parameters were not measured
            rows = rows.subset(positions, model=rows.has_model)
        with torch.no_grad():
            dsq = torch.cat([d for _, d, _ in measured]) if len(measured) > 1 else measured[0][1]
            wsq = torch.cat([w for _, _, w in measured]) if len(measured) > 1 else measured[0][2]
            ratios = (rows.stack(dsq) / rows.stack(wsq)).sqrt()
        ids = [self._series.id(level, name, "update_ratio") for level, name in rows.names(self._param_names,
                                                                                             self._layer_names)]
        self._series.flush()
        self._pending.append((self._step, np.asarray(ids, dtype=np.int64), ratios))

    def take_pending(self) -> list[Pending]:
        """The measured ratios not yet written; the caller writes them. A step still waiting
        for some of its optimizers is ended here (:meth:`forget`) if any has stepped."""
        if self._measured:
            self.forget()
        pending, self._pending = self._pending, []
        return pending


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype a snapshot of weights of ``dtype`` is kept in: float32 for 16-bit floats
    (``model.half()``, ``.to(torch.bfloat16)``), whose difference and norms taken in their own
    precision put the ratio off by up to ~5e-5; else ``dtype`` itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def snapshot_chunks(watched: Sequence[Tensor], param_layer: np.ndarray, share: float = SNAPSHOT_SHARE,
                    floor: float = SNAPSHOT_FLOOR_BYTES) -> np.ndarray:
    """The chunk of each watched parameter: its layer's, the layers cut in order of first
    appearance into runs holding at most ``share`` of the weights' snapshot bytes or
    ``floor`` bytes, whichever is larger (a layer larger than that alone).

    Returns:
        ``[len(watched)]`` int64 chunk indices from 0.
    """
    nbytes = np.array([w.numel() * _wide(w.dtype).itemsize for w in watched], dtype=np.float64)
    layer_of = np.asarray(param_layer, dtype=np.int64)
    layers = list(dict.fromkeys(layer_of.tolist()))
    budget = max(share * nbytes.sum(), floor)
    chunk_of_layer, chunk, held = {}, 0, 0.0
    for layer in layers:
        size = float(nbytes[layer_of == layer].sum())
        if held > 0 and held + size > budget:
            chunk, held = chunk + 1, 0.0
        chunk_of_layer[layer] = chunk
        held += size
    return np.array([chunk_of_layer[k] for k in layer_of.tolist()], dtype=np.int64)

"""``update_ratio = ||w_after - w_before|| / ||w_before||`` across the optimizer step after a recorded step.

Measured at every ``every``-th recorded step (``gs.watch(..., update_ratio=k)``, the first
recorded step included; ``True`` is every one). On the other recorded steps the monitor
does not arm it: nothing is copied, and its optimizer hooks return at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradsight.instrument.rows import StepRows
from gradsight.instrument.series import SeriesIds
from gradsight.schedules import due

#: ``(step, series ids, values on the device)`` waiting for the next host transfer.
Pending = tuple[int, np.ndarray, Tensor]


class UpdateRatio:
    """Snapshots the weights of a recorded step and measures how far the optimizer moved them.

    The snapshot is one multi-tensor copy into buffers kept between recorded steps (one
    copy of the watched weights, allocated at the first snapshot and freed by
    :meth:`release`); the optimizer's step is then subtracted from it in place and its
    norm taken by :func:`~gradsight.stats.grad.sumsq_fp32` (within ~1e-6 of float64).
    The ratios stay on the device until the next recorded step's transfer takes them
    (:meth:`take_pending`).

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
    ) -> None:
        self.every = every
        self._watched = list(watched)
        self._param_names = list(param_names)
        self._layer_names = list(layer_names)
        self._series = series
        self._sumsq = sumsq
        self._weights = weights
        self._step: int | None = None  #: the recorded step waiting for its optimizer step
        self._rows: StepRows | None = None
        self._wsumsq: Tensor | None = None
        self._snapshot: list[Tensor] | None = None
        self._buffers: dict[int, Tensor] = {}  #: watched index -> its snapshot buffer
        self._pending: list[Pending] = []

    def due(self, recorded_index: int) -> bool:
        """Whether the recorded step with this index (0 = the first) measures its optimizer step."""
        return due(self.every, recorded_index)

    def forget(self) -> None:
        """Drop a snapshot whose optimizer step never came."""
        self._step = None
        self._snapshot = None

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

    def arm(self, step: int, rows: StepRows, wsumsq: Tensor) -> None:
        """Measure the next optimizer step for recorded ``step``.

        Args:
            step: the recorded step.
            rows: its rows (the watched parameters that had a gradient, their layers).
            wsumsq: ``[len(rows.present)]`` their squared weight norms (NaN if not taken).
        """
        self._step = step
        self._rows = rows
        self._wsumsq = wsumsq
        self._snapshot = None
        self.snapshot()

    def snapshot(self, *hook_args: Any) -> None:
        """Copy the weights before the optimizer changes them (also an optimizer step pre-hook).

        Taken at the end of the recording itself (so optimizers that call
        ``step(closure)`` and record inside the closure, like Lightning's, are
        measured too); as a pre-hook it only takes one when none was taken.
        """
        if self._step is None or self._snapshot is not None:
            return
        with torch.no_grad():
            present = self._rows.present
            current = [self._watched[i].detach() for i in present]
            if all(type(t) is Tensor for t in current):
                snapshot = [self._buffer(i) for i in present]
                torch._foreach_copy_(snapshot, current)
            else:  # tensor subclasses (DTensor under FSDP) have no in-place multi-tensor copy
                snapshot = [t.to(_wide(t.dtype), copy=True) for t in current]
            self._snapshot = snapshot

    def measure(self, *hook_args: Any) -> None:
        """Optimizer step post-hook: the ratios per parameter, layer and model, kept on the device."""
        if self._step is None or self._snapshot is None:
            return
        with torch.no_grad():
            rows = self._rows
            current = [self._watched[i].detach() for i in rows.present]
            wsq = self._wsumsq
            if not self._weights or any(s.dtype != t.dtype for s, t in zip(self._snapshot, current)):
                wsq = self._sumsq(self._snapshot)  # not taken at record time, or taken in half precision
            if all(type(t) is Tensor for t in self._snapshot):
                torch._foreach_sub_(self._snapshot, current)  # the snapshot becomes -(w_after - w_before)
                dsq = self._sumsq(self._snapshot)
            else:
                dsq = self._sumsq(torch._foreach_sub(current, self._snapshot))
            ratios = (rows.stack(dsq) / rows.stack(wsq)).sqrt()
        # series of the rows measured (a parameter that never has a gradient gets none)
        ids = [self._series.id(level, name, "update_ratio") for level, name in rows.names(self._param_names,
                                                                                             self._layer_names)]
        self._series.flush()
        self._pending.append((self._step, np.asarray(ids, dtype=np.int64), ratios))
        self.forget()

    def take_pending(self) -> list[Pending]:
        """The measured ratios not yet written; the caller writes them."""
        pending, self._pending = self._pending, []
        return pending


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype a snapshot of weights of ``dtype`` is kept in: float32 for 16-bit floats
    (``model.half()``, ``.to(torch.bfloat16)``), whose difference and norms taken in their own
    precision put the ratio off by up to ~5e-5; else ``dtype`` itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

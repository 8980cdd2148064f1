"""Log2 gradient histograms and precision headroom on a recorded step (``histograms=``).

At every k-th recorded step the monitor hands the gradients to :class:`HistogramRecorder`,
which counts them by log2 bucket and mantissa class in one pass
(:func:`gradsight.stats.histogram.log2_counts`), adds parameter counts up per layer
and for the model on the device, and returns

* the headroom fractions (:data:`~gradsight.stats.histogram.HEADROOM_STATS`) of every
  parameter, layer and the model, as series ids and values for the step's scalars;
* the layer and model histograms, for the ``histograms`` table.

Values are those of the gradient as it is stored in training: with a GradScaler
whose scale the gradients still carry, as they are; after ``scaler.unscale_``, times
the scale again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from gradsight.instrument.rows import LevelIds, StepRows
from gradsight.instrument.series import SeriesIds
from gradsight.instrument.transfer import to_host
from gradsight.schedules import due
from gradsight.stats.histogram import HEADROOM_STATS, bucket_range, headroom_counts, histogram


class HistogramRecorder:
    """Counts, headroom and histograms of the watched gradients (see the module docstring).

    Args:
        every: take them at every ``every``-th recorded step (the first recorded step included).
        param_names, layers: the parameters and the layers, as the monitor has them.
        series: the run's series ids (headroom series are registered here, once).
        log2_counts: ``(grads, scale, lo, hi) -> counts``, local or over all ranks.
        params, layer_index: the parameters and layers recorded from the start (indices;
            default all); :meth:`add` adds others when they join.
    """

    def __init__(self, every: int, param_names: Sequence[str], layers: Sequence[str], series: SeriesIds,
                 log2_counts, params: Sequence[int] | None = None, layer_index: Sequence[int] | None = None) -> None:
        self.every = every
        self._param_names = list(param_names)
        self._layers = list(layers)
        self._series = series
        self._log2_counts = log2_counts
        self._ids = LevelIds.register(series, param_names, self._layers, HEADROOM_STATS, params, layer_index)

    def add(self, params: Sequence[int], layers: Sequence[int]) -> None:
        """Register the headroom series of parameters and layers that join the run."""
        self._ids.add(self._series, self._param_names, self._layers, HEADROOM_STATS, params, layers)

    def due(self, recorded_index: int) -> bool:
        """Whether the recorded step with this index (0 = the first) takes a histogram."""
        return due(self.every, recorded_index)

    @torch.no_grad()
    def measure(self, grads: Sequence[Tensor], rows: StepRows,
                scale: Tensor | None) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]], int, np.ndarray]:
        """One step's headroom and histograms.

        Args:
            grads: the gradients of the watched parameters ``rows.present``.
            rows: the step's rows (on the gradients' device).
            scale: multiply the gradients by this (the loss scale after ``unscale_``), or None.

        Returns:
            ``(series ids, values, histogram keys, bucket_lo, dense histograms)``: keys
            are ``(level, name)`` of the present layers and the model, ``dense[i]`` the
            int64 counts of buckets ``bucket_lo, bucket_lo + 1, ...``.
        """
        lo, hi = bucket_range([g.dtype for g in grads])
        counts = rows.stack(self._log2_counts(grads, scale, lo, hi))  # [rows, buckets + headroom], adds up
        hist = histogram(counts)[rows.layer_rows.start:]  # the layers and the model
        head = headroom_counts(counts)
        head_h, hist_h = to_host([head, hist])
        numel = np.array([g.numel() for g in grads], dtype=np.int64)  # as they are now (a resized embedding)
        fractions = head_h.reshape(head.shape) / np.maximum(rows.stack_host(numel), 1)[:, None]
        keys = rows.names(self._param_names, self._layers)[rows.layer_rows.start:]
        return (rows.ids(self._ids).reshape(-1), fractions.reshape(-1).astype(np.float64), keys, lo,
                hist_h.reshape(hist.shape))

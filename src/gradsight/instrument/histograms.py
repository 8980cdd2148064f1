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

from gradsight.instrument.series import SeriesIds
from gradsight.schedules import due
from gradsight.stats.histogram import HEADROOM_STATS, bucket_range, headroom_counts, histogram
from gradsight.store.schema import Level


class HistogramRecorder:
    """Counts, headroom and histograms of the watched gradients (see the module docstring).

    Args:
        every: take them at every ``every``-th recorded step (the first recorded step included).
        param_names, layers: the watched parameters and the layers, as the monitor has them.
        param_numel: elements of each watched parameter.
        param_layer: layer index of each watched parameter (on the host).
        series: the run's series ids (headroom series are registered here, once).
        log2_counts: ``(grads, scale, lo, hi) -> counts``, local or over all ranks.
    """

    def __init__(self, every: int, param_names: Sequence[str], layers: Sequence[str],
                 param_numel: Sequence[int], param_layer: Sequence[int], series: SeriesIds, log2_counts) -> None:
        self.every = every
        self._layers = list(layers)
        self._numel = np.asarray(param_numel, dtype=np.int64)
        self._param_layer = np.asarray(param_layer, dtype=np.int64)
        self._log2_counts = log2_counts
        self._param_ids = series.grid(Level.PARAM, list(param_names), list(HEADROOM_STATS))
        self._layer_ids = series.grid(Level.LAYER, self._layers, list(HEADROOM_STATS))
        self._model_ids = series.grid(Level.MODEL, [""], list(HEADROOM_STATS)).reshape(-1)

    def due(self, recorded_index: int) -> bool:
        """Whether the recorded step with this index (0 = the first) takes a histogram."""
        return due(self.every, recorded_index)

    @torch.no_grad()
    def measure(self, grads: Sequence[Tensor], present: Sequence[int], group: Tensor, present_layers: Sequence[int],
                scale: Tensor | None) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]], int, np.ndarray]:
        """One step's headroom and histograms.

        Args:
            grads: the gradients of the watched parameters ``present`` (indices).
            group: ``[len(present)]`` layer index of each, on the gradients' device.
            present_layers: the layers with at least one gradient (indices).
            scale: multiply the gradients by this (the loss scale after ``unscale_``), or None.

        Returns:
            ``(series ids, values, histogram keys, bucket_lo, dense histograms)``: keys
            are ``(level, name)`` of the present layers and the model, ``dense[i]`` the
            int64 counts of buckets ``bucket_lo, bucket_lo + 1, ...``.
        """
        lo, hi = bucket_range([g.dtype for g in grads])
        counts = self._log2_counts(grads, scale, lo, hi)  # [present, buckets + headroom], adds up
        n_layers = len(self._layers)
        layer_counts = torch.zeros((n_layers, counts.shape[1]), dtype=counts.dtype, device=counts.device)
        layer_counts.index_add_(0, group, counts)
        all_counts = torch.cat([counts, layer_counts[list(present_layers)], counts.sum(0, keepdim=True)])
        hist = histogram(all_counts)
        head = headroom_counts(all_counts)
        host = torch.cat([head.reshape(-1), hist[len(present):].reshape(-1)]).cpu().numpy()
        head_h = host[: head.numel()].reshape(head.shape)
        hist_h = host[head.numel():].reshape(-1, hist.shape[1])

        numel = self._numel[list(present)]
        layer_numel = np.zeros(n_layers, dtype=np.int64)
        np.add.at(layer_numel, self._param_layer[list(present)], numel)
        rows_numel = np.concatenate([numel, layer_numel[list(present_layers)], [numel.sum()]])
        fractions = head_h / np.maximum(rows_numel, 1)[:, None]
        ids = np.concatenate([self._param_ids[list(present)].reshape(-1),
                              self._layer_ids[list(present_layers)].reshape(-1), self._model_ids])
        keys = [(Level.LAYER, self._layers[k]) for k in present_layers] + [(Level.MODEL, "")]
        return ids, fractions.reshape(-1).astype(np.float64), keys, lo, hist_h

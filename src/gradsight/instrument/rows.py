"""The rows of a recorded step: the parameter, layer and model levels stacked in one array.

A recorded step has one row per watched parameter with a gradient (level ``param``), one
per layer those parameters belong to (``layer``) and one for the model (``model``), in that
order. The monitor's statistics, the histograms and the update ratios are all stacked on
the device (:meth:`StepRows.stack`, :meth:`StepRows.stack_host` for values on the host) and
named (:meth:`StepRows.ids`, :meth:`StepRows.names`) by this one layout; its slices say where each level's rows are.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gradsight.instrument.series import SeriesIds
from gradsight.store.schema import Level

#: Above this many (layer and model rows) x (parameters), :meth:`StepRows.stack_host` adds
#: with ``np.add.at`` rather than a product with a dense membership matrix.
_DENSE_MAX = 1 << 16


@dataclass(frozen=True)
class LevelIds:
    """Series ids of some statistics at every level: ``param`` ``[watched, stats]``, ``layer``
    ``[layers, stats]`` and ``model`` ``[1, stats]`` (-1 where a statistic does not apply)."""

    param: np.ndarray
    layer: np.ndarray
    model: np.ndarray

    @classmethod
    def register(cls, series: SeriesIds, param_names: Sequence[str], layer_names: Sequence[str],
                 stats: Sequence[str], params: Sequence[int] | None = None,
                 layers: Sequence[int] | None = None) -> LevelIds:
        """The ids of every statistic in ``stats`` of the model and of the parameters ``params``
        and layers ``layers`` (indices into the names; default all); the others' are -1 until
        :meth:`add` registers them."""
        out = cls(np.full((len(param_names), len(stats)), -1, dtype=np.int64),
                  np.full((len(layer_names), len(stats)), -1, dtype=np.int64),
                  np.empty((1, len(stats)), dtype=np.int64))
        out.add(series, param_names, layer_names, stats, range(len(param_names)) if params is None else params,
                range(len(layer_names)) if layers is None else layers)
        out.model[:] = series.grid(Level.MODEL, [""], list(stats))
        return out

    def add(self, series: SeriesIds, param_names: Sequence[str], layer_names: Sequence[str], stats: Sequence[str],
            params: Sequence[int], layers: Sequence[int]) -> None:
        """Register the ids of the parameters ``params`` and layers ``layers`` (indices), in place."""
        for i in params:
            self.param[i] = series.grid(Level.PARAM, [param_names[i]], list(stats))[0]
        for k in layers:
            self.layer[k] = series.grid(Level.LAYER, [layer_names[k]], list(stats))[0]


class StepRows:
    """Where the rows of one recorded step are in a stacked ``[P + L + 1, ...]`` array.

    Args:
        present: indices of the watched parameters with a gradient (``P`` of them).
        param_layer: the layer index of every watched parameter (on the host).
        n_layers: the number of layers.
        device: where :meth:`stack` combines rows.
        model: whether the model row follows the layer rows (False for rows that cover only
            some layers, whose combination is no model's).

    Attributes:
        present, layers: the watched parameters and the layers (``L`` of them, ascending)
            that have rows.
        group: ``[P]`` int64 layer index of each present parameter, on ``device``.
        params, layer_rows: the slices of the parameter rows and of the layer rows.
        model: the index of the model row (one past the last row without it).
        has_model: whether there is a model row.
    """

    def __init__(self, present: Sequence[int], param_layer: np.ndarray, n_layers: int, device: torch.device,
                 model: bool = True) -> None:
        self.present = list(present)
        self.has_model = model
        self.device = device
        self._param_layer = param_layer
        self._layer_of = np.asarray(param_layer, dtype=np.int64)[self.present]
        self.layers = sorted(set(self._layer_of.tolist()))
        self.n_layers = n_layers
        p, n = len(self.present), len(self.layers)
        self.params = slice(0, p)
        self.layer_rows = slice(p, p + n)
        self.model = p + n

    @functools.cached_property
    def _device_index(self) -> tuple[Tensor, Tensor]:
        """(:attr:`group`, the present layers) on the device, made at the first :meth:`stack`
        (a step combined only on the host needs neither)."""
        index = torch.from_numpy(np.concatenate([self._layer_of, np.asarray(self.layers, dtype=np.int64)]))
        index = index.to(self.device)  # one copy for both
        return index[:len(self.present)], index[len(self.present):]

    @property
    def group(self) -> Tensor:
        return self._device_index[0]

    def __len__(self) -> int:
        return self.model + int(self.has_model)

    def subset(self, positions: Sequence[int], model: bool = True) -> StepRows:
        """The rows of some of the present parameters (``positions`` into :attr:`present`):
        theirs, their layers' and (``model``) the model's, combining only them."""
        return StepRows([self.present[p] for p in positions], self._param_layer, self.n_layers, self.device, model)

    def stack(self, rows: Tensor) -> Tensor:
        """``[P, ...]`` parameter rows -> ``[P + L + 1, ...]`` on their device: the rows, each
        present layer's sum of its parameters' rows, then the model's of all of them."""
        layers = rows.new_zeros((self.n_layers, *rows.shape[1:])).index_add_(0, self.group, rows)
        model = [rows.sum(0, keepdim=True)] if self.has_model else []
        return torch.cat([rows, layers[self._device_index[1]], *model])

    @functools.cached_property
    def _pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(combined row, parameter position)`` of every membership: each parameter in its
        layer's row (counted from the first layer row), then in the model's."""
        p = len(self.present)
        rows, source = np.searchsorted(self.layers, self._layer_of), np.arange(p)
        if self.has_model:
            rows, source = np.concatenate([rows, np.full(p, len(self.layers))]), np.concatenate([source, source])
        return rows, source

    @functools.cached_property
    def _members(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``[L (+ 1), P]``: the parameters each layer row (and the model row) combines, as
        float64 (a product adds them up) and as bool; None where that would be large."""
        p, n = len(self.present), len(self) - len(self.present)
        if p * n > _DENSE_MAX:
            return None
        member = np.zeros((n, p), dtype=bool)
        member[self._pairs] = True
        return member.astype(np.float64), member

    def stack_host(self, values: np.ndarray, maxima: Sequence[int] = ()) -> np.ndarray:
        """:meth:`stack` on the host: ``[P, ...]`` values -> ``[P + L + 1, ...]`` float64, the
        layers' and the model's rows the sums of their parameters' rows (added in float64),
        except in the columns ``maxima`` of 2-d values: their maximum (a NaN kept)."""
        values = np.asarray(values, dtype=np.float64)
        members = self._members
        if members is not None and np.isfinite(values).all():  # one product, one masked maximum
            combined = members[0] @ values
            for c in maxima:
                combined[:, c] = np.where(members[1], values[:, c], -np.inf).max(1)
        else:  # (a NaN or Inf times 0 would spread: added one membership at a time)
            rows, source = self._pairs
            combined = np.zeros((len(self) - len(values), *values.shape[1:]))
            with np.errstate(invalid="ignore"):  # (a NaN is kept, as it should be, without a warning)
                np.add.at(combined, rows, values[source])
                for c in maxima:
                    top = np.full(len(combined), -np.inf)
                    np.maximum.at(top, rows, values[source, c])
                    combined[:, c] = top
        return np.concatenate([values, combined])

    def names(self, param_names: Sequence[str], layer_names: Sequence[str]) -> list[tuple[str, str]]:
        """``(level, name)`` of each row, in the order of :meth:`stack`."""
        return ([(Level.PARAM, param_names[i]) for i in self.present] + [(Level.LAYER, layer_names[k]) for k in self.layers]
                + [(Level.MODEL, "")] * self.has_model)

    def ids(self, ids: LevelIds) -> np.ndarray:
        """The series ids of the rows: ``[P + L + 1, stats]``, in the order of :meth:`stack`."""
        return np.concatenate([ids.param[self.present], ids.layer[self.layers], ids.model[:int(self.has_model)]])

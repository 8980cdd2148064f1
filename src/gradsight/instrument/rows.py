"""The rows of a recorded step: the parameter, layer and model levels stacked in one array.

A recorded step has one row per watched parameter with a gradient (level ``param``), one
per layer those parameters belong to (``layer``) and one for the model (``model``), in that
order. The monitor's statistics, the histograms and the update ratios are all stacked on
the device (:meth:`StepRows.stack`, :meth:`StepRows.stack_host` for values on the host) and
named (:meth:`StepRows.ids`, :meth:`StepRows.names`) by this one layout; its slices say where each level's rows are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gradsight.instrument.series import SeriesIds
from gradsight.store.schema import Level

#: ``combine(rows [R, ...], group [R], n) -> [n, ...]``: rows combined by group.
Combine = Callable[[Tensor, Tensor, int], Tensor]


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
        self._param_layer = param_layer
        self._layer_of = np.asarray(param_layer, dtype=np.int64)[self.present]
        self.layers = sorted(set(self._layer_of.tolist()))
        self.n_layers = n_layers
        p, n = len(self.present), len(self.layers)
        index = torch.from_numpy(np.concatenate([self._layer_of, np.asarray(self.layers, dtype=np.int64)]))
        index = index.to(device)  # one copy for both
        self.group, self._layer_index = index[:p], index[p:]
        self.params = slice(0, p)
        self.layer_rows = slice(p, p + n)
        self.model = p + n

    def __len__(self) -> int:
        return self.model + int(self.has_model)

    def subset(self, positions: Sequence[int], model: bool = True) -> StepRows:
        """The rows of some of the present parameters (``positions`` into :attr:`present`):
        theirs, their layers' and (``model``) the model's, combining only them."""
        return StepRows([self.present[p] for p in positions], self._param_layer, self.n_layers, self.group.device,
                        model)

    def stack(self, rows: Tensor, combine: Combine | None = None) -> Tensor:
        """``[P, ...]`` parameter rows -> ``[P + L + 1, ...]``: the rows, each present layer's
        combination of its parameters' rows, then the model's of all of them.

        ``combine`` defaults to sums (raw sums take :func:`~gradsight.stats.grad.aggregate`,
        whose ``maxabs`` is a maximum).
        """
        if combine is None:
            layers = rows.new_zeros((self.n_layers, *rows.shape[1:])).index_add_(0, self.group, rows)
            model = rows.sum(0, keepdim=True) if self.has_model else None
        else:
            layers = combine(rows, self.group, self.n_layers)
            model = combine(rows, torch.zeros_like(self.group), 1) if self.has_model else None
        return torch.cat([rows, layers[self._layer_index], *([model] if self.has_model else [])])

    def stack_host(self, values: np.ndarray) -> np.ndarray:
        """:meth:`stack` with sums of ``[P]`` values on the host."""
        layers = np.zeros(self.n_layers, dtype=values.dtype)
        np.add.at(layers, self._layer_of, values)
        return np.concatenate([values, layers[self.layers], [values.sum()] if self.has_model else []])

    def names(self, param_names: Sequence[str], layer_names: Sequence[str]) -> list[tuple[str, str]]:
        """``(level, name)`` of each row, in the order of :meth:`stack`."""
        return ([(Level.PARAM, param_names[i]) for i in self.present] + [(Level.LAYER, layer_names[k]) for k in self.layers]
                + [(Level.MODEL, "")] * self.has_model)

    def ids(self, ids: LevelIds) -> np.ndarray:
        """The series ids of the rows: ``[P + L + 1, stats]``, in the order of :meth:`stack`."""
        return np.concatenate([ids.param[self.present], ids.layer[self.layers], ids.model[:int(self.has_model)]])

"""Listeners: functions that receive every recorded value as it is queued for the store."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from gradsight.instrument.series import Key

log = logging.getLogger(__name__)

Listener = Callable[[int, list[Key], np.ndarray], None]
#: ``(step, keys, bucket_lo, dense)``: log2 histograms ``dense[i]`` of ``keys[i] = (level, name)``.
HistogramListener = Callable[[int, list[tuple[str, str]], int, np.ndarray], None]


class Listeners:
    """Calls listeners and close callbacks; a failing one is logged once and never raises."""

    def __init__(self) -> None:
        self._on_values: list[Listener] = []
        self._on_close: list[Callable[[], None]] = []
        self._on_histograms: list[HistogramListener] = []
        self._failed: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self._on_values)

    def add(self, listener: Listener, on_close: Callable[[], None] | None = None,
            on_histograms: HistogramListener | None = None) -> Callable[[], None]:
        """Register ``listener`` (and ``on_close``, ``on_histograms``); returns the function that removes them."""
        self._on_values.append(listener)
        if on_close is not None:
            self._on_close.append(on_close)
        if on_histograms is not None:
            self._on_histograms.append(on_histograms)

        def remove() -> None:
            if listener in self._on_values:
                self._on_values.remove(listener)
            if on_close is not None and on_close in self._on_close:
                self._on_close.remove(on_close)
            if on_histograms is not None and on_histograms in self._on_histograms:
                self._on_histograms.remove(on_histograms)

        return remove

    def values(self, step: int, keys: list[Key], values: np.ndarray) -> None:
        """Hand ``values[i]`` (float64), named by ``keys[i]``, recorded at ``step`` to every listener."""
        for listener in list(self._on_values):
            self._call(listener, step, keys, values)

    def histograms(self, step: int, keys: list[tuple[str, str]], bucket_lo: int, dense: np.ndarray) -> None:
        """Hand the log2 histograms recorded at ``step`` to every histogram listener."""
        for fn in list(self._on_histograms):
            self._call(fn, step, keys, bucket_lo, dense)

    def closed(self) -> None:
        """Call every close callback once the store is closed."""
        for fn in list(self._on_close):
            self._call(fn)

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # a listener never breaks training
            if id(fn) not in self._failed:
                self._failed.add(id(fn))
                log.error("gradsight: a listener (%r) failed: %s", fn, exc)

"""Listening to what a monitor records, as it records it.

The integrations forward the monitor's numbers to other places (a trainer's
logger, TensorBoard) at the moment they are written to the store. A listener is
called with ``(step, keys, values)``: ``keys[i] = (level, name, stat)`` names
``values[i]``. It is called on the training thread, right after the values are
queued for the store, and only in the process that writes the store (rank 0 under
``torch.distributed``). An exception in a listener is logged once and never
reaches the training loop.

This wraps the monitor's store writer; it relies on two internals of
:class:`gradsight.Monitor`: ``_writer`` (which receives ``add_series`` before any
``write_scalars`` of a new series) and ``_series`` (``{(level, name, stat): id}``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gradsight.integrations.distributed import NullWriter

log = logging.getLogger(__name__)

Key = tuple[str, str, str]
Listener = Callable[[int, list[Key], np.ndarray], None]


class _TeeWriter:
    """The monitor's writer, plus listeners on every ``write_scalars``."""

    def __init__(self, inner: Any, series: dict[Key, int]) -> None:
        self._inner = inner
        self._keys: dict[int, Key] = {sid: key for key, sid in series.items()}
        self.listeners: list[Listener] = []
        self.close_listeners: list[Callable[[], None]] = []
        self.active = not isinstance(inner, NullWriter)
        self._failed: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def add_series(self, rows: list[tuple[int, str, str, str]]) -> None:
        for sid, level, name, stat in rows:
            self._keys[int(sid)] = (level, name, stat)
        self._inner.add_series(rows)

    def write_scalars(self, step: int, series_ids: Any, values: Any, *args: Any, **kwargs: Any) -> None:
        self._inner.write_scalars(step, series_ids, values, *args, **kwargs)
        if not (self.active and self.listeners):
            return
        keys, kept = [], []
        for k, sid in enumerate(np.asarray(series_ids).tolist()):
            key = self._keys.get(int(sid))
            if key is not None:
                keys.append(key)
                kept.append(k)
        vals = np.asarray(values, dtype=np.float64)[kept]
        for listener in list(self.listeners):
            self._call(listener, int(step), keys, vals)

    def close(self, *args: Any, **kwargs: Any) -> None:
        try:
            self._inner.close(*args, **kwargs)
        finally:
            for fn in list(self.close_listeners):
                self._call(fn)

    def _call(self, fn: Callable, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # never break training for a listener
            if id(fn) not in self._failed:
                self._failed.add(id(fn))
                log.error("gradsight: a listener (%r) failed: %s", fn, exc)


def add_listener(monitor: Any, listener: Listener, on_close: Callable[[], None] | None = None) -> Callable[[], None]:
    """Call ``listener(step, keys, values)`` for everything ``monitor`` records from now on.

    Args:
        monitor: a :class:`gradsight.Monitor`.
        listener: called with the step, the ``(level, name, stat)`` keys and a float64
            array of values each time the monitor writes values.
        on_close: called once after the monitor has closed its store.

    Returns:
        A function that removes the listener (and ``on_close``).
    """
    tee = monitor._writer
    if not isinstance(tee, _TeeWriter):
        tee = _TeeWriter(monitor._writer, monitor._series)
        monitor._writer = tee
    tee.listeners.append(listener)
    if on_close is not None:
        tee.close_listeners.append(on_close)

    def remove() -> None:
        if listener in tee.listeners:
            tee.listeners.remove(listener)
        if on_close is not None and on_close in tee.close_listeners:
            tee.close_listeners.remove(on_close)

    return remove


def writes_store(monitor: Any) -> bool:
    """Whether this process writes ``monitor``'s store (False on ranks other than 0)."""
    writer = monitor._writer
    inner = writer._inner if isinstance(writer, _TeeWriter) else writer
    return not isinstance(inner, NullWriter)


def scalar_tag(level: str, name: str, stat: str) -> str:
    """A slash-separated name for one series, grouped by level and statistic.

    ``("layer", "features.0", "grad_norm") -> "layer/grad_norm/features.0"``,
    ``("model", "", "grad_norm") -> "model/grad_norm"``,
    ``("metric", "loss", "loss") -> "metric/loss"``; the root module (name ``""``)
    of a non-model level is ``(root)``.
    """
    if level == "metric":
        return f"metric/{name or stat}"
    if level == "model":
        return f"model/{stat}"
    return f"{level}/{stat}/{name or '(root)'}"


def select(keys: Sequence[Key], levels: Sequence[str] | None, stats: Sequence[str] | None) -> list[int]:
    """Indices of ``keys`` whose level is in ``levels`` and stat in ``stats`` (None: any)."""
    lv = None if levels is None else set(levels)
    st = None if stats is None else set(stats)
    return [
        i for i, (level, _, stat) in enumerate(keys)
        if (lv is None or level in lv) and (st is None or stat in st or level == "metric")
    ]

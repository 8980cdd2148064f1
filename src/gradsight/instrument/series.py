"""Series ids: one integer per ``(level, name, stat)``, registered with the store once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradsight.store.writer import Writer

Key = tuple[str, str, str]  #: ``(level, name, stat)``


class SeriesIds:
    """Hands out series ids (1, 2, ... in order of first use) and registers new ones.

    Args:
        writer: where :meth:`flush` registers the ids handed out since the last flush.
        known: ``(id, level, name, stat)`` rows registered already (a resumed run's): their
            ids are used again, new ones come after the largest.
    """

    def __init__(self, writer: Writer, known: Sequence[tuple[int, str, str, str]] = ()) -> None:
        self._writer = writer
        self._keys: dict[int, Key] = {int(sid): (level, name, stat) for sid, level, name, stat in known}
        self._ids: dict[Key, int] = {key: sid for sid, key in self._keys.items()}
        self._next = max(self._keys, default=0) + 1
        self._new: list[tuple[int, str, str, str]] = []

    def id(self, level: str, name: str, stat: str) -> int:
        """The id of one series (a new one on first use)."""
        key = (level, name, stat)
        sid = self._ids.get(key)
        if sid is None:
            sid = self._next
            self._next += 1
            self._ids[key] = sid
            self._keys[sid] = key
            self._new.append((sid, level, name, stat))
        return sid

    def grid(self, level: str, names: Sequence[str], stats: Sequence[str]) -> np.ndarray:
        """int64 ids ``[len(names), len(stats)]`` of every statistic of every name."""
        ids = [[self.id(level, name, stat) for stat in stats] for name in names]
        return np.array(ids, dtype=np.int64).reshape(len(names), len(stats))

    def keys(self, ids: np.ndarray) -> list[Key]:
        """The ``(level, name, stat)`` of each id."""
        return [self._keys[int(i)] for i in np.asarray(ids).tolist()]

    def flush(self) -> None:
        """Register the ids handed out since the last call with the store."""
        if self._new:
            new, self._new = self._new, []
            self._writer.add_series(new)

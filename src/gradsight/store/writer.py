"""Background writer: batches rows and commits at least every second.

Training threads only put work on a queue; one thread owns the SQLite
connection. A process killed with SIGKILL loses at most the rows queued or
written since the last commit (about one second of recording); the database is
in WAL mode, so it always reopens in a consistent state.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gradsight.store.packed import PAGE_SIZE, PackedWriter
from gradsight.store.schema import DB_NAME, SCHEMA, SCHEMA_VERSION

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 1.0


class Writer(Protocol):
    """What the monitor writes a run through: :class:`StoreWriter` or :class:`NullWriter`.

    Every method only queues work and returns at once, except :meth:`flush` and
    :meth:`close`, which block until what was queued is on disk.
    """

    run_dir: Path

    def set_meta(self, **items: Any) -> None: ...

    def add_series(self, rows: list[tuple[int, str, str, str]]) -> None: ...

    def write_params(self, rows: list[tuple]) -> None: ...

    def write_layers(self, rows: list[tuple]) -> None:
        """Replace the whole ``layers`` table by ``(name, depth, module_type, kind, role, tied)``
        rows (``role`` and ``tied`` may be left out: readers derive them)."""

    def write_scalars(self, step: int, series_ids: np.ndarray, values: np.ndarray,
                      time_s: float | None = None) -> None: ...

    def flush(self, timeout: float | None = 30.0) -> None: ...

    def close(self, status: str = "finished", **meta: Any) -> None: ...

    @property
    def closed(self) -> bool: ...


class NullWriter:
    """A :class:`Writer` that drops everything and creates no file (ranks other than 0)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._closed = False

    def set_meta(self, **items: Any) -> None:
        pass

    def add_series(self, rows: list[tuple[int, str, str, str]]) -> None:
        pass

    def write_params(self, rows: list[tuple]) -> None:
        pass

    def write_layers(self, rows: list[tuple]) -> None:
        pass

    def write_scalars(self, step: int, series_ids: np.ndarray, values: np.ndarray,
                      time_s: float | None = None) -> None:
        pass

    def flush(self, timeout: float | None = 30.0) -> None:
        pass

    def close(self, status: str = "finished", **meta: Any) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed


class StoreWriter:
    """Owns a run database and writes to it from a background thread.

    Args:
        run_dir: directory of the run (created if missing).
        overwrite: replace an existing store in ``run_dir`` instead of raising.
    """

    _packed: PackedWriter | None = None  #: packs values on the writer thread (created there)

    def __init__(self, run_dir: str | Path, *, overwrite: bool = False) -> None:
        from gradsight._errors import RunError

        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        if self.path.exists():
            if not overwrite:
                raise RunError(
                    f"{self.run_dir} already holds a run; pass overwrite=True or choose another run_dir"
                )
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._closed = False
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="gradsight-writer", daemon=True)
        self._thread.start()
        ready.wait()
        if self._error is not None:
            raise self._error

    # -- API used by the training thread (never blocks on disk) -----------------
    def set_meta(self, **items: Any) -> None:
        self._put(("meta", items))

    def add_series(self, rows: list[tuple[int, str, str, str]]) -> None:
        """Register series ``(id, level, name, stat)``."""
        self._put(("many", "INSERT OR IGNORE INTO series(id, level, name, stat) VALUES (?,?,?,?)", rows))

    def write_params(self, rows: list[tuple]) -> None:
        self._put(("many", "INSERT OR REPLACE INTO params VALUES (?,?,?,?,?,?,?,?)", rows))

    def write_layers(self, rows: list[tuple]) -> None:
        """Replace the whole ``layers`` table by ``(name, depth, module_type, kind, role, tied)``
        rows (``role`` and ``tied`` may be left out: readers derive them)."""
        self._put(("layers", rows))

    def write_scalars(self, step: int, series_ids: np.ndarray, values: np.ndarray, time_s: float | None = None) -> None:
        """Values of several series at one step (packed: :mod:`gradsight.store.packed`)."""
        self._put(("scalars", int(step), series_ids, values, time_s))

    def flush(self, timeout: float | None = 30.0) -> None:
        """Block until everything queued so far is committed."""
        done = threading.Event()
        self._put(("flush", done))
        done.wait(timeout)

    def close(self, status: str = "finished", **meta: Any) -> None:
        """Write final metadata, commit, leave a plain (non-WAL) database; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(("close", dict(status=status, end_time=time.time(), **meta)))
        self._thread.join(timeout=60)

    @property
    def closed(self) -> bool:
        return self._closed

    def _put(self, item: tuple) -> None:
        if self._closed:
            return
        if self._error is not None:
            err, self._error = self._error, None
            log.error("gradsight: the run store failed: %s", err)
        self._queue.put(item)

    # -- writer thread ---------------------------------------------------------
    def _run(self, ready: threading.Event) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=2.0)
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before WAL mode, which fixes it
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),)
            )
            conn.execute("BEGIN")
        except BaseException as exc:  # surfaced in __init__
            self._error = exc
            ready.set()
            return
        ready.set()
        last_commit = time.monotonic()
        dirty = False
        while True:
            timeout = max(0.0, COMMIT_INTERVAL_S - (time.monotonic() - last_commit)) if dirty else None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    kind = item[0]
                    if kind == "close":
                        try:
                            self._handle_meta(conn, item[1])
                            conn.execute("COMMIT")
                            try:  # leave one plain file; stays in WAL mode while a reader holds it open
                                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                                conn.execute("PRAGMA journal_mode=DELETE")
                            except sqlite3.OperationalError:
                                pass
                        finally:
                            conn.close()
                        return
                    if kind == "flush":
                        conn.execute("COMMIT")
                        conn.execute("BEGIN")
                        last_commit, dirty = time.monotonic(), False
                        item[1].set()
                        continue
                    self._handle(conn, item)
                    dirty = True
                if dirty and time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                    conn.execute("COMMIT")
                    conn.execute("BEGIN")
                    last_commit, dirty = time.monotonic(), False
            except Exception as exc:  # keep training alive; report once
                log.error("gradsight: writing the run store failed: %s", exc)
                self._error = exc
                if item is not None and item[0] == "flush":
                    item[1].set()

    def _handle(self, conn: sqlite3.Connection, item: tuple) -> None:
        kind = item[0]
        if kind == "scalars":
            _, step, ids, values, time_s = item
            if self._packed is None:
                self._packed = PackedWriter(conn)
            self._packed.write(step, ids, values)
            if time_s is not None:
                conn.execute("INSERT OR REPLACE INTO steps(step, time) VALUES (?,?)", (step, time_s))
        elif kind == "many":
            conn.executemany(item[1], item[2])
        elif kind == "layers":  # in one transaction: a reader never sees the table empty
            conn.execute("DELETE FROM layers")
            conn.executemany("INSERT INTO layers(name, depth, module_type, kind, role, tied) VALUES (?,?,?,?,?,?)",
                             [tuple(row) + (None,) * (6 - len(row)) for row in item[1]])
        elif kind == "meta":
            self._handle_meta(conn, item[1])
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown store message {kind!r}")

    @staticmethod
    def _handle_meta(conn: sqlite3.Connection, items: dict) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)",
            [(k, json.dumps(v, default=str)) for k, v in items.items()],
        )

"""Background writer: batches rows and commits at least every second.

Training threads only put work on a bounded queue; one thread owns the SQLite
connection. A process killed with SIGKILL loses at most the rows queued or
written since the last commit (about one second of recording); the database is
in WAL mode, so it always reopens in a consistent state. A store that cannot be
written (full disk, a lock held elsewhere) is retried and never raises into
training; see "Failure behaviour" in docs/design.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gradsight._errors import RunError
from gradsight._version import __version__
from gradsight.store.access import RunLock
from gradsight.store import histograms as _histograms
from gradsight.store.packed import PAGE_SIZE, PackedWriter
from gradsight.store.schema import DB_NAME, SCHEMA, SCHEMA_VERSION, Level

log = logging.getLogger(__name__)

#: Seconds between commits while recording.
COMMIT_INTERVAL_S = 1.0
#: Seconds between attempts to write a store that failed (full disk, a lock held elsewhere).
RETRY_INTERVAL_S = 2.0
#: Seconds ``close()`` keeps retrying a failed store before it gives up on what is queued.
CLOSE_RETRY_S = 3.0
#: Seconds between those attempts while closing.
CLOSE_RETRY_INTERVAL_S = 0.25
#: Seconds a statement waits for another process's write lock before it fails.
BUSY_TIMEOUT_S = 2.0
#: The same while ``close()`` retries a failed store and gives up.
CLOSING_BUSY_TIMEOUT_S = 0.2
#: Statistics waiting to be written, at most, in bytes; beyond, the oldest recorded steps are dropped.
MAX_QUEUE_BYTES = 32 * 2**20
#: The writer commits once it holds this fraction of the queue's bound (else every second),
#: so what waits in memory stays below ``1.25 * max_queue_bytes``.
BATCH_FRACTION = 0.25
#: Bytes kept in ``gradsight.sqlite-reserve`` while recording, freed to record the status
#: of a run whose disk is full.
RESERVE_BYTES = 64 * 2**10
#: Seconds ``close()`` waits for a writer thread that makes no progress (a filesystem call
#: that hangs); a failing store ends it within about
#: ``CLOSE_RETRY_S + BUSY_TIMEOUT_S + 5 * CLOSING_BUSY_TIMEOUT_S``.
CLOSE_STALL_S = 60.0


class Writer(Protocol):
    """What the monitor writes a run through: :class:`StoreWriter` or :class:`NullWriter`.

    Every method only queues work and returns at once, except :meth:`flush` and
    :meth:`close`, which block until what was queued is on disk (or, for a store
    that cannot be written, until the writer has said so; see :class:`StoreWriter`).
    """

    run_dir: Path

    def set_meta(self, **items: Any) -> None: ...

    def add_series(self, rows: list[tuple[int, str, str, str]]) -> None: ...

    def write_params(self, rows: list[tuple]) -> None: ...

    def write_layers(self, rows: list[tuple]) -> None:
        """Replace the whole ``layers`` table by ``(name, depth, module_type, kind, role, tied)``
        rows (``role`` and ``tied`` may be left out: readers derive them)."""

    @property
    def earlier(self) -> Earlier | None:
        """What a resumed run had recorded (None: a new run)."""

    def continue_from(self, step: int | None) -> None:
        """Continue the resumed run: drop the metadata of how its earlier part ended and, with
        ``step``, every value recorded at ``step`` or later."""

    def write_scalars(self, step: int, series_ids: np.ndarray, values: np.ndarray,
                      time_s: float | None = None) -> None: ...

    def write_histograms(self, step: int, keys: list[tuple[str, str]], bucket_lo: int, dense: np.ndarray) -> None:
        """Log2 histograms ``dense[i]`` (int64, column 0 = bucket ``bucket_lo``) of ``keys[i] = (level, name)``."""

    def flush(self, timeout: float | None = 30.0) -> None: ...

    def close(self, status: str = "finished", **meta: Any) -> None: ...

    @property
    def closed(self) -> bool: ...


@dataclass(frozen=True)
class Earlier:
    """What a run opened with ``resume=True`` had recorded, read when the writer opened it."""

    meta: dict[str, Any]  #: its metadata
    series: list[tuple[int, str, str, str]]  #: ``(id, level, name, stat)`` rows
    params: list[str]  #: its parameter names
    steps: list[int] = field(default_factory=list)  #: its recorded steps (rows of ``steps``), ascending
    last_step: int | None = None  #: the last step holding any value (a metric too); None: nothing recorded

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "unknown"))


def _read_earlier(conn: sqlite3.Connection, path: Path) -> Earlier | None:
    """What the store at ``path`` holds (None: no run in it, as in a file created by a process
    killed before its first commit).

    Raises:
        RunError: the store was written in another schema version.
    """
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "meta" not in tables:
        return None
    meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    if not meta:
        return None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise RunError(f"cannot resume the run in {path.parent}: its store has schema version "
                       f"{meta.get('schema_version')}, and gradsight {__version__} continues version {SCHEMA_VERSION} "
                       "only; pass overwrite=True to replace it or choose another run_dir")
    last = [conn.execute(f"SELECT MAX(step) FROM {t}").fetchone()[0] for t in ("steps", "packed", "histograms")
            if t in tables]
    last = [int(x) for x in last if x is not None]
    return Earlier(
        meta=meta,
        series=[(int(i), lv, n, st) for i, lv, n, st in conn.execute("SELECT id, level, name, stat FROM series")],
        params=[r[0] for r in conn.execute("SELECT name FROM params ORDER BY position")] if "params" in tables else [],
        steps=[int(r[0]) for r in conn.execute("SELECT step FROM steps ORDER BY step")] if "steps" in tables else [],
        last_step=max(last) if last else None,
    )


#: Metadata of how a run's earlier part ended, dropped when it is resumed.
ENDING_META = ("end_time", "error", "store_error")


class NullWriter:
    """A :class:`Writer` that drops everything and creates no file (ranks other than 0)."""

    earlier = None

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._closed = False

    def continue_from(self, step: int | None) -> None:
        pass

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

    def write_histograms(self, step: int, keys: list[tuple[str, str]], bucket_lo: int, dense: np.ndarray) -> None:
        pass

    def flush(self, timeout: float | None = 30.0) -> None:
        pass

    def close(self, status: str = "finished", **meta: Any) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed


class _Backlog:
    """The writer's FIFO queue, bounded in bytes of queued statistics.

    Metadata, series, parameters, layers and flush requests are always kept. When
    the statistics (``scalars`` items) waiting exceed ``max_bytes``, the oldest of
    them are dropped and counted: a store that cannot keep up never grows memory
    without limit and never slows training down.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: deque[tuple] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self.closing = threading.Event()
        self.steps_dropped = 0  #: recorded steps whose statistics were dropped
        self.values_dropped = 0  #: statistic values dropped (recorded steps, update ratios, logged metrics)

    def put(self, item: tuple) -> int:
        """Queue ``item``; returns how many recorded steps were dropped to make room."""
        with self._cond:
            self._items.append(item)
            before = self.steps_dropped
            if item[0] == "scalars":
                self._bytes += _nbytes(item)
                while self._bytes > self.max_bytes:
                    oldest = next((k for k, it in enumerate(self._items) if it[0] == "scalars"), None)
                    if oldest is None or self._items[oldest] is item:
                        break  # the newest step is always kept
                    dropped = self._items[oldest]
                    del self._items[oldest]
                    self._bytes -= _nbytes(dropped)
                    self._count_dropped([dropped])
            # a recorded step's values wait for the writer's next round (at most COMMIT_INTERVAL_S):
            # waking it at every step would make the training thread wait for the interpreter lock
            if item[0] != "scalars" or self._bytes >= BATCH_FRACTION * self.max_bytes:
                self._cond.notify()
            return self.steps_dropped - before

    def get(self, timeout: float | None) -> tuple | None:
        """The oldest item; None when ``timeout`` passed; :data:`_CLOSE` once closing and empty."""
        with self._cond:
            if not self._items and not self.closing.is_set():
                self._cond.wait(timeout)
            if self._items:
                item = self._items.popleft()
                if item[0] == "scalars":
                    self._bytes -= _nbytes(item)
                return item
            return _CLOSE if self.closing.is_set() else None

    def empty(self) -> bool:
        """Whether nothing waits (read without the lock: a hint for when to commit)."""
        return not self._items

    def drain(self) -> list[tuple]:
        """Remove and return every queued item."""
        with self._cond:
            items, self._items, self._bytes = list(self._items), deque(), 0
            return items

    def close(self) -> None:
        with self._cond:
            self.closing.set()
            self._cond.notify_all()

    def _count_dropped(self, items: list[tuple]) -> None:
        for item in items:
            if item[0] == "scalars":
                self.steps_dropped += item[-1] is not None  # a recorded step's own item carries its time
                self.values_dropped += len(item[3])

    def count_lost(self, items: list[tuple]) -> None:
        """Count ``items`` (taken from the queue earlier) as dropped."""
        with self._cond:
            self._count_dropped(items)


_CLOSE = ("close",)


def _nbytes(item: tuple) -> int:
    return sum(x.nbytes for x in item if isinstance(x, np.ndarray))


RESERVE_SUFFIX = "-reserve"


def _write_reserve(path: Path) -> None:
    """Keep :data:`RESERVE_BYTES` of disk next to the store (none if the disk has no room)."""
    reserve = Path(str(path) + RESERVE_SUFFIX)
    try:
        reserve.write_bytes(os.urandom(RESERVE_BYTES))  # random: not stored as a hole or compressed away
    except OSError:
        reserve.unlink(missing_ok=True)


def _free_reserve(path: Path) -> None:
    try:
        Path(str(path) + RESERVE_SUFFIX).unlink(missing_ok=True)
    except OSError:
        pass


def _sql_text(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _is_store_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is about the store (full disk, lock, I/O, corruption), not one item's values."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def _advice(exc: BaseException) -> str:
    text = str(exc).lower()
    if "full" in text or "i/o" in text:
        return "free space on the disk that holds it"
    if "locked" in text or "busy" in text:
        return "another process holds a write lock on it; end that process's transaction"
    if "readonly" in text or "read-only" in text:
        return "make it writable"
    return "check the disk and the file"


def _claim(run_dir: Path, path: Path, overwrite: bool, resume: bool = False) -> RunLock:
    """Create ``run_dir`` if needed, lock it for this process and create an empty ``path``
    (with ``resume``, keep the one there).

    Raises:
        RunError: ``run_dir`` is a file or cannot be created or written, another process
            owns it, or it holds a run and neither ``overwrite`` nor ``resume`` is True.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} is a file, not a directory; choose another run_dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create the run directory {run_dir}: {exc.strerror}") from None
    lock = RunLock.acquire(run_dir, path)
    try:
        if resume and path.exists():
            _write_reserve(path)
            return lock
        if any(Path(str(path) + suffix).exists() for suffix in ("", "-wal")):
            if not overwrite:
                raise RunError(f"{run_dir} already holds a run; pass overwrite=True to replace it, resume=True to "
                               "continue it, or choose another run_dir")
            for suffix in ("", "-wal", "-shm", RESERVE_SUFFIX):
                Path(str(path) + suffix).unlink(missing_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        _write_reserve(path)
    except FileExistsError:
        lock.release()
        raise RunError(f"{run_dir} already holds a run: another process created it just now") from None
    except OSError as exc:
        lock.release()
        raise RunError(f"cannot write the run store {path}: {exc.strerror}; choose a writable run_dir") from None
    except BaseException:
        lock.release()
        raise
    return lock


class StoreWriter:
    """Owns a run database and writes to it from a background thread.

    Only this object writes its run directory while it is open: it holds the
    directory's lock (:mod:`gradsight.store.access`) until :meth:`close` returns.

    A store that cannot be written (full disk, a write lock held elsewhere) never
    raises into training: the failure is logged once, the last commit stays
    readable, writing is retried every :data:`RETRY_INTERVAL_S` seconds, and the
    queue keeps at most ``max_queue_bytes`` of statistics, dropping the oldest
    recorded steps beyond (counted in ``meta.steps_dropped``).

    Args:
        run_dir: directory of the run (created if missing).
        overwrite: replace an existing store in ``run_dir`` instead of raising
            (never one another process is writing).
        resume: open the store in ``run_dir`` to add to it (what it holds:
            :attr:`earlier`); a new one if there is none.
        max_queue_bytes: statistics waiting to be written, at most (default
            :data:`MAX_QUEUE_BYTES`).

    Raises:
        RunError: ``run_dir`` is a file or not writable, is being written by another
            process, or holds a run and neither ``overwrite`` nor ``resume`` is True; with
            ``resume``, the run there has another schema version.
    """

    _packed: PackedWriter | None = None  #: packs values on the writer thread (created there)
    earlier: Earlier | None = None  #: what a resumed run had recorded (set before ``__init__`` returns)

    def __init__(self, run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
                 max_queue_bytes: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        existed = resume and self.path.exists()
        self._lock = _claim(self.run_dir, self.path, overwrite, resume)
        self._resume = resume
        self._discard = False
        self._backlog = _Backlog(MAX_QUEUE_BYTES if max_queue_bytes is None else max_queue_bytes)
        self._failure: str | None = None  # why the store cannot be written now; None while it can
        self._failed_since = 0.0
        self._store_error: str | None = None  # the first failure, written to meta at close
        self._warned_drop = False
        self._warned_bad_value = False
        self._final_meta: dict[str, Any] = {}
        self._close_deadline = math.inf
        self._progress = time.monotonic()  # when the writer last wrote an item
        self._closed = False
        self._error: BaseException | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="gradsight-writer", daemon=True)
        self._thread.start()
        ready.wait()
        if self._error is not None:
            if existed:  # a resumed store is left as it was
                _free_reserve(self.path)
            else:
                for suffix in ("", "-wal", "-shm", RESERVE_SUFFIX):  # created by this writer a moment ago
                    Path(str(self.path) + suffix).unlink(missing_ok=True)
            self._lock.release()
            if isinstance(self._error, RunError):
                raise self._error
            raise RunError(f"cannot {'open' if existed else 'create'} the run store {self.path} ({self._error})") \
                from None

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

    def write_histograms(self, step: int, keys: list[tuple[str, str]], bucket_lo: int, dense: np.ndarray) -> None:
        """Log2 histograms ``dense[i]`` (int64, column 0 = bucket ``bucket_lo``) of
        ``keys[i] = (level, name)``; stored sparsely (:mod:`gradsight.store.histograms`)."""
        self._put(("histograms", int(step), keys, int(bucket_lo), dense))

    def continue_from(self, step: int | None) -> None:
        """Continue the resumed run: drop the metadata of how its earlier part ended
        (:data:`ENDING_META`) and, with ``step``, every value recorded at ``step`` or later."""
        self._put(("continue", step))

    def flush(self, timeout: float | None = 30.0) -> None:
        """Block until everything queued so far is committed, or the store has failed
        (then return at once: the failure is logged by the writer)."""
        if self._closed:
            return
        done = threading.Event()
        self._put(("flush", done))
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while not done.wait(0.05):
            if self._failure is not None or not self._thread.is_alive() or time.monotonic() >= deadline:
                return

    def close(self, status: str = "finished", *, discard: bool = False, **meta: Any) -> None:
        """Write what is queued and the final metadata, leave a plain (non-WAL) database
        and release the run directory; idempotent. With ``discard``, write nothing more
        (what is queued and not committed yet is dropped: a failed ``gs.watch`` leaves a
        resumed run as it was).

        Returns within about :data:`CLOSE_RETRY_S` seconds when the store cannot be
        written; what could not be written is counted and logged.
        """
        if self._closed:
            return
        self._closed = True
        if discard:
            self._discard = True
            self._backlog.drain()
        self._final_meta = dict(status=status, end_time=time.time(), **meta)
        self._close_deadline = time.monotonic() + CLOSE_RETRY_S
        self._backlog.close()
        while True:  # as long as the writer makes progress: what was queued is written
            self._thread.join(0.5)
            if not self._thread.is_alive():
                break
            if time.monotonic() - self._progress > CLOSE_STALL_S:  # pragma: no cover - a hung filesystem
                log.error("gradsight: the writer of %s made no progress for %.0f s; the run directory stays "
                          "locked until this process ends", self.path, CLOSE_STALL_S)
                return
        _free_reserve(self.path)
        self._lock.release()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def steps_dropped(self) -> int:
        """Recorded steps whose statistics were dropped so far (the queue was full or the store failed)."""
        return self._backlog.steps_dropped

    def _put(self, item: tuple) -> None:
        if self._closed:
            return
        if self._backlog.put(item) and not self._warned_drop and self._failure is None:
            self._warned_drop = True  # a failing store has said so already
            log.warning(
                "gradsight: the run store %s cannot keep up: more than %.3g MB of statistics wait to be written, "
                "so the oldest recorded steps are dropped (counted in meta 'steps_dropped'); record less often "
                "(every=) or write to a faster disk", self.path, self._backlog.max_bytes / 2**20)

    # -- writer thread ---------------------------------------------------------
    def _run(self, ready: threading.Event) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
            try:
                if self._resume:  # before anything changes the store: one of another version is left as it was
                    self.earlier = _read_earlier(conn, self.path)
                conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before WAL mode, which fixes it
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                # tables, schema version and owner in one commit (a second process names this one from them)
                owner = {"schema_version": SCHEMA_VERSION, "pid": os.getpid(), "host": socket.gethostname()}
                rows = ", ".join(f"({_sql_text(k)}, {_sql_text(json.dumps(v))})" for k, v in owner.items())
                conn.executescript(f"BEGIN; {SCHEMA}; INSERT OR REPLACE INTO meta(key, value) VALUES {rows}; COMMIT;")
            except BaseException:
                conn.close()
                raise
        except BaseException as exc:  # surfaced in __init__
            self._error = exc
            ready.set()
            return
        ready.set()
        try:
            self._serve(conn)
        except Exception:  # pragma: no cover - a bug here must not leave the thread spinning
            log.exception("gradsight: the writer of %s stopped; what was not committed is lost", self.path)
        finally:
            conn.close()

    def _serve(self, conn: sqlite3.Connection) -> None:
        """Commit queued items every :data:`COMMIT_INTERVAL_S` seconds, on flush and at close;
        while the store fails, retry the uncommitted items until it works again or close gives up."""
        batch: list[tuple] = []  # taken from the queue, not committed yet (replayed after a failure)
        batch_bytes = 0  # of the statistics in batch
        last_commit = time.monotonic()
        while True:
            if self._failure is not None:
                if not self._backlog.closing.is_set():
                    self._backlog.closing.wait(RETRY_INTERVAL_S)
                    if self._commit(conn, batch):
                        self._recovered()
                        batch, batch_bytes, last_commit = [], 0, time.monotonic()
                    continue
                conn.execute(f"PRAGMA busy_timeout = {int(CLOSING_BUSY_TIMEOUT_S * 1000)}")
                if time.monotonic() >= self._close_deadline:
                    self._give_up(conn, batch)
                    return
                time.sleep(CLOSE_RETRY_INTERVAL_S)
                batch += self._backlog.drain()  # nothing is queued after close()
                flushes = [item for item in batch if item[0] == "flush"]
                batch = [item for item in batch if item[0] != "flush"]
                for item in flushes:
                    item[1].set()
                if self._commit(conn, batch, final=True):
                    self._recovered()
                    self._finish(conn)
                    return
                continue
            timeout = max(0.0, COMMIT_INTERVAL_S - (time.monotonic() - last_commit)) if batch else COMMIT_INTERVAL_S
            item = self._backlog.get(timeout)
            if item is _CLOSE:
                if self._discard:
                    batch = []
                if self._commit(conn, batch, final=True):
                    self._finish(conn)
                    return
                continue
            flush = None
            if item is not None:
                if item[0] == "flush":
                    flush = item[1]
                else:
                    batch.append(item)
                    batch_bytes += _nbytes(item)
            if (flush is not None or batch_bytes >= BATCH_FRACTION * self._backlog.max_bytes
                    or (batch and time.monotonic() - last_commit >= COMMIT_INTERVAL_S and self._backlog.empty())):
                if self._commit(conn, batch):
                    batch, batch_bytes, last_commit = [], 0, time.monotonic()
                if flush is not None:
                    flush.set()

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple], final: bool = False) -> bool:
        """Write ``batch`` (and, if ``final``, the closing metadata) in one transaction;
        True when committed.

        An item whose values cannot be stored is taken out of ``batch`` (logged once,
        counted as dropped) and the rest written again; a store failure rolls
        everything back and is logged by :meth:`_failed`.
        """
        if not batch and not final:
            return True
        while True:
            bad: tuple[int, Exception] | None = None
            try:
                conn.execute("BEGIN")
                for k, item in enumerate(batch):
                    try:
                        self._handle(conn, item)
                    except Exception as exc:
                        if _is_store_failure(exc):
                            raise
                        bad = (k, exc)
                        break
                    self._progress = time.monotonic()
                if bad is None:
                    if final and not self._discard:  # after the items: its counts include what they dropped
                        self._handle_meta(conn, self._final_meta_items())
                    conn.execute("COMMIT")
                    return True
                conn.execute("ROLLBACK")  # rare: no savepoint per item, which would cost every commit
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                self._failed(exc)
                return False
            k, exc = bad
            self._bad_item(batch.pop(k), exc)

    def _bad_item(self, item: tuple, exc: Exception) -> None:
        self._backlog.count_lost([item])
        if not self._warned_bad_value:
            self._warned_bad_value = True
            log.error("gradsight: a value could not be stored in %s and was left out (%s: %s)",
                      self.path, type(exc).__name__, exc)

    def _failed(self, exc: sqlite3.Error) -> None:
        if self._store_error is None:
            self._store_error = str(exc)
        if self._failure is not None:
            return
        self._failure, self._failed_since = str(exc), time.monotonic()
        log.error(
            "gradsight: cannot write the run store %s (%s): %s. Training goes on; the last commit stays readable; "
            "writing is retried every %g s and the oldest recorded steps are dropped once %.3g MB wait in memory",
            self.path, exc, _advice(exc), RETRY_INTERVAL_S, self._backlog.max_bytes / 2**20)

    def _recovered(self) -> None:
        log.warning("gradsight: writing the run store %s again after %.0f s; %d recorded steps were dropped so far",
                    self.path, time.monotonic() - self._failed_since, self._backlog.steps_dropped)
        self._failure = None

    def _final_meta_items(self) -> dict[str, Any]:
        """The closing metadata: status, end time, what was dropped and the first store failure."""
        meta = dict(self._final_meta, steps_dropped=self._backlog.steps_dropped,
                    values_dropped=self._backlog.values_dropped)
        if self._store_error is not None:
            meta["store_error"] = self._store_error
        return meta

    def _finish(self, conn: sqlite3.Connection) -> None:
        try:  # leave one plain file; stays in WAL mode while a reader holds it open (or the disk is full)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error:
            pass
        if self._backlog.steps_dropped:
            log.warning("gradsight: %d recorded steps were dropped and are not in %s (meta 'steps_dropped')",
                        self._backlog.steps_dropped, self.path)

    def _give_up(self, conn: sqlite3.Connection, batch: list[tuple]) -> None:
        """Close a store that still fails: count what was not written, try to record that and the status."""
        rest = batch + self._backlog.drain()
        for item in rest:
            if item[0] == "flush":
                item[1].set()
        self._backlog.count_lost(rest)
        keep = [item for item in rest if item[0] not in ("scalars", "flush")]
        marked = self._commit(conn, keep, final=True) or self._commit(conn, [], final=True)
        if not marked:  # a full disk: free the reserve for the metadata
            _free_reserve(self.path)
            marked = self._commit(conn, [], final=True)
        if not marked:  # a file size limit: moving the WAL into the database may leave room
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            marked = self._commit(conn, [], final=True)
        log.error("gradsight: closed the run store %s without writing %d recorded steps (%s); it keeps the steps "
                  "committed before%s", self.path, self._backlog.steps_dropped, self._failure,
                  "" if marked else ", and its status still says 'running'")

    def _handle(self, conn: sqlite3.Connection, item: tuple) -> None:
        kind = item[0]
        if kind == "scalars":
            _, step, ids, values, time_s = item
            if self._packed is None:
                self._packed = PackedWriter(conn, apart=Level.TOTALS)
            self._packed.write(step, ids, values)
            if time_s is not None:
                conn.execute("INSERT OR REPLACE INTO steps(step, time) VALUES (?,?)", (step, time_s))
        elif kind == "many":
            conn.executemany(item[1], item[2])
        elif kind == "histograms":
            conn.executemany(_histograms.INSERT, _histograms.rows(*item[1:]))
        elif kind == "layers":  # in one transaction: a reader never sees the table empty
            conn.execute("DELETE FROM layers")
            conn.executemany("INSERT INTO layers(name, depth, module_type, kind, role, tied) VALUES (?,?,?,?,?,?)",
                             [tuple(row) + (None,) * (6 - len(row)) for row in item[1]])
        elif kind == "meta":
            self._handle_meta(conn, item[1])
        elif kind == "continue":
            conn.execute(f"DELETE FROM meta WHERE key IN ({','.join('?' * len(ENDING_META))})", ENDING_META)
            if item[1] is not None:
                for table in ("packed", "steps", "histograms"):
                    conn.execute(f"DELETE FROM {table} WHERE step >= ?", (int(item[1]),))
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown store message {kind!r}")

    @staticmethod
    def _handle_meta(conn: sqlite3.Connection, items: dict) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)",
            [(k, json.dumps(v, default=str)) for k, v in items.items()],
        )

"""Who may write a run directory, and how readers open a store without changing it.

One process owns a run directory while it records: it holds an exclusive ``flock``
on the directory itself from before the store is created until the writer has
closed it. The kernel releases the lock when the process dies, so a killed run can
be replaced (``overwrite=True``) while a live one cannot. The lock adds no file to
the run directory. Where ``flock`` is missing (Windows) or the filesystem refuses
it, only the creation of the store file is exclusive (``O_EXCL``).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from gradsight._errors import RunError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Seconds a second process waits for the owner of a run directory to write its pid
#: and host (the owner writes them right after taking the lock).
OWNER_WAIT_S = 1.0

#: File descriptors of the run directories this process owns (closed in forked
#: children, which would otherwise keep the lock after this process ends).
_HELD_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_FDS):  # closing a copy leaves the parent's lock in place
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class RunLock:
    """The exclusive right of this process to write one run directory.

    Create with :meth:`acquire`; :meth:`release` is idempotent.
    """

    def __init__(self, run_dir: Path, fd: int | None) -> None:
        self.run_dir = run_dir
        self._fd = fd

    @classmethod
    def acquire(cls, run_dir: Path, db_path: Path) -> RunLock:
        """Take the lock of ``run_dir`` (an existing directory) without waiting.

        Raises:
            RunError: another process (or another monitor of this one) owns
                ``run_dir``; the message names it by pid and host from ``db_path``.
        """
        if fcntl is None:
            return cls(run_dir, None)
        try:
            fd = os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            raise RunError(f"cannot open the run directory {run_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return cls(run_dir, None)  # a filesystem without flock: creation stays exclusive
            raise RunError(
                f"{run_dir} is being recorded by {describe_owner(db_path)}; "
                "choose another run_dir or wait until that run is closed"
            ) from None
        _HELD_FDS.add(fd)
        return cls(run_dir, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD_FDS.discard(fd)
        os.close(fd)  # releases the flock


def describe_owner(db_path: Path) -> str:
    """``'pid 123 on host-a'`` from the store's ``meta`` (``'another process (...)'`` when
    the owner has not written it within :data:`OWNER_WAIT_S`)."""
    deadline = time.monotonic() + OWNER_WAIT_S
    while True:
        owner = read_owner(db_path)
        if owner is not None:
            pid, host = owner
            this = " (this process)" if pid == os.getpid() and host == socket.gethostname() else ""
            return f"pid {pid} on {host}{this}"
        if time.monotonic() >= deadline:
            return "another process (its pid and host are not in the store yet)"
        time.sleep(0.02)


def read_owner(db_path: Path) -> tuple[int, str] | None:
    """``(pid, host)`` recorded in the store at ``db_path``, or None if unreadable."""
    try:
        if db_path.stat().st_size == 0:
            return None
        with closing(connect_readonly(db_path)) as conn:
            rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('pid', 'host')"))
        return int(json.loads(rows["pid"])), str(json.loads(rows["host"]))
    except (OSError, sqlite3.Error, KeyError, ValueError, TypeError):
        return None


def connect_readonly(db_path: Path) -> sqlite3.Connection:
    """A read-only connection that creates and changes no file next to ``db_path``.

    A store in WAL mode (a live run, or one whose process was killed) keeps recent
    commits in ``-wal`` and an index of them in ``-shm``. Readers open the ``-shm``
    read-only (SQLite's ``readonly_shm``), which still sees every new commit of a
    live writer and leaves a killed run's files byte-identical. A WAL-mode store
    without ``-shm`` has no live writer: with no WAL content it opens ``immutable``;
    with WAL content (a store copied without its ``-shm``) SQLite must rebuild the
    index and creates a ``-shm`` — the one case where reading adds a file.
    """
    uri = db_path.resolve().as_uri() + "?mode=ro"
    shm = Path(f"{db_path}-shm")
    wal = Path(f"{db_path}-wal")
    if shm.exists():
        uri += "&readonly_shm=1"
    elif _in_wal_mode(db_path) and (not wal.exists() or wal.stat().st_size == 0):
        uri += "&immutable=1"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


def _in_wal_mode(db_path: Path) -> bool:
    """Whether the database header says WAL (bytes 18 and 19, the file format versions, are 2)."""
    try:
        with open(db_path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[18] == 2 and header[19] == 2

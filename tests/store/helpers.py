"""Small tools for the store tests: a tiny model recorded for a few steps, and looks at a run
store from outside gradsight (plain sqlite3, raw bytes)."""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from pathlib import Path

import torch
from torch import nn

from gradsight.store.schema import DB_NAME


def tiny_mlp() -> nn.Module:
    """A seeded 4 -> 8 -> 2 MLP."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def record_steps(model: nn.Module, monitor, steps: int) -> None:
    """``steps`` backward passes on random batches of 5, each followed by ``monitor.step()``."""
    for _ in range(steps):
        model(torch.randn(5, 4)).sum().backward()
        monitor.step()
        model.zero_grad()


def store_files(run_dir: Path) -> dict[str, str]:
    """SHA-256 of every file in ``run_dir`` (the database and any ``-wal``/``-shm``), by file name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(run_dir).iterdir()) if p.is_file()}


def connect_readonly(run_dir: Path) -> sqlite3.Connection:
    """A read-only sqlite3 connection to the store of ``run_dir``."""
    return sqlite3.connect((Path(run_dir) / DB_NAME).resolve().as_uri() + "?mode=ro", uri=True)


def journal_mode(run_dir: Path) -> str:
    """The journal mode recorded in the database header: 'wal' or 'delete' (legacy rollback journal).

    Bytes 18 and 19 of a SQLite file are its write and read format versions: 2 in WAL mode, 1 otherwise.
    """
    header = (Path(run_dir) / DB_NAME).read_bytes()[:20]
    return {(2, 2): "wal", (1, 1): "delete"}[(header[18], header[19])]


def integrity(run_dir: Path) -> list[str]:
    """Result rows of ``PRAGMA integrity_check`` (``['ok']`` for a sound database)."""
    with closing(connect_readonly(run_dir)) as conn:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]


def corrupt_table(run_dir: Path, table: str) -> None:
    """Overwrite the root page of ``table`` with 0xFF bytes; the rest of the file stays valid.

    The store must be closed (not in WAL mode), so the page lives in the main file.
    """
    db = Path(run_dir) / DB_NAME
    with closing(connect_readonly(run_dir)) as conn:
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()
    data = bytearray(db.read_bytes())
    data[(root - 1) * page_size : root * page_size] = b"\xff" * page_size
    db.write_bytes(bytes(data))

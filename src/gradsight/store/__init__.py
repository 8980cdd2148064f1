"""The run store: one SQLite database per run directory."""

from gradsight.store.reader import Run, list_runs, open_run
from gradsight.store.schema import DB_NAME
from gradsight.store.writer import StoreWriter

__all__ = ["DB_NAME", "Run", "StoreWriter", "list_runs", "open_run"]

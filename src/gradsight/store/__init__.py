"""The run store: one SQLite database per run directory.

The reader (``Run``, ``open_run``, ``list_runs``) is imported on first use: it needs pandas
(about 60 MB and 0.3 s to import), which recording a run does not."""

from typing import TYPE_CHECKING, Any

from gradsight.store.schema import DB_NAME
from gradsight.store.writer import StoreWriter

if TYPE_CHECKING:
    from gradsight.store.reader import Run, list_runs, open_run

__all__ = ["DB_NAME", "Run", "StoreWriter", "list_runs", "open_run"]


def __getattr__(name: str) -> Any:
    if name in ("Run", "list_runs", "open_run"):
        from gradsight.store import reader

        return getattr(reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

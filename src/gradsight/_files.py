"""Writing an output file whole or not at all: through ``NAME.partial`` and a rename.

Every file gradsight writes to a path the user named (figures, tables, graphs, the report,
exports) goes through :func:`atomic_path`, so an interrupted or failed write never leaves a
truncated file under the user's name, nor the ``.partial`` file beside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Suffix of the file being written before it is renamed to its own name.
PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield ``PATH.partial`` to write; when the block ends, rename it to ``path``.

    The parent folder is created. If the block raises (or the rename fails), the partial
    file is removed and ``path`` is left as it was (an existing file stays unchanged).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        yield partial
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`; return the path."""
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_path`; return the path."""
    with atomic_path(path) as partial:
        partial.write_bytes(data)
    return Path(path)


def save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` to ``path`` through :func:`atomic_path`; return the path.

    The format is the suffix of ``path`` (``.png``, ``.svg``, ``.pdf``; PNG without one), passed
    to matplotlib explicitly since the file written is ``PATH.partial``.
    """
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".").lower() or "png")
    with atomic_path(path) as partial:
        fig.savefig(partial, **savefig_kwargs)
    return path

"""Exception types raised by gradsight."""

from __future__ import annotations


class GradsightError(Exception):
    """Base class of every error gradsight raises on purpose."""


class RunError(GradsightError):
    """A run directory or store cannot be opened or used.

    Raised by :func:`gradsight.open_run` for a missing path, a directory without a
    store, an empty or corrupted database file, and by :func:`gradsight.watch` when
    the target run directory already holds a run. The message says what is wrong.
    """

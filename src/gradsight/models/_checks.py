"""Argument checks shared by the model constructors."""

from __future__ import annotations

from collections.abc import Iterable


def check_choice(keyword: str, value: object, choices: Iterable[object]) -> None:
    """Raise ``ValueError`` naming the valid values unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{keyword} must be one of {', '.join(map(repr, choices))}; got {value!r}")

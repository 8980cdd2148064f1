"""Helpers shared by the integrations that forward a monitor's numbers elsewhere.

Listening itself is the monitor's: :meth:`gradsight.Monitor.add_listener` calls a
listener with ``(step, keys, values)`` where ``keys[i] = (level, name, stat)`` names
``values[i]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradsight.display import display_name

Key = tuple[str, str, str]


def scalar_tag(level: str, name: str, stat: str) -> str:
    """A slash-separated name for one series, grouped by level and statistic.

    ``("layer", "features.0", "grad_norm") -> "layer/grad_norm/features.0"``,
    ``("model", "", "grad_norm") -> "model/grad_norm"``,
    ``("metric", "loss", "loss") -> "metric/loss"``; the root module (name ``""``)
    of a non-model level is ``(model)`` (:data:`~gradsight.display.ROOT_DISPLAY_NAME`).
    """
    if level == "metric":
        return f"metric/{name or stat}"
    if level == "model":
        return f"model/{stat}"
    return f"{level}/{stat}/{display_name(name)}"


def select(keys: Sequence[Key], levels: Sequence[str] | None, stats: Sequence[str] | None) -> list[int]:
    """Indices of ``keys`` whose level is in ``levels`` and stat in ``stats`` (None: any)."""
    lv = None if levels is None else set(levels)
    st = None if stats is None else set(stats)
    return [
        i for i, (level, _, stat) in enumerate(keys)
        if (lv is None or level in lv) and (st is None or stat in st or level == "metric")
    ]

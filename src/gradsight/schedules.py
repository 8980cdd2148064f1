"""Schedules: which calls of ``monitor.step()`` are recorded.

A schedule is any callable ``step -> bool`` where ``step`` is the 0-based index of
the call. ``gs.watch(model, every=k)`` is :func:`every` ``(k)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Schedule = Callable[[int], bool]


def every(k: int) -> Schedule:
    """Record calls 0, k, 2k, ..."""
    if int(k) != k or k < 1:
        raise ValueError(f"every must be a positive integer, got {k!r}")
    k = int(k)

    def schedule(step: int) -> bool:
        return step % k == 0

    schedule.__name__ = f"every({k})"
    return schedule


def first_then_every(first: int, k: int) -> Schedule:
    """Record each of the first ``first`` calls, then every k-th call after them."""
    if first < 0 or k < 1:
        raise ValueError("first must be >= 0 and k >= 1")

    def schedule(step: int) -> bool:
        return step < first or (step - first) % k == 0

    schedule.__name__ = f"first_then_every({first}, {k})"
    return schedule


def log_spaced(per_decade: int = 10, start_every: int = 1, max_every: int | None = None) -> Schedule:
    """Record about ``per_decade`` calls per decade of steps: dense early, sparse late.

    Calls 0..per_decade are all recorded; then the gap between recorded calls
    grows in proportion to the step (``gap = step / per_decade``), rounded to a
    power of two so recorded steps are stable, optionally capped at ``max_every``.
    """
    if per_decade < 1:
        raise ValueError("per_decade must be >= 1")

    def schedule(step: int) -> bool:
        if step <= per_decade:
            return step % start_every == 0
        gap = 2 ** int(math.log2(max(step / per_decade, 1)))
        if max_every is not None:
            gap = min(gap, max_every)
        return step % max(gap, start_every) == 0

    schedule.__name__ = f"log_spaced({per_decade})"
    return schedule


def resolve(spec: int | Schedule) -> Schedule:
    """An ``every`` argument (int or callable) as a schedule."""
    if callable(spec):
        return spec
    return every(spec)


def resolve_every(value: bool | int, name: str = "histograms") -> int:
    """Every how many recorded steps a measurement is taken (0: never) for an option
    ``name=value`` that is ``True`` (every recorded step), ``False`` or ``k`` (every k-th
    recorded step): ``histograms=`` and ``update_ratio=``."""
    if value is True:
        return 1
    if value is False or value is None:
        return 0
    if isinstance(value, int) and value >= 1:
        return int(value)
    raise ValueError(f"{name} must be True, False or a positive int (every k-th recorded step), got {value!r:.60}")


def due(every: int, recorded_index: int) -> bool:
    """Whether the recorded step with this index (0 = the first) is measured, for
    :func:`resolve_every`'s ``every``."""
    return every > 0 and recorded_index % every == 0

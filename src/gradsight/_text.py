"""Names in messages: user-supplied ones (module names, run names) made safe to show as plain
text, and long lists cut short."""

from __future__ import annotations

import re

#: C0 and C1 control characters except tab and line breaks, and DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character (a NUL, a terminal escape ``\\x1b``, ...) written
    visibly as ``\\xNN``, so that printing it cannot change a terminal, end a C string or
    make an SVG invalid. Tabs and line breaks are kept."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def few(items: list[str], k: int, sep: str = ", ") -> str:
    """The first ``k`` of ``items`` joined by ``sep``, with " and N more" for the rest: how a
    message names what may be a long list."""
    return sep.join(items[:k]) + (f" and {len(items) - k} more" if len(items) > k else "")

"""The old home of the colours, colour scale and number formats of gradsight's pictures.

They live in :mod:`gradsight.display` now (below every other module, no matplotlib), so
the graph and the report use them without loading the plots. The names stay importable
from here for one release, with a :class:`DeprecationWarning`. The figures' matplotlib
style is :data:`gradsight.plots._figure.STYLE`.
"""

from __future__ import annotations

import warnings
from typing import Any

from gradsight import display

#: Names that moved to :mod:`gradsight.display`.
MOVED = frozenset({
    "CMAP", "NONFINITE_COLOR", "MISSING_COLOR", "SKIP_COLOR", "PALETTE", "ROOT_DISPLAY_NAME",
    "LogScale", "family_looks", "fmt_value", "lut", "plural", "shade", "short_label", "short_labels", "text_color",
})


def __getattr__(name: str) -> Any:
    if name in MOVED:
        warnings.warn(f"gradsight.plots.style.{name} moved to gradsight.display.{name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(display, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

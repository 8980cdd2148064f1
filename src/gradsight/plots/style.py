"""Shared look of gradsight's pictures: colour maps, the log colour scale, layer labels.

Used by the matplotlib figures, the DOT graphs and the HTML report alike, so one
value gets one colour everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from gradsight.store.query import ROOT_DISPLAY_NAME

#: Sequential colour map for magnitudes (gradient norms, ratios).
CMAP = "viridis"
#: Colour of non-finite values (NaN/inf gradients).
NONFINITE_COLOR = "#e8453c"
#: Colour of missing values.
MISSING_COLOR = "#d9d9d9"
#: Colour of skip connections.
SKIP_COLOR = "#e07b00"
#: Colours for several runs or families (Okabe-Ito, safe for colour-blind readers).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


@lru_cache(maxsize=8)
def lut(cmap: str = CMAP, n: int = 256) -> tuple[str, ...]:
    """``n`` colours of a matplotlib colour map as ``#rrggbb`` strings, low to high."""
    import matplotlib

    cm = matplotlib.colormaps[cmap].resampled(n)
    return tuple("#{:02x}{:02x}{:02x}".format(*(round(c * 255) for c in cm(i)[:3])) for i in range(n))


def shade(color: str, t: float) -> str:
    """``color`` (``#rrggbb``) mixed with white: ``t=0`` light, ``t=1`` the colour itself."""
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    k = 0.4 + 0.6 * t
    return "#{:02x}{:02x}{:02x}".format(*(round(255 * (1 - k) + k * c) for c in (r, g, b)))


def family_looks(entries: Sequence[tuple[str, int]]) -> list[tuple[str, str]]:
    """Colour and line style of each ``(family, depth)`` entry: one palette colour per
    family (deeper members a darker shade), solid and dashed lines alternating between
    families, so twins of one depth and one family's depths can be told apart."""
    families = list(dict.fromkeys(fam for fam, _ in entries))
    depths = {fam: sorted({d for f, d in entries if f == fam}) for fam in families}
    out = []
    for fam, depth in entries:
        ds = depths[fam]
        t = ds.index(depth) / (len(ds) - 1) if len(ds) > 1 else 1.0
        k = families.index(fam)
        out.append((shade(PALETTE[k % len(PALETTE)], t), "-" if k % 2 == 0 else "--"))
    return out


def text_color(fill: str) -> str:
    """Black or white text, whichever reads better on ``fill`` (``#rrggbb``)."""
    r, g, b = (int(fill[i : i + 2], 16) / 255 for i in (1, 3, 5))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#000000" if luminance > 0.45 else "#ffffff"


@dataclass(frozen=True)
class LogScale:
    """A log10 colour scale over ``[vmin, vmax]`` (both > 0)."""

    vmin: float
    vmax: float

    @classmethod
    def of(cls, values: Iterable[float | None]) -> LogScale | None:
        """The scale spanning the positive finite ``values``; None if there are none."""
        pos = [float(v) for v in values if v is not None and math.isfinite(v) and v > 0]
        if not pos:
            return None
        lo, hi = min(pos), max(pos)
        if hi <= lo * 1.0001:
            lo, hi = lo / math.sqrt(10), hi * math.sqrt(10)
        return cls(lo, hi)

    def fraction(self, value: float) -> float:
        """Position of ``value`` on the scale, clipped to [0, 1]."""
        if value <= 0:
            return 0.0
        f = (math.log10(value) - math.log10(self.vmin)) / (math.log10(self.vmax) - math.log10(self.vmin))
        return min(1.0, max(0.0, f))

    def color(self, value: float | None, cmap: str = CMAP) -> str:
        """``#rrggbb`` for ``value``: the colour map inside, grey for None, red for NaN/inf."""
        if value is None:
            return MISSING_COLOR
        if not math.isfinite(value):
            return NONFINITE_COLOR
        colors = lut(cmap)
        return colors[min(len(colors) - 1, int(self.fraction(value) * (len(colors) - 1) + 0.5))]

    def ticks(self, max_ticks: int = 6) -> list[float]:
        """Round tick values inside the scale: powers of ten, thinned to at most ``max_ticks``."""
        lo, hi = math.floor(math.log10(self.vmin)), math.ceil(math.log10(self.vmax))
        decades = [10.0**e for e in range(lo, hi + 1) if self.vmin * 0.999 <= 10.0**e <= self.vmax * 1.001]
        if len(decades) < 2:
            return [self.vmin, self.vmax]
        step = max(1, math.ceil(len(decades) / max_ticks))
        return decades[::step]


def fmt_value(value: float | None, digits: int = 3) -> str:
    """A compact number: ``1.23e-04``, ``0.0123``, ``12.3``; ``nan``/``inf`` as such; ``-`` for None."""
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    a = abs(value)
    if 1e-3 <= a < 1e3:
        return f"{value:.{digits}g}"
    if 1e3 <= a < 1e5:
        return f"{value:.0f}"
    return f"{value:.{digits - 1}e}"


def plural(n: int, word: str) -> str:
    """``1 step``, ``3 steps``."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def short_label(name: str, max_len: int = 28) -> str:
    """A layer name that fits on an axis: the model itself as ``ROOT_DISPLAY_NAME``; long
    names keep their end (``…block12.branch.fc1``)."""
    if name == "":
        return ROOT_DISPLAY_NAME
    if len(name) <= max_len:
        return name
    return "…" + name[-(max_len - 1):]


def short_labels(names: Sequence[str], max_len: int = 28) -> list[str]:
    """:func:`short_label` for each name, keeping labels unique."""
    out, seen = [], set()
    for n in names:
        label = short_label(n, max_len)
        if label in seen:
            label = short_label(n, max_len + 12)
        seen.add(label)
        out.append(label)
    return out

"""How gradsight shows things: names, times, paths, numbers, colours and a run summary's rows.

One vocabulary for the terminal, the figures, the DOT graphs, the HTML report and notebooks,
so a module, a time or a value reads the same and one value gets one colour everywhere. Plain
Python: importing it loads neither matplotlib nor numpy (only :func:`lut` of a colour map
other than :data:`CMAP` asks matplotlib for its colours).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from html import escape
from pathlib import Path
from typing import Any

# -- names, times, paths -------------------------------------------------------------------

#: How the root module (the model itself, whose qualified name is ``""``) is shown.
ROOT_DISPLAY_NAME = "(model)"


def display_name(name: str) -> str:
    """A module's qualified name for display: the root module as :data:`ROOT_DISPLAY_NAME`."""
    return name or ROOT_DISPLAY_NAME


def format_time(t: Any) -> str:
    """A unix time as ``YYYY-mm-dd HH:MM:SS`` (local time), ``-`` when unknown."""
    try:
        return datetime.fromtimestamp(float(t)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"


def display_path(path: Path, base: Path | None) -> str:
    """``path`` relative to ``base`` when inside it, else as is."""
    if base is not None:
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            pass
    return str(path)


# -- numbers and labels --------------------------------------------------------------------

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
    names keep their last whole parts (``…branch.fc1``, never ``…anch.fc1``), and a last
    part longer than the room its end."""
    if name == "":
        return ROOT_DISPLAY_NAME
    if len(name) <= max_len:
        return name
    parts = name.split(".")
    kept = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + 1 + len(kept) > max_len - 1:
            break
        kept = f"{part}.{kept}"
    if len(kept) > max_len - 1:
        kept = kept[-(max_len - 1):]
    return "…" + kept


def short_labels(names: Sequence[str], max_len: int = 28) -> list[str]:
    """:func:`short_label` for each name, after dropping the dotted prefix all of them share
    (``bert.encoder.``: it tells the names nothing); names whose labels would be the same
    (``…attention.output.LayerNorm`` of every block) all get longer ones, which tell them apart."""
    names = list(names)
    cut = len(_shared_prefix(names))
    rests = [n[cut:] for n in names]
    labels = [short_label(rest, max_len) for rest in rests]
    count: dict[str, int] = {}
    for label in labels:
        count[label] = count.get(label, 0) + 1
    return [short_label(rest, max_len + 12) if count[label] > 1 else label for rest, label in zip(rests, labels)]


def _shared_prefix(names: Sequence[str]) -> str:
    """The whole dotted parts every name starts with, leaving each name a part of its own
    (``""`` for fewer than two names)."""
    if len(names) < 2 or any(not n for n in names):
        return ""
    split = [n.split(".") for n in names]
    common = []
    for parts in zip(*(p[:-1] for p in split)):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common) + "." if common else ""


#: Statistics that are a share of a whole (0 to 1) where 0 is a value, not a missing one: drawn
#: on a linear scale (a log scale would show their zeros as nothing recorded).
SHARE_STATS = frozenset({"grad_zero_frac", "act_saturated", "adam_eps_frac"})


def is_share(stat: str) -> bool:
    """Whether ``stat`` is a share of a whole (:data:`SHARE_STATS`, the ``<format>_underflow`` shares)."""
    return stat in SHARE_STATS or stat.endswith("_underflow")


# -- colours -------------------------------------------------------------------------------

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

#: Matplotlib's viridis (:data:`CMAP`), its 256 colours as ``rrggbb``, low to high (a test
#: checks them against matplotlib).
_VIRIDIS = (
    "44015444025645045745055946075a46085c460a5d460b5e470d60470e61471063471164471365481467481668481769"
    "48186a481a6c481b6d481c6e481d6f481f70482071482173482374482475482576482677482878482979472a7a472c7a"
    "472d7b472e7c472f7d46307e46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f85"
    "4240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b"
    "3b528b3a538b3a548c39558c39568c38588c38598c375a8c375b8d365c8d365d8d355e8d355f8d34608d34618d33628d"
    "33638d32648e32658e31668e31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e"
    "2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e"
    "26828e26828e25838e25848e25858e24868e24878e23888e23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d"
    "21918c20928c20928c20938c1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f88"
    "1fa0881fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa8325ab8225ac8226ad8127ad81"
    "28ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b32b67a34b67935b77937b87838b9773aba763bbb753dbc74"
    "3fbc7340bd7242be7144bf7046c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc863"
    "5ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d1537ad1517cd2507fd34e81d34d"
    "84d44b86d54989d5488bd6468ed64590d74393d74195d84098d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32"
    "addc30b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21a"
    "d8e219dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725"
)


@lru_cache(maxsize=8)
def lut(cmap: str = CMAP, n: int = 256) -> tuple[str, ...]:
    """``n`` colours of a matplotlib colour map as ``#rrggbb`` strings, low to high.

    :data:`CMAP` comes from a table here (no matplotlib), sampled as matplotlib's
    ``resampled(n)`` samples it; other colour maps are asked of matplotlib."""
    if cmap == CMAP:
        table = [_VIRIDIS[i : i + 6] for i in range(0, len(_VIRIDIS), 6)]
        picks = (min(len(table) - 1, int(i / (n - 1) * len(table))) if n > 1 else 0 for i in range(n))
        return tuple("#" + table[k] for k in picks)
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


# -- a run summary as text -----------------------------------------------------------------

def summary_rows(summary: Any, base: Path | None = None) -> list[tuple[str, str]]:
    """A run summary (a :class:`gradsight.store.query.RunSummary`, as
    :func:`gradsight.store.query.run_summary` returns it; this module imports nothing from
    the store) as ``(label, text)`` rows, as ``gradsight info`` and the report show them;
    the run's path relative to ``base`` when inside it."""
    s = summary
    status = s.status + (f" ({s.error})" if s.error else "")
    when = f"{s.start} → {s.end}" + (f" ({s.duration_s:.1f} s)" if s.duration_s is not None else "")
    steps = f"{len(s.steps):,}" + (f" (steps {s.steps[0]}…{s.steps[-1]})" if s.steps else "")
    rows = [
        ("run", display_path(s.path, base)),
        ("model", s.model),
        ("status", status),
        ("time", when),
        ("parameters", f"{s.num_params:,} ({s.num_trainable:,} trainable, {s.num_tensors} tensors)"),
        ("layers", f"{s.num_layers} (depth order from {s.depth_source})"),
        *([("layer roles", ", ".join(f"{n} {r}" for r, n in s.role_counts.items()))] if s.role_counts else []),
        ("steps recorded", steps),
    ]
    return rows + list(s.details.items())


# -- notebooks -----------------------------------------------------------------------------

#: What draws a run or a monitor in a notebook (their ``_repr_html_``). The card shows the
#: doctor's findings and is drawn by the report layer, above the run store and the monitor,
#: so the package root, which may import every layer, sets it (:func:`set_card_html`, to
#: :func:`gradsight.report.notebook.card_html`).
_card_html: Callable[[Any], str] | None = None


def set_card_html(draw: Callable[[Any], str] | None) -> None:
    """Make ``draw(obj) -> html`` what :func:`card_html` calls (None: the escaped ``repr``)."""
    global _card_html
    _card_html = draw


def card_html(obj: Any) -> str:
    """``obj`` (a :class:`gradsight.Run` or a :class:`gradsight.Monitor`) as a small HTML card
    for a notebook; its escaped ``repr`` while no card is set."""
    if _card_html is None:
        return f"<pre>{escape(repr(obj))}</pre>"
    return _card_html(obj)

"""The representable ranges of the low-precision formats whose headroom is recorded,
as plain numbers (no torch import: figures and diagnosis read them).

``smallest`` is the smallest positive (subnormal) value, ``largest`` the largest finite
one, ``smallest_normal`` the smallest with full precision; values at or below
``smallest / 2`` round to 0 when cast, values above ``largest`` overflow. ``tests/stats/test_formats.py`` checks them against ``torch.finfo``;
:mod:`gradsight.stats.histogram` derives its thresholds from ``torch.finfo`` itself.
"""

from __future__ import annotations

from typing import NamedTuple


class FormatRange(NamedTuple):
    smallest: float         #: smallest positive (subnormal) value
    largest: float          #: largest finite value
    smallest_normal: float  #: below it values are subnormal: fewer significant bits, then 0


#: name -> range, in the order of the headroom statistics.
FORMAT_RANGES: dict[str, FormatRange] = {
    "fp16": FormatRange(2.0**-24, 65504.0, 2.0**-14),
    "bf16": FormatRange(2.0**-133, (2 - 2.0**-7) * 2.0**127, 2.0**-126),
    "fp8e4m3": FormatRange(2.0**-9, 448.0, 2.0**-6),
    "fp8e5m2": FormatRange(2.0**-16, 57344.0, 2.0**-14),
}

#: Formats with a smaller range than float32 (bf16 has float32's exponent range).
OVERFLOW_FORMATS = ("fp16", "fp8e4m3", "fp8e5m2")

#: The headroom statistics recorded with ``gs.watch(..., histograms=...)``.
UNDERFLOW_STATS = tuple(f"{f}_underflow" for f in FORMAT_RANGES)
OVERFLOW_STATS = tuple(f"{f}_overflow" for f in OVERFLOW_FORMATS)

"""The report's gradient distribution section of a run recorded with ``histograms=``:
log2 histograms of up to 12 layers over training (with the fp16, bf16 and fp8 ranges
drawn as lines), and the precision headroom of the model by format."""

from __future__ import annotations

import html
import logging
from collections.abc import Callable

import numpy as np

from gradsight.display import fmt_value
from gradsight.plots.histograms import log2_histograms
from gradsight.stats.formats import FORMAT_RANGES, OVERFLOW_STATS, UNDERFLOW_STATS
from gradsight.store.view import RunSource, view_of
from gradsight.store.schema import Level

log = logging.getLogger(__name__)

#: Layers drawn, at most (evenly spaced in forward order, first and last included).
MAX_LAYERS = 12


def headroom_rows(run: RunSource) -> list[tuple[str, str, str]]:
    """``(format, underflow, overflow)``: the model's median fractions over the steps with
    a histogram, as text (``-`` where a format has no such statistic)."""
    totals = view_of(run).totals
    frame = totals[(totals["level"] == Level.MODEL) & totals["stat"].isin(UNDERFLOW_STATS + OVERFLOW_STATS)]
    median = frame.groupby("stat")["value"].median().to_dict() if not frame.empty else {}

    def cell(stat: str) -> str:
        value = median.get(stat)
        return "-" if value is None or np.isnan(value) else fmt_value(value)

    return [(fmt, cell(f"{fmt}_underflow"), cell(f"{fmt}_overflow")) for fmt in FORMAT_RANGES]


def histograms_html(run: RunSource, png: Callable) -> str:
    """The section's HTML, or ``""`` for a run without histograms (``png(fig)``: a figure
    as a data URL, as the report inlines its figures)."""
    run = view_of(run)
    try:
        if run.histograms(level=Level.MODEL).empty:
            return ""
        fig = log2_histograms(run, max_layers=MAX_LAYERS)
        rows = "".join(f'<tr><td class="text">{html.escape(f)}</td><td>{u}</td><td>{o}</td></tr>'
                       for f, u, o in headroom_rows(run))
        return ("<h3>Gradient distributions</h3>"
                '<p class="note">log2 |gradient| per layer over training (bucket e holds 2^e &le; |g| &lt; '
                "2^(e+1); colour: share of the layer's nonzero elements; with a GradScaler, the scaled gradient). "
                "Dashed lines: each format rounds values at or below them to 0; solid lines: its largest value.</p>"
                '<table class="grid"><thead><tr><th class="text">format</th><th>model underflow (median share)</th>'
                f"<th>model overflow (median share)</th></tr></thead><tbody>{rows}</tbody></table>"
                f'<div class="img"><img alt="log2 gradient histograms per layer" src="{png(fig)}"></div>')
    except Exception as exc:  # a section of its own; never lose the report over it
        log.warning("gradient distribution section failed: %s", exc)
        return ""

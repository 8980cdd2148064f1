"""The report's gradient distribution section of a run recorded with ``histograms=``:
log2 histograms of up to 12 layers over training (with the fp16, bf16 and fp8 ranges
drawn as lines; which layers, and how they were chosen, is said above the figure), and
the precision headroom of the model by format.

The figure is shown at :data:`PX_PER_INCH` CSS pixels per inch, never shrunk (the page
scrolls sideways when narrower), so its smallest text (8 pt tick labels) reads at 13 px,
the size of the report's tables and notes: two panels per row make it 1,152 px wide
(the page's column at a 1280 px window), each row of panels 348 px tall."""

from __future__ import annotations

import html
import logging
from collections.abc import Callable

import numpy as np

from gradsight.display import display_name, fmt_value
from gradsight.plots.histograms import (
    MAX_LAYERS,
    histogram_layers,
    histogram_steps,
    layer_choice,
    layer_names,
    log2_histograms,
)
from gradsight.stats.formats import FORMAT_RANGES, OVERFLOW_STATS, UNDERFLOW_STATS
from gradsight.store.view import RunSource, view_of
from gradsight.store.schema import Level

log = logging.getLogger(__name__)

#: CSS pixels per inch of the figure as shown: 8 pt text at 13.3 px.
PX_PER_INCH = 120
#: Panels per row and the size of each (inches).
COLS, PANEL_SIZE = 2, (4.0, 2.9)


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
    """The section's HTML, or ``""`` for a run without histograms (``png(fig, dpi)``: a
    figure as a data URL, as the report inlines its figures)."""
    run = view_of(run)
    try:
        if run.histograms(level=Level.MODEL).empty:
            return ""
        steps = histogram_steps(run)
        every, names = histogram_layers(run, steps), layer_names(run, MAX_LAYERS, steps)
        fig = log2_histograms(run, names, cols=COLS, panel_size=PANEL_SIZE)
        width, height = (round(v * PX_PER_INCH) for v in fig.get_size_inches())
        rows = "".join(f'<tr><td class="text">{html.escape(f)}</td><td>{u}</td><td>{o}</td></tr>'
                       for f, u, o in headroom_rows(run))
        shown = html.escape(", ".join(display_name(n) for n in names))
        return ("<h3>Gradient distributions</h3>"
                '<p class="note">log2 |gradient| per layer over training (bucket e holds 2^e &le; |g| &lt; '
                "2^(e+1); colour: share of the layer's nonzero elements; with a GradScaler, the scaled gradient). "
                "Dashed lines: each format rounds values at or below them to 0; solid lines: its largest value.</p>"
                '<table class="grid"><thead><tr><th class="text">format</th><th>model underflow (median share)</th>'
                f"<th>model overflow (median share)</th></tr></thead><tbody>{rows}</tbody></table>"
                f'<p class="note layers-shown">Shown: {html.escape(layer_choice(len(names), len(every)))}: {shown}.</p>'
                f'<div class="img-full"><img alt="log2 gradient histograms per layer" width="{width}" '
                f'height="{height}" src="{png(fig, 2 * PX_PER_INCH)}"></div>')
    except Exception as exc:  # a section of its own; never lose the report over it
        log.warning("gradient distribution section failed: %s", exc)
        return ""

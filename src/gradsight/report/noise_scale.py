"""The report's gradient noise scale section of a run recorded with ``noise_scale=``: the
noise scale over training against the batch size (:func:`gradsight.plots.noise_scale`) and a
table of the noise scale over each quarter of the recorded steps, from the quarter's mean
unbiased estimates (``mean gns_trace / mean gns_grad_sq``, steadier than the moving average)."""

from __future__ import annotations

import html
import logging
from collections.abc import Callable

import numpy as np

from gradsight.display import fmt_value
from gradsight.plots.noise_scale import noise_scale, noise_unit
from gradsight.stats.noise_scale import EMA_BETA, FAR_FACTOR
from gradsight.store.schema import Level
from gradsight.store.view import RunSource, view_of

log = logging.getLogger(__name__)

#: CSS pixels per inch of the figure as shown (as the histograms section's).
PX_PER_INCH = 120
QUARTERS = 4


def quarter_rows(run: RunSource) -> list[tuple[str, str, str, str]]:
    """``(steps, noise scale, batch size, batch / noise scale)`` as text for each quarter of the
    steps with a noise scale (``-`` where the quarter's mean ``|G|²`` is not positive)."""
    view = view_of(run)
    tables = view.matrices([(Level.MODEL, s) for s in ("gns_grad_sq", "gns_trace", "gns_batch")], steps="all")
    grad_sq, trace, batch = (tables[(Level.MODEL, s)] for s in ("gns_grad_sq", "gns_trace", "gns_batch"))
    if grad_sq.empty or trace.empty or batch.empty:
        return []
    g, t, b = grad_sq.iloc[:, 0], trace.iloc[:, 0].reindex(grad_sq.index), batch.iloc[:, 0].reindex(grad_sq.index)
    rows = []
    for part in np.array_split(np.arange(len(g)), min(QUARTERS, len(g))):
        mean_g, mean_t, used = g.iloc[part].mean(), t.iloc[part].mean(), b.iloc[part].median()
        noise = mean_t / mean_g if mean_g > 0 else np.nan
        steps = f"{g.index[part[0]]}-{g.index[part[-1]]}"
        rows.append((steps, "-" if np.isnan(noise) else fmt_value(noise), fmt_value(used),
                     "-" if np.isnan(noise) else fmt_value(used / noise)))
    return rows


def noise_scale_html(run: RunSource, png: Callable) -> str:
    """The section's HTML, or ``""`` for a run without a noise scale (``png(fig, dpi)``: a
    figure as a data URL, as the report inlines its figures)."""
    view = view_of(run)
    try:
        rows = quarter_rows(view)
        if not rows:
            return ""
        unit = html.escape(noise_unit(view.meta))
        fig = noise_scale(view)
        width, height = (round(v * PX_PER_INCH) for v in fig.get_size_inches())
        body = "".join(f"<tr><td>{s}</td><td>{n}</td><td>{b}</td><td>{r}</td></tr>" for s, n, b, r in rows)
        return ("<h3>Gradient noise scale</h3>"
                f'<p class="note">B_simple = tr(&Sigma;) / |G|&sup2; in {unit} (McCandlish et al. 2018): the batch '
                "size beyond which a larger batch barely reduces the gradient's noise. The line is the ratio of "
                f"moving averages (&beta; = {EMA_BETA:g}) of the unbiased per-step estimates; the band is within "
                f"{FAR_FACTOR:g}x of the batch size used.</p>"
                f'<table class="grid"><thead><tr><th>steps</th><th>noise scale (quarter means, {unit})</th>'
                f"<th>batch size</th><th>batch / noise scale</th></tr></thead><tbody>{body}</tbody></table>"
                f'<div class="img-full"><img alt="gradient noise scale over training" width="{width}" '
                f'height="{height}" src="{png(fig, 2 * PX_PER_INCH)}"></div>')
    except Exception as exc:  # noqa: BLE001 - a section of its own; never lose the report over it
        log.warning("gradient noise scale section failed: %s", exc)
        return ""


__all__ = ["noise_scale_html", "quarter_rows"]

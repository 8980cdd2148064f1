"""The figures of a run's section that the server draws with matplotlib (its gradient
distributions, noise scale and gradient through time), as inline PNG data URLs: the report
inlines them, and a live page asks for them again as the run records (``/api/figures``,
drawn by :class:`~gradsight.report.live.Doctor`'s thread)."""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Callable
from typing import Any

from gradsight.display import display_name
from gradsight.instrument.recurrent import TIME_GAIN_STAT, time_stat
from gradsight.plots.recurrent import through_time
from gradsight.report.histograms import PX_PER_INCH, histograms_html
from gradsight.report.noise_scale import noise_scale_html
from gradsight.store.reader import Run
from gradsight.store.schema import Level
from gradsight.store.view import RunView, view_of

log = logging.getLogger(__name__)


def png_data_url(fig: Any, dpi: float = 110) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URL."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


#: Recurrent modules drawn at most in the through-time section (the first ones, forward order).
MAX_RECURRENT = 4


def recurrent_modules(run: RunView | Run) -> list[str]:
    """The modules with a gradient recorded through time (``gs.watch(..., through_time=True)``),
    in forward order."""
    view = view_of(run)
    stats = [s for s in view.stats(Level.MODULE) if s in (TIME_GAIN_STAT, time_stat(0))]
    tables = view.matrices([(Level.MODULE, s) for s in stats]) if stats else {}
    found = {n for t in tables.values() for n in t.columns if t[n].notna().any()}
    return [n for n in view.names(Level.MODULE) if n in found]


def through_time_html(run: RunView | Run, png: Callable = png_data_url) -> str:
    """The gradient through time of the run's recurrent modules (:func:`~gradsight.plots.through_time`,
    one figure each, at most :data:`MAX_RECURRENT`), or ``""`` for a run without it."""
    view = view_of(run)
    try:
        modules = recurrent_modules(view)
        if not modules:
            return ""
        parts = ["<h3>Gradient through time</h3>"
                 '<p class="note">Per recurrent module: the gradient the rest of the model sends to each time '
                 "step's output, at several training steps, and written on it the gain per time step of the "
                 "gradient through the recurrence, from the last step's output back to the initial state (below "
                 "1 it vanishes geometrically over the sequence, above 1 it explodes; Pascanu et al. 2013)."
                 + (f" The first {MAX_RECURRENT} of {len(modules)} modules." if len(modules) > MAX_RECURRENT else "")
                 + "</p>"]
        for module in modules[:MAX_RECURRENT]:
            fig = through_time(view, module)
            width, height = (round(v * PX_PER_INCH) for v in fig.get_size_inches())
            parts.append(f'<div class="img-full"><img alt="gradient through time of {html.escape(display_name(module))}" '
                         f'width="{width}" height="{height}" src="{png(fig, 2 * PX_PER_INCH)}"></div>')
        return "".join(parts)
    except Exception as exc:  # noqa: BLE001 - a section of its own; never lose the report over it
        log.warning("gradient through time section failed: %s", exc)
        return ""


def figures_html(run: RunView | Run) -> str:
    """A run's gradient distributions, noise scale and gradient through time sections (``""``
    when it has none of them)."""
    run = view_of(run)
    return "\n".join(x for x in (histograms_html(run, png_data_url), noise_scale_html(run, png_data_url),
                                 through_time_html(run)) if x)


__all__ = ["figures_html", "png_data_url", "recurrent_modules", "through_time_html"]

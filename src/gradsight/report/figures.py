"""The figures of a run's section that the server draws with matplotlib (its gradient
distributions and noise scale), as inline PNG data URLs: the report inlines them, and a live
page asks for them again as the run records (``/api/figures``, drawn by
:class:`~gradsight.report.live.Doctor`'s thread)."""

from __future__ import annotations

import base64
import io
from typing import Any

from gradsight.report.histograms import histograms_html
from gradsight.report.noise_scale import noise_scale_html
from gradsight.store.reader import Run
from gradsight.store.view import RunView, view_of


def png_data_url(fig: Any, dpi: float = 110) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URL."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figures_html(run: RunView | Run) -> str:
    """A run's gradient distributions and noise scale sections (``""`` when it has neither)."""
    run = view_of(run)
    return "\n".join(x for x in (histograms_html(run, png_data_url), noise_scale_html(run, png_data_url)) if x)


__all__ = ["figures_html", "png_data_url"]

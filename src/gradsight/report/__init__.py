"""The self-contained HTML report: ``write_report(runs, "report.html")``.

    >>> from gradsight.report import write_report
    >>> write_report(["runs/plain20", "runs/resnet20"], "report.html")

Names are loaded on first use, so a run's card in a notebook (:mod:`gradsight.report.notebook`)
does not load the report's page code and the plots (matplotlib) it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> module.
_LAZY = {"build_report": "gradsight.report.html", "write_report": "gradsight.report.html",
         "expand_runs": "gradsight.store.query"}

__all__ = ["build_report", "expand_runs", "write_report"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from gradsight.report.html import build_report, write_report
    from gradsight.store.query import expand_runs

"""The self-contained HTML report: ``write_report(runs, "report.html")``.

    >>> from gradsight.report import write_report
    >>> write_report(["runs/plain20", "runs/resnet20"], "report.html")
"""

from gradsight.report.html import build_report, write_report
from gradsight.store.query import expand_runs

__all__ = ["build_report", "expand_runs", "write_report"]

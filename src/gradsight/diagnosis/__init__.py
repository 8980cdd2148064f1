"""Diagnosis: plain-language verdicts about a run's gradients.

    >>> findings = gs.diagnose("runs/exp1")
    >>> print(gs.format_findings(findings))
"""

from __future__ import annotations

from pathlib import Path

from gradsight.diagnosis.checkup import UnhealthyGradientsError, assert_healthy, checkup
from gradsight.diagnosis.findings import Finding, Severity, format_findings
from gradsight.diagnosis.rules import RULES, measure, prefetch
from gradsight.diagnosis.thresholds import Thresholds
from gradsight.store.reader import Run
from gradsight.store.view import RunView, view_of


def diagnose(run: RunView | Run | str | Path, thresholds: Thresholds | None = None, *,
             until: int | None = None) -> list[Finding]:
    """Findings about a recorded run, worst first.

    Args:
        run: a :class:`gradsight.Run`, a :class:`~gradsight.store.view.RunView` (whose
            tables other readers share) or the path of a run directory.
        thresholds: rule thresholds (defaults: :class:`Thresholds`).
        until: judge the run as it stood at this step (the steps after it are left out;
            a view passed as ``run`` keeps its own ``until``).

    Returns:
        A list of :class:`Finding` (empty when nothing is wrong).
    """
    th = thresholds or Thresholds()
    view = view_of(run, until=until)
    try:
        if not view.steps:
            return [_nothing_recorded(view)]
        prefetch(view)
        findings = [f for rule in RULES for f in _apply(rule, view, th)]
    finally:
        if view is not run:
            view.close()
    return sorted(findings, key=lambda f: f.severity, reverse=True)


def _nothing_recorded(run: RunView) -> Finding:
    calls = run.meta.get("step_calls")
    called = f" ({calls} call(s) of monitor.step())" if isinstance(calls, int) else ""
    return Finding("nothing_recorded", "warning",
                   f"The run recorded no gradient steps{called}, so there is nothing to judge: call "
                   "monitor.step() after each loss.backward(), and check the schedule (every=...).",
                   measured={"steps_recorded": 0})


def _apply(rule, view: RunView, th: Thresholds) -> list[Finding]:
    """A rule's findings; a rule that fails says so in a finding instead of raising."""
    try:
        return list(rule(view, th))
    except Exception as exc:  # one rule's failure must not hide the others' findings
        return [Finding("rule_failed", "warning",
                        f"The rule '{rule.__name__}' could not judge this run ({type(exc).__name__}: {exc}); "
                        "the other rules ran.", measured={})]


__all__ = [
    "Finding",
    "Severity",
    "Thresholds",
    "UnhealthyGradientsError",
    "assert_healthy",
    "checkup",
    "diagnose",
    "format_findings",
    "measure",
]

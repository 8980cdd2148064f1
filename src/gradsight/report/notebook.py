"""gradsight in a notebook: a run or a monitor as a small card, and the report inline.

- :func:`card_html` draws :class:`gradsight.Run` and :class:`gradsight.Monitor` in Jupyter
  (their ``_repr_html_``, through :func:`gradsight.display.card_html`): name, status,
  recorded steps, the model's gradient norm over the steps, the depth profile at the last
  step and the doctor's findings. Inline SVG and inline styles only, nothing fetched, every
  name escaped. A run is read through one :class:`~gradsight.store.view.RunView`, which the
  doctor shares.
- :func:`show` returns the report (:func:`gradsight.report.build_report`, the page
  ``gradsight report`` writes) in a sandboxed ``<iframe srcdoc>``: its scripts run, but
  apart from the notebook (no same origin, no forms, no pop-ups).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradsight.diagnosis import Finding, diagnose
from gradsight.display import NONFINITE_COLOR, PALETTE, LogScale, fmt_value, plural, short_labels
from gradsight.instrument.monitor import Monitor
from gradsight.store.query import DEFAULT_STAT, expand_runs, layer_profile, view_roles
from gradsight.store.reader import Run, open_run
from gradsight.store.schema import Level
from gradsight.store.view import RunView, step_sample, view_of

esc = html.escape

#: Points of the gradient-norm line, at most (evenly spaced steps: ``step_sample``).
LINE_POINTS = 200
#: Size of each of the card's two charts, in CSS pixels.
CHART_W, CHART_H = 260, 64
#: Colours of a run's status.
STATUS_COLORS = {"running": "#0072B2", "finished": "#009E73", "failed": "#e8453c"}
#: Colours of the doctor's severities.
SEVERITY_COLORS = {"error": "#e8453c", "warning": "#E69F00", "info": "#56B4E9"}

_CARD = ("font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:13px;line-height:1.4;"
         "border:1px solid #ddd;border-radius:6px;padding:8px 12px;max-width:640px;color:#222;background:#fff")
_MUTED = "color:#666"


# -- the card ---------------------------------------------------------------------------
def card_html(obj: Run | RunView | Monitor) -> str:
    """A run (or a monitor's run, a run view) as a small self-contained HTML card; never
    raises: what cannot be read is said on the card."""
    if isinstance(obj, Monitor):
        return _monitor_card(obj)
    try:
        return _run_card(obj if isinstance(obj, RunView) else RunView(obj))
    except Exception as exc:  # a display must not raise into the notebook
        return _message_card(str(getattr(obj, "path", "run")), f"could not be read: {type(exc).__name__}: {exc}")


def _monitor_card(monitor: Monitor) -> str:
    if not monitor.writes_store:
        return _message_card(str(monitor.run_dir), "this process does not write the run (rank 0 does)")
    try:
        run = open_run(monitor.run_dir)
    except Exception as exc:
        return _message_card(str(monitor.run_dir), f"could not be read: {type(exc).__name__}: {exc}")
    with run:
        return card_html(run)


def _message_card(title: str, message: str) -> str:
    return f'<div style="{_CARD}"><b>{esc(title)}</b> <span style="{_MUTED}">{esc(message)}</span></div>'


def _run_card(view: RunView) -> str:
    meta = view.meta
    steps = view.steps
    status = view.status
    color = STATUS_COLORS.get(status, "#888")
    head = [f'<b style="font-size:14px">{esc(view.name)}</b>',
            f'<span style="background:{color};color:#fff;border-radius:3px;padding:0 5px">{esc(status)}</span>',
            esc(plural(len(steps), "step")) + (f" ({steps[0]}…{steps[-1]})" if steps else ""),
            f'<span style="{_MUTED}">{esc(str(meta.get("model_class", "?")))}</span>']
    parts = [f'<div style="{_CARD}">', '<div>' + " · ".join(head) + "</div>",
             f'<div style="{_MUTED};font-size:11px">{esc(str(view.path))}</div>']
    if meta.get("error"):
        parts.append(f'<div style="color:{NONFINITE_COLOR}">{esc(str(meta["error"]))}</div>')
    dropped = meta.get("steps_dropped")
    if isinstance(dropped, int) and dropped > 0:
        parts.append(f'<div style="color:{NONFINITE_COLOR}">{esc(plural(dropped, "recorded step"))} dropped '
                     "(the store could not keep up, or could not be written)</div>")
    if steps:
        charts = [_norm_chart(view), _profile_chart(view, steps[-1])]
        parts.append('<div style="display:flex;flex-wrap:wrap;gap:16px;margin:6px 0">' + "".join(charts) + "</div>")
        parts.append(_findings_html(_findings(view)))
    else:
        parts.append(f'<div style="{_MUTED}">No steps recorded yet.</div>')
        if status != "running":
            parts.append(_findings_html(_findings(view)))
    parts.append("</div>")
    return "\n".join(parts)


def _findings(view: RunView) -> list[Finding]:
    try:
        return diagnose(view)
    except Exception as exc:  # the card shows the rest
        return [Finding("diagnosis_failed", "warning", f"The diagnosis failed: {type(exc).__name__}: {exc}")]


def _findings_html(findings: Sequence[Finding]) -> str:
    if not findings:
        return f'<div style="{_MUTED}">The doctor finds nothing wrong.</div>'
    rows = []
    for f in findings:
        sev = str(f.severity)
        rows.append(
            f'<li style="white-space:nowrap;overflow:hidden;text-overflow:ellipsis" title="{esc(str(f))}">'
            f'<span style="color:{SEVERITY_COLORS.get(sev, "#888")};font-weight:600">{esc(sev)}</span> '
            f"<code>{esc(f.code)}</code> {esc(f.message)}</li>")
    return f'<ul style="margin:4px 0;padding-left:18px">{"".join(rows)}</ul>'


def _chart(title: str, body: str, left: str = "", right: str = "") -> str:
    """One small chart: a title above, an SVG, labels below at both ends."""
    return (f'<div style="width:{CHART_W}px"><div style="font-size:12px">{title}</div>'
            f'<svg width="{CHART_W}" height="{CHART_H}" viewBox="0 0 {CHART_W} {CHART_H}" '
            f'style="background:#fafafa;border:1px solid #eee">{body}</svg>'
            f'<div style="display:flex;justify-content:space-between;font-size:11px;{_MUTED}">'
            f"<span>{esc(left)}</span><span>{esc(right)}</span></div></div>")


def _polyline(xs: Sequence[float], ys: Sequence[float | None], color: str) -> str:
    """Lines through the points, broken where ``y`` is None."""
    out: list[str] = []
    piece: list[tuple[float, float]] = []
    for x, y in list(zip(xs, ys)) + [(0.0, None)]:
        if y is not None:
            piece.append((x, y))
            continue
        if len(piece) == 1:  # a point alone
            out.append(f'<circle cx="{piece[0][0]:.1f}" cy="{piece[0][1]:.1f}" r="1.5" fill="{color}"/>')
        elif piece:
            points = " ".join(f"{px:.1f},{py:.1f}" for px, py in piece)
            out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        piece = []
    return "".join(out)


def _y(scale: LogScale | None, value: float) -> float | None:
    """The SVG y of a value on the chart's log scale (None: not positive and finite)."""
    if scale is None or not (math.isfinite(value) and value > 0):
        return None
    return 4 + (CHART_H - 8) * (1 - scale.fraction(value))


def _norm_chart(view: RunView) -> str:
    """The model's ``grad_norm`` over every recorded step (``step_sample`` of them drawn; a
    red tick at each non-finite one)."""
    table = view.matrix(Level.MODEL, "grad_norm", steps="all")
    if table.empty:
        return _chart("model grad_norm", "", "not recorded")
    steps = table.index.to_numpy()
    values = table.iloc[:, 0].to_numpy(dtype=float)
    keep = step_sample(range(len(steps)), LINE_POINTS)
    scale = LogScale.of(values[keep])
    span = max(1, int(steps[-1] - steps[0]))
    x = [2 + (CHART_W - 4) * (int(steps[i]) - int(steps[0])) / span for i in keep]
    body = _polyline(x, [_y(scale, values[i]) for i in keep], PALETTE[0])
    bad = steps[np.isnan(values) | np.isinf(values)]
    body += "".join(f'<line x1="{xb:.1f}" x2="{xb:.1f}" y1="0" y2="{CHART_H}" stroke="{NONFINITE_COLOR}"/>'
                    for xb in sorted({round(2 + (CHART_W - 4) * (int(s) - int(steps[0])) / span, 1) for s in bad}))
    finite = values[np.isfinite(values)]
    last = fmt_value(float(finite[-1])) if len(finite) else "-"
    title = f"model grad_norm, last {esc(last)}" + (f' <span style="color:{NONFINITE_COLOR}">'
                                                     f"non-finite at {esc(plural(len(bad), 'step'))}</span>"
                                                     if len(bad) else "")
    return _chart(title, body, f"step {steps[0]}", f"step {steps[-1]}")


def _profile_chart(view: RunView, step: int) -> str:
    """``grad_rms`` (else ``grad_norm``) of the layers the report shows first (weighted and
    the head), in forward order, at ``step``; each point names its layer on hover."""
    stat = DEFAULT_STAT if DEFAULT_STAT in view.stats(Level.LAYER) else "grad_norm"
    profile = layer_profile(view, stat, role=view_roles(view), step=step)
    if profile.empty:
        return _chart(f"{esc(stat)} by depth", "", "no layer values")
    names = [str(n) for n in profile.index]
    raw = view.at_step(Level.LAYER, stat, step)  # layer_profile keeps positive finite values only
    values = [float(raw[n]) if raw is not None and n in raw.index else float("nan") for n in names]
    scale = LogScale.of(values)
    n = len(names)
    xs = [2 + (CHART_W - 4) * (i / (n - 1) if n > 1 else 0.5) for i in range(n)]
    ys = [_y(scale, v) for v in values]
    body = _polyline(xs, ys, PALETTE[1])
    for x, y, name, v in zip(xs, ys, names, values):
        fill = PALETTE[1] if y is not None else NONFINITE_COLOR if not math.isnan(v) else "#999"
        body += (f'<circle cx="{x:.1f}" cy="{CHART_H - 4 if y is None else y:.1f}" r="2.5" fill="{fill}">'
                 f"<title>{esc(name)}: {esc(fmt_value(v))}</title></circle>")
    ends = short_labels([names[0], names[-1]], 24) if n > 1 else short_labels(names, 24) * 2
    return _chart(f"{esc(stat)} by depth at step {step} ({esc(plural(n, 'layer'))})", body,
                  f"input: {ends[0]}", f"output: {ends[-1]}")


# -- the report inline ------------------------------------------------------------------
@dataclass
class InlineReport:
    """The report of one or more runs, shown inline by a notebook (``_repr_html_``)."""

    page: str  #: the report's HTML document, as ``gradsight report`` writes it
    recording: list[tuple[str, int]] = field(default_factory=list)  #: (name, steps) of runs still recording
    height: int = 800  #: the frame's height in CSS pixels

    def __repr__(self) -> str:
        return f"InlineReport({len(self.page):,} characters, recording={[n for n, _ in self.recording]})"

    def _repr_html_(self) -> str:
        notes = "".join(
            f'<p style="font-family:system-ui,sans-serif;font-size:13px;color:#0072B2">{esc(name)} is still '
            f"recording ({esc(plural(steps, 'step'))} so far): run this cell again to see the steps recorded since, "
            "or <code>gradsight serve</code> its folder for a page that follows it.</p>"
            for name, steps in self.recording)
        return (f'{notes}<iframe srcdoc="{esc(self.page, quote=True)}" sandbox="allow-scripts" '
                f'title="gradsight report" style="width:100%;height:{int(self.height)}px;border:1px solid #ddd">'
                "</iframe>")


def show(run_or_dir: Run | RunView | Monitor | str | Path, *, height: int = 800, **options: Any) -> InlineReport:
    """The report of a run, inline in a notebook: display the returned object (the last
    expression of a cell), or save its ``page``.

    Args:
        run_or_dir: a run, a run view, a monitor (what it queued is committed first), a run
            directory, or a folder: every run below it, as ``gradsight report`` takes it.
        height: the frame's height, in CSS pixels.
        **options: :func:`gradsight.report.build_report`'s keywords (``stat``, ``title``,
            ``max_steps``, ...).

    Returns:
        An :class:`InlineReport`: the page in a sandboxed ``<iframe srcdoc>`` (its scripts
        run; same origin, forms and pop-ups are refused), with a note for each run still
        recording.
    """
    from gradsight.report.html import build_report

    if isinstance(run_or_dir, Monitor):
        if not run_or_dir.writes_store:
            raise ValueError(f"this process does not write {run_or_dir.run_dir} (rank 0 does): show it there")
        run_or_dir.flush()
        run_or_dir = run_or_dir.run_dir
    if isinstance(run_or_dir, (Run, RunView)):
        shown: list[Run | RunView | Path] = [run_or_dir]
        recording = [(run_or_dir.name, len(view_of(run_or_dir).steps))] if run_or_dir.status == "running" else []
    else:  # the report opens the runs again and closes them (but one whose diagnosis it gave up on)
        recording, shown = [], []
        for run in expand_runs([run_or_dir]):
            with run:
                shown.append(run.path)
                if run.status == "running":
                    recording.append((run.name, len(run.steps())))
    return InlineReport(build_report(shown, **options), recording, height)

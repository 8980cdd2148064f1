"""The runs ``gradsight serve`` shows and what its page asks of them: what is new since a step.

The server (:mod:`gradsight.report.server`) answers from here:

- :class:`ServedRuns`: the runs under the served root, found with
  :func:`gradsight.store.reader.list_runs` (the rule :func:`~gradsight.store.query.expand_runs`
  applies to a folder) and named by their path relative to the root. A run is reachable
  only through that name, looked up in this table: a run directory or store that resolves
  outside the root (a symlink out of it) is never listed, and no request path is ever
  joined to the root.
- :class:`LiveRun`: one run, opened read-only (``store/access.py``). :meth:`LiveRun.update`
  is the page's poll: the run's status and, only when there are steps after ``since``, the
  values at those steps, in the page's layout (:mod:`gradsight.report.payload`: every
  per-module table at those steps, names in the one column order, base64 float32; the model
  and metric lines). A poll with nothing new is a few dozen bytes.
- :class:`Doctor`: :func:`gradsight.diagnosis.diagnose` of each run that recorded new steps,
  in one background thread at the lowest CPU priority, at most every ``DOCTOR_INTERVAL_S``
  seconds per run (and resting ``DOCTOR_REST`` times as long as a diagnosis took), never on
  the request path. Each finding keeps the step at which it was first seen; a finding that no
  longer holds is dropped.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from gradsight._errors import RunError
from gradsight.diagnosis import diagnose
from gradsight.report.payload import MAX_EVENTS, encode_f32, layout_key
from gradsight.store.query import DEFAULT_MAX_STEPS, nonfinite_events, step_sample
from gradsight.store.reader import Run, list_runs, open_run
from gradsight.store.schema import DB_NAME, Level
from gradsight.store.view import RunView

log = logging.getLogger(__name__)

#: Seconds between two diagnoses of one run, at least.
DOCTOR_INTERVAL_S = 3.0
#: The doctor rests at least this many times as long as its last diagnosis of a run took,
#: so that it uses at most about a tenth of one core (a long run's diagnosis takes a while).
DOCTOR_REST = 9.0
#: Seconds between two drawings of a recording run's figures (gradient distributions, noise
#: scale), at least, and between two times the page asks for them; drawing takes seconds, so
#: the rest after it (``DOCTOR_REST`` times as long) is often longer.
FIGURES_S = 15.0
#: Seconds between two looks for new runs under the root, at least.
DISCOVERY_INTERVAL_S = 2.0
#: Steps one update carries at most (evenly spaced, last included): the page thins its own.
MAX_UPDATE_STEPS = DEFAULT_MAX_STEPS
#: Seconds a poll waits for something new, at most (the page asks with ``wait``).
MAX_WAIT_S = 25.0
#: Seconds between two looks at the runs while a poll waits.
WAIT_CHECK_S = 0.1


def names_key(names: list[str] | tuple[str, ...]) -> int:
    """A short fingerprint of a list of run names (the page reloads when the runs change)."""
    return zlib.crc32("\0".join(names).encode("utf-8", "surrogatepass"))


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def writer_alive(meta: dict[str, Any]) -> bool:
    """False when the run's recording process, on this host, has ended (killed: the run still
    reads ``running``); True when it lives or cannot be told (another host, no pid)."""
    pid, host = meta.get("pid"), meta.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class LiveRun:
    """One served run: its store opened read-only on first use, its status and new steps."""

    def __init__(self, key: str, path: Path) -> None:
        self.key = key
        self.path = path
        self.lock = threading.Lock()
        self._run: Run | None = None
        self.error: str | None = None  #: why the store cannot be read (reported, retried)
        self._tried = 0.0
        self.findings: list[dict[str, Any]] = []
        self.findings_version = 0
        self._first_seen: dict[str, int] = {}
        self._view: RunView | None = None
        self._layout_version: tuple | None = None
        self._layout_key = 0
        #: ``(step, html)`` of the figures the doctor's thread drew last (None: none yet), and
        #: whether a page has asked for them (only then are they drawn)
        self.figures: tuple[int | None, str] | None = None
        self.figures_asked = False

    def open(self) -> Run | None:
        """The open run, or None (with :attr:`error`) when its store cannot be read now."""
        if self._run is None and time.monotonic() - self._tried >= DISCOVERY_INTERVAL_S:
            self._tried = time.monotonic()
            try:
                self._run = open_run(self.path)
                self.error = None
            except (RunError, OSError) as exc:
                self.error = str(exc)
        return self._run

    @property
    def readable(self) -> bool:
        """Whether the store has been opened (the page shows the run)."""
        return self._run is not None

    def close(self) -> None:
        with self.lock:
            self._view = None
            if self._run is not None:
                self._run.close()
                self._run = None

    def status(self, run: Run) -> dict[str, Any]:
        """Status, dropped steps and store error as the run's ``meta`` says now."""
        meta = run.reload_meta()
        out: dict[str, Any] = {"status": str(meta.get("status", "unknown"))}
        for key in ("steps_dropped", "store_error", "error"):
            if meta.get(key):
                out[key] = meta[key] if isinstance(meta[key], int) else str(meta[key])
        if out["status"] == "running" and not writer_alive(meta):
            out["writer"] = "gone"
        return out

    def token(self) -> tuple:
        """What changes when :meth:`update`'s answer may: the store's data version (a commit
        of the recording process), the findings, whether the writer still lives. Cheap: a
        waiting poll asks it every ``WAIT_CHECK_S``."""
        with self.lock:
            run = self.open()
            if run is None:
                return (None, self.error, self.findings_version)
            try:
                version = run.data_version()
            except RunError as exc:
                return (None, str(exc), self.findings_version)
            return (version, self.findings_version, run.status != "running" or writer_alive(run.meta))

    def update(self, since: int | None, findings_version: int | None = None) -> dict[str, Any]:
        """What the page lacks: ``{status, last, [steps, matrices, model, metrics], [findings]}``.

        ``since`` is the last step the page has (None: none); values come only for later steps
        (at most ``MAX_UPDATE_STEPS`` of them, evenly spaced, the last included). Findings
        come when their version differs from ``findings_version``.
        """
        with self.lock:
            run = self.open()
            if run is None:
                return {"status": "unreadable", "store_error": self.error}
            try:
                out = self.status(run)
                last = run.last_step()
                out["last"] = last
                if last is not None and (since is None or last > since):
                    out.update(self._values(run, since))
                    out["depth_source"] = str(run.meta.get("depth_source", "?"))  # "pending" until the first step ends
            except (RunError, OSError, ValueError) as exc:  # a store broken while served
                return {"status": "unreadable", "store_error": str(exc)}
        if findings_version != self.findings_version:
            out["findings"] = self.findings
            out["findings_version"] = self.findings_version
        return out

    def layout(self, run: Run) -> RunView:
        """The run's view, kept while its names and statistics stay as they are
        (:meth:`Run.layout_version <gradsight.store.reader.Run.layout_version>`): its layout
        (names in the one column order, the series of each) is read once, not at every poll."""
        version = run.layout_version()
        if self._view is None or self._view.run is not run or version != self._layout_version:
            self._view, self._layout_version = RunView(run), version
            self._layout_key = layout_key(self._view)
        return self._view

    def _values(self, run: Run, since: int | None) -> dict[str, Any]:
        new = run.steps(after=since)
        steps = step_sample(new, MAX_UPDATE_STEPS)
        view = self.layout(run)
        per_module = [(lv, st) for lv in view.module_levels for st in view.stats(lv)]
        totals = [(lv, st) for lv in (Level.MODEL, Level.METRIC) for st in view.stats(lv)]
        tables = view.arrays(per_module, steps)  # one query over the new steps' values
        lines = view.arrays(totals, steps, every_name=False)
        matrices, out_lines, partly = {}, {}, {}
        for (level, stat), (values, written) in tables.items():  # the page's layout: names x new steps
            matrices[f"{level}:{stat}"] = encode_f32(values.T)
            at = written.any(axis=1)
            if not at.all():  # e.g. update ratios measured every k-th step: a table of its own steps takes these
                partly[f"{level}:{stat}"] = np.flatnonzero(at).tolist()
        for (level, stat), (values, written) in lines.items():
            if values.shape[1]:
                at = np.flatnonzero(written[:, 0])
                out_lines[f"{level}:{stat}"] = {"steps": [steps[i] for i in at], "values": encode_f32(values[at, 0])}
        # (counted up to the last new step read: steps recorded meanwhile come with the next poll)
        out = {"steps": steps, "total_steps": run.count_steps(until=new[-1] if new else since),
               "layout": self._layout_key,
               "matrices": matrices, "written": partly, "lines": out_lines}
        events = nonfinite_events(view, level=Level.LAYER, max_events=MAX_EVENTS, steps=new)
        if len(events):
            out["nonfinite"] = [[int(s), str(n), int(c)] for s, n, c in events.itertuples(index=False)]
        return out

    def set_findings(self, findings: list[Any], step: int | None) -> None:
        """The doctor's findings of the run as it stood at ``step``; each keeps its first step."""
        seen = {f.code for f in findings}
        self._first_seen = {c: s for c, s in self._first_seen.items() if c in seen}
        out = []
        for f in findings:
            first = self._first_seen.setdefault(f.code, step if step is not None else -1)
            out.append({"severity": str(f.severity), "code": f.code, "message": f.message,
                        "step": first if first >= 0 else None})
        if out != self.findings:
            self.findings = out
            self.findings_version += 1


class ServedRuns:
    """The runs under one root (a run, or a folder whose runs may appear while it is served)."""

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        if root.name == DB_NAME:
            root = root.parent
        if not root.is_dir():
            raise RunError(f"{root} is not a directory: serve a run directory or a folder holding runs")
        self.root = root.resolve()
        self.runs: dict[str, LiveRun] = {}
        self._lock = threading.Lock()
        self._looked = 0.0
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> list[str]:
        """Look for new runs (at most every ``DISCOVERY_INTERVAL_S``); return every run's key."""
        with self._lock:
            if force or time.monotonic() - self._looked >= DISCOVERY_INTERVAL_S:
                self._looked = time.monotonic()
                found = [self.root] if (self.root / DB_NAME).exists() else list_runs(self.root)
                for path in found:
                    if not (_inside(path, self.root) and _inside(path / DB_NAME, self.root)):
                        continue  # a symlink out of the served root
                    key = path.relative_to(self.root).as_posix()
                    if key not in self.runs:
                        self.runs[key] = LiveRun(key, path)
                for live in self.runs.values():
                    if not live.readable:  # a store being created, or a broken one: tried again
                        with live.lock:
                            live.open()
            return list(self.runs)

    def get(self, key: str) -> LiveRun | None:
        """The run of this key, or None: keys are looked up, never turned into paths."""
        return self.runs.get(key)

    @property
    def shown(self) -> list[str]:
        """The keys of the runs the page shows: those whose store could be opened."""
        return [k for k, live in self.runs.items() if live.readable]

    @property
    def key(self) -> int:
        """:func:`names_key` of :attr:`shown`: when it changes, the page is made again."""
        return names_key(self.shown)

    def close(self) -> None:
        for run in list(self.runs.values()):
            run.close()


class Doctor:
    """Re-diagnoses each run that recorded new steps, at most every ``interval`` seconds, in a
    background thread with its own read-only connections."""

    def __init__(self, served: ServedRuns, interval: float = DOCTOR_INTERVAL_S,
                 figures_every: float = FIGURES_S) -> None:
        self.served = served
        self.interval = interval
        self.figures_every = figures_every
        self._drawn: dict[str, int | None] = {}  # run key -> the last step its figures show
        self._figures_due: dict[str, float] = {}
        self._stop = threading.Event()
        self._judged: dict[str, tuple[int | None, str]] = {}
        self._runs: dict[str, Run] = {}
        self._due: dict[str, float] = {}  # run key -> time.monotonic() of its next diagnosis, at the earliest
        self._thread = threading.Thread(target=self._loop, name="gradsight-serve-doctor", daemon=True)

    def start(self) -> Doctor:
        self._thread.start()
        return self

    @staticmethod
    def _lower_priority() -> None:
        """Run this thread at the lowest CPU priority (Linux: threads have their own nice value),
        so that on a busy machine the diagnoses wait and the training does not."""
        if not sys.platform.startswith("linux"):  # elsewhere the id would name a process
            return
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:  # not allowed: its rests keep its cost down
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for run in self._runs.values():
            run.close()

    def _loop(self) -> None:
        self._lower_priority()
        while not self._stop.is_set():
            started = time.monotonic()
            self.served.refresh()
            for live in list(self.served.runs.values()):
                if self._stop.is_set():
                    break
                self.check(live)
            self._stop.wait(max(0.2, self.interval - (time.monotonic() - started)))

    def check(self, live: LiveRun) -> None:
        """Diagnose ``live`` once if it has changed since it was last diagnosed (and draw its
        figures again, when a page asked for them)."""
        try:
            run = self._runs.get(live.key)
            if run is None:
                run = self._runs[live.key] = open_run(live.path)
            last = run.last_step()
            status = str(run.reload_meta().get("status", "unknown"))
            self._draw_figures(live, run, last, status)
            if self._judged.get(live.key) == (last, status):
                return
            if status == "running" and time.monotonic() < self._due.get(live.key, 0.0):
                return  # resting after a long diagnosis (a run that has ended is judged at once)
            started = time.monotonic()
            with RunView(run, until=last) as view:  # (the run as it stood at `last`: steps recorded
                findings = diagnose(view)           # meanwhile must not be found "since" an earlier one)
            self._due[live.key] = time.monotonic() + DOCTOR_REST * (time.monotonic() - started)
            self._judged[live.key] = (last, status)
            live.set_findings(findings, last)
        except (RunError, OSError) as exc:
            log.debug("cannot diagnose %s yet: %s", live.path, exc)
        except Exception as exc:  # a broken rule must not stop the other runs' findings
            log.warning("diagnosis of %s failed: %s", live.path, exc)
            live.set_findings([], None)
            self._judged[live.key] = (None, "failed")


    def _draw_figures(self, live: LiveRun, run: Run, last: int | None, status: str) -> None:
        """The figures of a run a page asked them of, drawn again when it has recorded since,
        at most every ``figures_every`` seconds and resting ``DOCTOR_REST`` times as long as
        drawing them took (a matplotlib figure takes seconds: here, at the lowest priority,
        never on a request's path)."""
        if not live.figures_asked or self._drawn.get(live.key, -1) == last:
            return
        if status == "running" and time.monotonic() < self._figures_due.get(live.key, 0.0):
            return
        from gradsight.report.figures import figures_html  # matplotlib: only when a page asks

        started = time.monotonic()
        try:
            with RunView(run) as view:
                drawn = figures_html(view)
        except Exception as exc:  # the findings must not go with the figures
            log.warning("drawing the figures of %s failed: %s", live.path, exc)
            drawn = ""
        took = time.monotonic() - started
        self._figures_due[live.key] = time.monotonic() + max(self.figures_every, DOCTOR_REST * took)
        self._drawn[live.key] = last
        live.figures = (last, drawn)


def _answer(served: ServedRuns, asked: list[tuple[str, int | None, int | None]]) -> dict[str, Any]:
    updates = {}
    for key, since, fver in asked:
        live = served.get(key)
        if live is not None:
            updates[key] = live.update(since, fver)
    return {"runs_key": served.key, "runs": updates}


def poll_answer(served: ServedRuns, asked: list[tuple[str, int | None, int | None]], *,
                runs_key: int | None = None, wait: float = 0.0, stop: threading.Event | None = None
                ) -> dict[str, Any]:
    """The answer to one poll: ``asked`` holds ``(key, since, findings_version)`` per run on the
    page; keys not served are left out. ``runs_key`` changes when runs appear.

    With ``wait`` (seconds, at most ``MAX_WAIT_S``) a poll with nothing new waits for something
    to be: it looks every ``WAIT_CHECK_S`` at each run's :meth:`LiveRun.token` (no values read)
    and answers as soon as a step, a status, a finding or the runs (``runs_key``, the page's)
    changed, or when the time is up or ``stop`` is set. A page that waits so sees a committed
    step within ``WAIT_CHECK_S`` and asks nothing meanwhile."""
    served.refresh()
    answer = _answer(served, asked)
    deadline = time.monotonic() + min(max(0.0, wait), MAX_WAIT_S)
    lives = [live for live in (served.get(key) for key, _, _ in asked) if live is not None]
    tokens = [live.token() for live in lives]
    stop = stop or threading.Event()

    def news(ans: dict[str, Any]) -> bool:
        return (runs_key is not None and ans["runs_key"] != runs_key) or any(
            "steps" in u or "findings" in u for u in ans["runs"].values())

    while not news(answer) and time.monotonic() < deadline and not stop.wait(WAIT_CHECK_S):
        served.refresh()
        now = [live.token() for live in lives]
        if now == tokens and served.key == answer["runs_key"]:
            continue
        tokens, again = now, _answer(served, asked)
        if again != answer:
            return again
    return answer


__all__ = ["Doctor", "LiveRun", "ServedRuns", "names_key", "poll_answer"]

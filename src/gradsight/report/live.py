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
  in one background thread, at most every ``DOCTOR_INTERVAL_S`` seconds per run, never on the
  request path. Each finding keeps the step at which it was first seen; a finding that no
  longer holds is dropped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from gradsight._errors import RunError
from gradsight.diagnosis import diagnose
from gradsight.report.payload import encode_f32
from gradsight.store.query import DEFAULT_MAX_STEPS, step_sample
from gradsight.store.reader import Run, list_runs, open_run
from gradsight.store.schema import DB_NAME, Level
from gradsight.store.view import RunView

log = logging.getLogger(__name__)

#: Seconds between two diagnoses of one run, at least.
DOCTOR_INTERVAL_S = 3.0
#: Seconds between two looks for new runs under the root, at least.
DISCOVERY_INTERVAL_S = 2.0
#: Steps one update carries at most (evenly spaced, last included): the page thins its own.
MAX_UPDATE_STEPS = DEFAULT_MAX_STEPS


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
            except (RunError, OSError, ValueError) as exc:  # a store broken while served
                return {"status": "unreadable", "store_error": str(exc)}
        if findings_version != self.findings_version:
            out["findings"] = self.findings
            out["findings_version"] = self.findings_version
        return out

    def _values(self, run: Run, since: int | None) -> dict[str, Any]:
        new = run.steps(after=since)
        steps = step_sample(new, MAX_UPDATE_STEPS)
        view = RunView(run)  # a fresh snapshot: the run's later steps
        names = {lv: view.names(lv) for lv in view.module_levels}
        per_module = [(lv, st) for lv in names for st in view.stats(lv)]
        totals = [(lv, st) for lv in (Level.MODEL, Level.METRIC) for st in view.stats(lv)]
        tables = view.matrices(per_module + totals, steps=steps)  # one pass over the new values
        matrices, lines = {}, {}
        for level, stat in per_module:  # the page's layout: every name of the level, at every new step
            table = tables[(level, stat)].reindex(index=steps, columns=names[level])
            matrices[f"{level}:{stat}"] = encode_f32(table.to_numpy(dtype=float).T)
        for level, stat in totals:
            table = tables[(level, stat)]
            if not table.empty:
                values = table.iloc[:, 0].to_numpy(dtype=float)
                lines[f"{level}:{stat}"] = {"steps": [int(s) for s in table.index], "values": encode_f32(values)}
        return {"steps": steps, "total_steps": len(view.steps), "matrices": matrices, "lines": lines}

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

    def __init__(self, served: ServedRuns, interval: float = DOCTOR_INTERVAL_S) -> None:
        self.served = served
        self.interval = interval
        self._stop = threading.Event()
        self._judged: dict[str, tuple[int | None, str]] = {}
        self._runs: dict[str, Run] = {}
        self._thread = threading.Thread(target=self._loop, name="gradsight-serve-doctor", daemon=True)

    def start(self) -> Doctor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for run in self._runs.values():
            run.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.served.refresh()
            for live in list(self.served.runs.values()):
                if self._stop.is_set():
                    break
                self.check(live)
            self._stop.wait(max(0.2, self.interval - (time.monotonic() - started)))

    def check(self, live: LiveRun) -> None:
        """Diagnose ``live`` once if it has changed since it was last diagnosed."""
        try:
            run = self._runs.get(live.key)
            if run is None:
                run = self._runs[live.key] = open_run(live.path)
            last = run.last_step()
            status = str(run.reload_meta().get("status", "unknown"))
            if self._judged.get(live.key) == (last, status):
                return
            with RunView(run) as view:
                findings = diagnose(view)
            self._judged[live.key] = (last, status)
            live.set_findings(findings, last)
        except (RunError, OSError) as exc:
            log.debug("cannot diagnose %s yet: %s", live.path, exc)
        except Exception as exc:  # a broken rule must not stop the other runs' findings
            log.warning("diagnosis of %s failed: %s", live.path, exc)
            live.set_findings([], None)
            self._judged[live.key] = (None, "failed")


def poll_answer(served: ServedRuns, asked: list[tuple[str, int | None, int | None]]) -> dict[str, Any]:
    """The answer to one poll: ``asked`` holds ``(key, since, findings_version)`` per run on the
    page; keys not served are left out. ``runs_key`` changes when runs appear."""
    served.refresh()
    updates = {}
    for key, since, fver in asked:
        live = served.get(key)
        if live is not None:
            updates[key] = live.update(since, fver)
    return {"runs_key": served.key, "runs": updates}


__all__ = ["Doctor", "LiveRun", "ServedRuns", "names_key", "poll_answer"]

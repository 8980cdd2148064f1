"""``gradsight serve``: the report's page, live, from a threaded ``http.server``.

Routes (GET only; anything else is 404, other methods 405):

- ``/``: the report page (:func:`gradsight.report.html.build_report` with ``live=``) of
  every readable run under the root, as it stands when the page is opened.
- ``/api/poll?run=KEY&since=STEP&f=VERSION[&run=...][&k=RUNS_KEY&wait=SECONDS]``: per run
  on the page, its status and the steps after ``since`` (:func:`gradsight.report.live.poll_answer`);
  JSON. With ``wait`` the answer waits until something is new (a long poll: the page's way).
- ``/api/runs``: every served run's key and status (or why it cannot be read); JSON.
- ``/api/figures?run=KEY``: the figures of a run (gradient distributions, noise scale) as the
  doctor's thread drew them last; the page asks as the run records (every
  :data:`~gradsight.report.live.FIGURES_S` seconds), and asking is what has them drawn;
- ``/api/section?run=KEY``: one run's section and payload (:func:`gradsight.report.html.live_section`);
  JSON. A page of more than ``LAZY_RUNS`` runs is sent as a shell listing them
  (:func:`~gradsight.report.html.live_shell`), and asks for each run's section when it comes
  near the view. Sections are kept while the run's data and layout stay as they are (a reload
  or a second page costs nothing).

The server reads runs read-only (``store/access.py``) and reaches them only by key
(:class:`~gradsight.report.live.ServedRuns`). Bound to a loopback address it also answers
only requests whose ``Host`` is a loopback name (a web page elsewhere cannot reach it
through DNS rebinding). Pages are sent with a Content-Security-Policy that allows the
inline script and style, images from ``data:`` and requests to this server only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gradsight.report.html import LAZY_RUNS, build_report, live_section, live_shell, run_looks
from gradsight.report.live import FIGURES_S, Doctor, ServedRuns, names_key, poll_answer
from gradsight.store.query import family_and_depth, run_labels
from gradsight.store.view import RunView

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
#: Milliseconds between two polls of the page, at least (each waits up to ``POLL_WAIT_S`` for news).
POLL_INTERVAL_MS = 250
#: Seconds the page's poll waits for something new (:data:`gradsight.report.live.MAX_WAIT_S` at most).
POLL_WAIT_S = 20
#: Runs a poll may name, at most.
MAX_POLLED_RUNS = 1000
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


class LiveServer(ThreadingHTTPServer):
    """The HTTP server with its runs and their doctor."""

    daemon_threads = True

    def __init__(self, root: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 poll_interval_ms: int = POLL_INTERVAL_MS, doctor_interval: float | None = None,
                 figures_s: float = FIGURES_S) -> None:
        self.served = ServedRuns(root)
        self.figures_s = figures_s
        self.source = str(root)
        self.poll_interval_ms = poll_interval_ms
        self.loopback_only = is_loopback(host)
        self.page_lock = threading.Lock()
        self.stopping = threading.Event()  #: set when the server stops: waiting polls answer at once
        self._sections: dict[str, tuple[tuple, bytes]] = {}  # run key -> (its version, /api/section's body)
        self._names: dict[str, str] = {}  # run key -> its name on the lazy page
        self._looks: dict[str, tuple[str, str | None]] = {}  # run key -> its colour and dash there
        super().__init__((host, port), Handler)
        kwargs = {"figures_every": figures_s} | ({} if doctor_interval is None else {"interval": doctor_interval})
        self.doctor = Doctor(self.served, **kwargs).start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in str(host) else host}:{port}/"

    def page(self) -> str:
        """The report page of every readable run, with the keys the page polls by."""
        self.served.refresh(force=True)
        with self.page_lock:
            shown = self.served.shown
            lives = [self.served.get(k) for k in shown]
            config = {"keys": shown, "runs_key": names_key(shown), "wait_s": POLL_WAIT_S,
                      "interval_ms": self.poll_interval_ms, "figures_s": self.figures_s, "source": self.source}
            title = f"gradsight serve: {self.source}"
            if len(lives) > LAZY_RUNS:  # the runs listed at once, each read when the page asks for it
                runs = [live.open() for live in lives]  # open already: no read
                names = run_labels(runs)
                self._names = dict(zip(shown, names))
                found = [family_and_depth(run) if run is not None else None for run in runs]  # the config: one row
                self._looks = dict(zip(shown, run_looks([(*(f or (None, None)), n) for f, n in zip(found, names)])))
                return live_shell(names, shown, live=config, title=title)
            for live in lives:  # in one order: a poll holds one of these at a time
                live.lock.acquire()
            try:
                views = [RunView(live.open()) for live in lives]
                return build_report(views, title=title, live=config, base=Path.cwd())  # paths as typed
            finally:
                for live in lives:
                    live.lock.release()

    def section(self, key: str) -> bytes | None:
        """``/api/section``'s JSON of the run of ``key`` as :meth:`page` named it (None: not on
        the page), made again only when the run's data or layout changed since it was made."""
        live, name = self.served.get(key), self._names.get(key)
        if live is None or name is None:
            return None
        index = list(self._names).index(key)
        with live.lock:
            run = live.open()
            if run is None:
                return None
            version = (run.data_version(), run.layout_version(), run.last_step(), index, name, self._looks.get(key))
            kept = self._sections.get(key)
            if kept is not None and kept[0] == version:
                return kept[1]
            part = live_section(RunView(run), index, name, key, base=Path.cwd(), look=self._looks.get(key))
        body = json.dumps(part, separators=(",", ":"), allow_nan=False).encode("utf-8")
        self._sections[key] = (version, body)
        return body

    def figures(self, key: str) -> bytes | None:
        """``/api/figures``' JSON of the run of ``key`` (None: not served): ``{"step", "html"}``
        of the figures the doctor's thread drew last (:func:`~gradsight.report.figures.figures_html`),
        ``{"step": null}`` before it has; asking is what has them drawn."""
        live = self.served.get(key)
        if live is None:
            return None
        live.figures_asked = True
        drawn = live.figures
        part = {"step": None} if drawn is None else {"step": drawn[0], "html": drawn[1]}
        return json.dumps(part, separators=(",", ":"), allow_nan=False).encode("utf-8")

    def runs(self) -> dict[str, Any]:
        out = {}
        for key in self.served.refresh(force=True):
            live = self.served.get(key)
            answer = live.update(since=1 << 62, findings_version=live.findings_version)  # no values
            out[key] = {k: v for k, v in answer.items() if k in ("status", "last", "store_error", "steps_dropped")}
        return {"runs_key": self.served.key, "runs": out}

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()

    def server_close(self) -> None:
        self.stopping.set()
        self.doctor.stop()
        super().server_close()
        self.served.close()


class Handler(BaseHTTPRequestHandler):
    server: LiveServer
    server_version = "gradsight"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: Any, status: int = 200) -> None:
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
        self._send(status, body, "application/json")

    def _refuse(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    def _host_allowed(self) -> bool:
        if not self.server.loopback_only:
            return True
        host = urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
        return is_loopback(host)

    def do_GET(self) -> None:
        if not self._host_allowed():
            self._refuse(403, "this server answers only to localhost")
            return
        parts = urlsplit(self.path)
        try:
            if parts.path == "/":
                self._send(200, self.server.page().encode("utf-8"), "text/html; charset=utf-8")
            elif parts.path == "/api/poll":
                query = parse_qs(parts.query, keep_blank_values=True)
                keys, since, fver = query.get("run", []), query.get("since", []), query.get("f", [])
                if len(keys) > MAX_POLLED_RUNS or not (len(keys) == len(since) == len(fver)):
                    self._refuse(400, "give run, since and f once per run")
                    return
                asked = [(k, _int_or_none(s), _int_or_none(f)) for k, s, f in zip(keys, since, fver)]
                wait = _int_or_none(query.get("wait", ["0"])[0]) or 0
                runs_key = _int_or_none(query.get("k", [""])[0])
                self._json(poll_answer(self.server.served, asked, runs_key=runs_key, wait=wait,
                                       stop=self.server.stopping))
            elif parts.path == "/api/section":
                self._one_run(parts.query, self.server.section, "no such run on the page")
            elif parts.path == "/api/figures":
                self._one_run(parts.query, self.server.figures, "no such run")
            elif parts.path == "/api/runs":
                self._json(self.server.runs())
            else:
                self._refuse(404, "not found")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # one bad request or run must not stop the server
            log.warning("serving %s failed: %s: %s", parts.path, type(exc).__name__, exc)
            try:
                self._refuse(500, f"{type(exc).__name__}: {exc}")
            except OSError:
                pass

    do_HEAD = do_GET

    def _one_run(self, query: str, answer, missing: str) -> None:
        """A route of one run (``?run=KEY``, once): ``answer(key)``'s JSON body, or 404."""
        keys = parse_qs(query, keep_blank_values=True).get("run", [])
        body = answer(keys[0]) if len(keys) == 1 else None
        if body is None:
            self._refuse(404, missing)
        else:
            self._send(200, body, "application/json")

    def _not_allowed(self) -> None:
        self._refuse(405, "read-only: GET only")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed


def serve(root: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **kwargs: Any) -> LiveServer:
    """A :class:`LiveServer` of the runs under ``root``, bound and started (``serve_forever``
    is left to the caller; ``server_close`` stops its doctor and closes the runs)."""
    return LiveServer(root, host, port, **kwargs)

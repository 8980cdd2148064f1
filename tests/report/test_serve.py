"""``gradsight serve``: the poll API, what it refuses, and that serving changes no file."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from gradsight.cli import main
from gradsight.report import server as server_module
from gradsight.report.html import LAZY_RUNS
from gradsight.report.live import Doctor, ServedRuns, names_key
from gradsight.report.payload import layout_key, run_payload
from gradsight.report.server import LiveServer
from gradsight.store.reader import Run, open_run
from gradsight.store.schema import DB_NAME
from gradsight.store.view import RunView
from tests.plots.runs import make_run
from tests.store.helpers import store_files

REPO = Path(__file__).resolve().parents[2]


class Served:
    """A :class:`LiveServer` answering in a thread; ``get`` returns ``(status, headers, body)``."""

    def __init__(self, root: Path, **kwargs) -> None:
        self.server = LiveServer(root, "127.0.0.1", 0, **kwargs)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def get(self, path: str, host: str | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=host is not None)
            if host is not None:
                conn.putheader("Host", host)
            conn.endheaders()
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def json(self, path: str) -> dict:
        status, _, body = self.get(path)
        assert status == 200, body
        return json.loads(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served_runs(report_runs):
    served = Served(report_runs, doctor_interval=0.2)
    yield served
    served.close()


def _wait(predicate, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_poll_gives_only_the_steps_after_since(served_runs):
    answer = served_runs.json("/api/poll?run=plain4&since=5&f=-1")
    update = answer["runs"]["plain4"]
    assert update["status"] == "finished" and update["last"] == 11
    assert update["steps"] == [6, 7, 8, 9, 10, 11]
    rows = len(base64.b64decode(update["matrices"]["layer:grad_rms"])) // 4 // 6
    assert rows == 4  # 4 layers x 6 new steps
    assert update["lines"]["model:grad_rms"]["steps"] == [6, 7, 8, 9, 10, 11]
    assert isinstance(update["findings"], list) and "findings_version" in update


def _f32(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


@pytest.mark.parametrize("key", ["plain4", "residual4"])
@pytest.mark.parametrize("since", [None, 3, 8])
def test_a_poll_gives_the_values_the_report_shows(report_runs, key, since):
    """Every table, line, own-step table and non-finite event of an update equals the report's
    payload (``run_payload(every_name=True)``, read through the view's frames) at the new steps."""
    payload = run_payload(RunView(report_runs / key), 0, every_name=True).data
    served = ServedRuns(report_runs)
    try:
        update = served.get(key).update(since)
    finally:
        served.close()
    new = [s for s in payload["steps"] if since is None or s > since]
    assert update["steps"] == new and update["total_steps"] == payload["total_steps"] == 12
    at = [payload["steps"].index(s) for s in new]
    shared = {k: m for k, m in payload["matrices"].items() if "steps" not in m}
    assert set(update["matrices"]) == set(shared)
    for name, m in shared.items():
        rows = len(payload["names"][m["level"]])
        expected = _f32(m["data"]).reshape(rows, -1)[:, at]
        np.testing.assert_array_equal(_f32(update["matrices"][name]).reshape(rows, -1), expected, err_msg=name)
    own = payload["matrices"].get("update_ratio:own_steps")
    if own is not None:  # residual4: update ratios every 4th step (plain4: none at the NaN step, 5)
        written = update["written"].get("layer:update_ratio", range(len(new)))  # left out: every new step
        assert [new[i] for i in written] == [s for s in own["steps"] if s in new]
    else:
        assert "layer:update_ratio" not in update["written"]
    lines = {"model:" + payload["model"]["stat"]: payload["model"]} | {f"metric:{n}": v for n, v in payload["metrics"].items()}
    for name, line in lines.items():
        keep = [i for i, s in enumerate(line["steps"]) if s in new]
        got = update["lines"].get(name, {"steps": [], "values": ""})
        assert got["steps"] == [line["steps"][i] for i in keep], name
        np.testing.assert_array_equal(_f32(got["values"]), _f32(line["values"])[keep], err_msg=name)
    assert update.get("nonfinite", []) == [e for e in payload["nonfinite"] if e[0] in new]
    assert bool(update.get("nonfinite")) == (key == "plain4" and since != 8)  # its NaN at step 5
    assert update["layout"] == layout_key(RunView(report_runs / key))


def test_a_poll_with_nothing_new_is_small(served_runs):
    fver = served_runs.json("/api/poll?run=plain4&since=11&f=-1")["runs"]["plain4"]["findings_version"]
    status, _, body = served_runs.get(f"/api/poll?run=plain4&since=11&f={fver}")
    assert status == 200 and len(body) < 1024
    assert json.loads(body)["runs"]["plain4"] == {"status": "finished", "last": 11}


def test_findings_come_from_the_background_doctor(served_runs):
    def findings():
        update = served_runs.json("/api/poll?run=plain4&since=11&f=-1")["runs"]["plain4"]
        return update["findings"] if update["findings_version"] > 0 else None

    found = _wait(findings)
    nonfinite = [f for f in found if f["code"] == "nonfinite"]
    assert nonfinite and nonfinite[0]["step"] == 11  # first seen at the last step the doctor saw


def test_a_step_recorded_while_the_doctor_reads_is_judged_with_the_next(report_runs, monkeypatch):
    """The doctor reads the last step, then diagnoses: a step committed in between (plain4's NaN,
    at step 5, landing after step 4 was read) is not judged now, or its finding would be "since
    step 4"; the run is diagnosed as it stood at the step read."""
    served = ServedRuns(report_runs)
    doctor = Doctor(served)
    try:
        live = served.get("plain4")
        monkeypatch.setattr(Run, "last_step", lambda self: 4)
        doctor.check(live)
        assert doctor._judged["plain4"] == (4, "finished") and "nonfinite" not in {f["code"] for f in live.findings}
        monkeypatch.undo()
        doctor.check(live)
        nonfinite = [f for f in live.findings if f["code"] == "nonfinite"]
        assert nonfinite and nonfinite[0]["step"] == 11
    finally:
        for run in doctor._runs.values():  # (its thread never started: nothing to stop)
            run.close()
        served.close()


def test_a_polls_step_count_stops_at_its_last_step(report_runs, monkeypatch):
    """Steps committed between reading the new steps and counting them are not counted: the
    page's "steps recorded" and its last step agree (they come with the next poll)."""
    steps = Run.steps
    monkeypatch.setattr(Run, "steps", lambda self, after=None: [s for s in steps(self, after) if s <= 8])
    served = ServedRuns(report_runs)
    try:
        update = served.get("plain4").update(None)
    finally:
        served.close()
    assert update["steps"][-1] == 8 and update["total_steps"] == 9


def test_the_page_is_the_report_page_with_the_live_feed(served_runs):
    status, headers, body = served_runs.get("/")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    assert 'id="run-0"' in text and 'data-chart="heatmap"' in text and 'data-live="findings"' in text
    payload = json.loads(text.split('<script id="gs-data" type="application/json">')[1].split("</script>")[0])
    assert payload["live"]["runs_key"] == served_runs.json("/api/runs")["runs_key"]
    assert {r["live"]["key"] for r in payload["runs"]} == {"plain4", "residual4", "hostile"}


@pytest.mark.parametrize("path", [
    "/../plain4", "/%2e%2e/%2e%2e/etc/passwd", "/plain4/gradsight.sqlite", "//etc/passwd", "/etc/passwd",
    "/api/poll/../../x", "/api/run", "/api/poll%2f..%2f..",
])
def test_paths_outside_the_routes_are_not_found(served_runs, path):
    assert served_runs.get(path)[0] == 404


@pytest.mark.parametrize("key", ["..", "../compare/plain4", "/etc", "plain4/..", "plain4%2f..%2fresidual4",
                                 str(Path("/").resolve()), "./plain4", "plain4/", "%2e%2e"])
def test_runs_are_reached_only_by_their_key(served_runs, key):
    answer = served_runs.json(f"/api/poll?run={quote(key, safe='')}&since=&f=-1")
    assert answer["runs"] == {}


def test_a_symlink_out_of_the_root_is_not_served(report_runs, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    make_run(root / "inside", steps=2)
    os.symlink(report_runs / "plain4", root / "outside")  # a run directory elsewhere
    (root / "db").mkdir()
    os.symlink(report_runs / "residual4" / DB_NAME, root / "db" / DB_NAME)  # a store elsewhere
    served = Served(root)
    try:
        assert list(served.json("/api/runs")["runs"]) == ["inside"]
        assert served.json("/api/poll?run=outside&since=&f=-1")["runs"] == {}
        assert "outside" not in served.get("/")[2].decode()
    finally:
        served.close()


def test_only_loopback_hosts_and_get_are_answered(served_runs):
    assert served_runs.get("/api/runs", host="evil.example:8765")[0] == 403  # DNS rebinding
    assert served_runs.get("/api/runs", host=f"localhost:{served_runs.port}")[0] == 200
    assert served_runs.get("/api/runs", method="POST")[0] == 405


def test_a_run_appearing_and_a_corrupted_store(tmp_path):
    make_run(tmp_path / "a", steps=2)
    served = Served(tmp_path)
    try:
        before = served.json("/api/runs")
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / DB_NAME).write_bytes(b"not a database" * 100)
        make_run(tmp_path / "b", steps=3)
        def three_runs():
            answer = served.json("/api/runs")
            return answer if len(answer["runs"]) == 3 else None

        after = _wait(three_runs)
        assert after["runs_key"] != before["runs_key"]
        assert after["runs_key"] == names_key(["a", "b"])  # the page shows the readable runs
        assert after["runs"]["b"] == {"status": "finished", "last": 2}
        assert after["runs"]["broken"]["status"] == "unreadable"
        assert "corrupted or not a SQLite database" in after["runs"]["broken"]["store_error"]
        assert served.get("/")[0] == 200  # the page of the readable runs
    finally:
        served.close()



def many_runs(root: Path, report_runs: Path) -> Path:
    """More runs than a page shows at once: the hostile-named run, plain4 and small runs."""
    for name in ("hostile", "plain4"):
        shutil.copytree(report_runs / name, root / name)
    for i in range(LAZY_RUNS - 1):
        make_run(root / f"small{i}", depth=1, steps=3, seed=i)
    return root


def _page_data(text: str) -> dict:
    return json.loads(text.split('<script id="gs-data" type="application/json">')[1].split("</script>")[0])


def test_a_page_of_many_runs_lists_them_and_sends_each_run_when_asked(report_runs, tmp_path, monkeypatch):
    root = many_runs(tmp_path, report_runs)
    served = Served(root)
    try:
        payload = _page_data(served.get("/")[2].decode())
        keys = [r["live"]["key"] for r in payload["runs"]]
        assert sorted(keys) == sorted(p.name for p in root.iterdir()) and len(keys) > LAZY_RUNS
        assert all(r["pending"] and "matrices" not in r for r in payload["runs"])  # listed, not read
        assert payload["live"]["lazy"] is True
        # a run's section and payload are the report's (run_payload, the names escaped alike)
        i = keys.index("plain4")
        part = served.json("/api/section?run=plain4")
        assert part["html"].startswith(f'<section class="run" id="run-{i}">') and 'data-chart="heatmap"' in part["html"]
        with RunView(open_run(root / "plain4")) as view:
            expected = run_payload(view, i, every_name=True).data
        for field in ("steps", "names", "matrices", "nonfinite", "total_steps"):
            assert part["data"][field] == expected[field], field
        assert part["data"]["live"] == {"key": "plain4", "last": expected["steps"][-1], "f": -1,
                                        "layout": layout_key(view)}
        hostile = served.json("/api/section?run=hostile")["html"]
        assert "<script>" not in hostile and "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile
        assert "<img" not in hostile
        # kept while the run stays as it is: a reload or a second tab makes nothing again
        made = []
        real = server_module.live_section
        monkeypatch.setattr(server_module, "live_section", lambda *a, **k: made.append(a[2]) or real(*a, **k))
        first = served.get("/api/section?run=small0")[2]
        assert served.get("/api/section?run=small0")[2] == first and served.get("/")[0] == 200
        assert served.get("/api/section?run=small0")[2] == first and made == ["small0"]
        for query in ("", "?run=", "?run=nothere", "?run=..%2Fplain4", "?run=plain4&run=small0",
                      f"?run={quote(str(root / 'plain4'), safe='')}", "?run=plain4%2F.."):
            assert served.get("/api/section" + query)[0] == 404, query
    finally:
        served.close()


def test_serve_binds_loopback_and_warns_for_other_addresses(monkeypatch, tmp_path, capsys):
    make_run(tmp_path / "a", steps=2)
    bound = []

    def fake_forever(self):
        bound.append(self.server_address[0])
        raise KeyboardInterrupt

    monkeypatch.setattr(LiveServer, "serve_forever", fake_forever)
    assert main(["serve", str(tmp_path), "--port", "0"]) == 0
    out = capsys.readouterr()
    assert bound == ["127.0.0.1"] and "serving http://127.0.0.1:" in out.out and "warning" not in out.err
    assert main(["serve", str(tmp_path), "--port", "0", "--host", "0.0.0.0"]) == 0
    assert bound[-1] == "0.0.0.0" and "anyone who can reach port" in capsys.readouterr().err


CHILD = r"""
import os, sys, time, torch
from torch import nn
import gradsight as gs
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
update_ratio = int(os.environ.get("GS_TEST_UPDATE_RATIO", "0"))  # 0: no optimizer, no update ratios
opt = torch.optim.SGD(model.parameters(), lr=0.01) if update_ratio else None
histograms = int(os.environ.get("GS_TEST_HISTOGRAMS", "0")) or False
with gs.watch(model, sys.argv[1], name="child", optimizer=opt, update_ratio=update_ratio or False,
              histograms=histograms) as mon:
    nan_at = int(os.environ.get("GS_TEST_NAN_AT", "-1"))
    for step in range(int(sys.argv[2])):
        x = torch.randn(5, 4) * (float("nan") if 0 <= nan_at <= step else 1.0)
        loss = model(x).pow(2).mean()
        loss.backward()
        mon.step(loss if update_ratio else None)
        if opt is not None:
            opt.step()
        mon.flush()
        model.zero_grad()
        time.sleep(float(sys.argv[3]))
    print("done", flush=True)
    if len(sys.argv) > 4:
        time.sleep(60)  # killed here, its store in WAL mode
"""


def child(run_dir: Path, steps: int, pause: float, hang: bool = False, nan_at: int = -1,
          update_ratio: int = 0, histograms: int = 0) -> subprocess.Popen:
    """A process recording ``steps`` steps of a small MLP into ``run_dir``, ``pause`` s apart
    (its gradients NaN from step ``nan_at``); with ``hang`` it waits to be killed after them;
    with ``update_ratio`` it trains with SGD, measures update ratios every that many steps and
    logs the loss; with ``histograms`` it records gradient histograms every that many steps."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               GS_TEST_NAN_AT=str(nan_at), GS_TEST_UPDATE_RATIO=str(update_ratio), GS_TEST_HISTOGRAMS=str(histograms))
    args = [sys.executable, "-c", CHILD, str(run_dir), str(steps), str(pause)] + (["hang"] if hang else [])
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)


def test_steps_of_a_recording_process_reach_the_api(tmp_path):
    proc = child(tmp_path / "live", steps=40, pause=0.25)
    served = Served(tmp_path, doctor_interval=0.5)
    try:
        first = _wait(lambda: served.json("/api/runs")["runs"].get("live", {}).get("last"), timeout=60)
        poll = lambda: served.json(f"/api/poll?run=live&since={first}&f=-1")["runs"]["live"]
        update = _wait(lambda: (u := poll()).get("steps") and u, timeout=5)
        assert update["status"] == "running" and update["steps"][0] == first + 1 and "writer" not in update
        assert update["depth_source"] == "forward"  # the summary's "pending" of a page opened at step 0 follows
        assert proc.wait(timeout=120) == 0
        assert _wait(lambda: poll()["status"] == "finished", timeout=5)
    finally:
        proc.kill()
        served.close()


def test_a_recording_runs_figures_are_drawn_again_when_asked(tmp_path):
    proc = child(tmp_path / "live", steps=60, pause=0.1, histograms=5)
    served = Served(tmp_path, doctor_interval=0.2, figures_s=0.5)
    try:
        _wait(lambda: (served.json("/api/runs")["runs"].get("live", {}).get("last") or 0) >= 5, timeout=60)
        assert served.json("/api/figures?run=live") == {"step": None}  # asking has them drawn
        first = _wait(lambda: (f := served.json("/api/figures?run=live"))["step"] is not None and f, timeout=30)
        assert "Gradient distributions" in first["html"] and first["html"].count("<img") == 1
        later = _wait(lambda: (f := served.json("/api/figures?run=live"))["step"] >= first["step"] + 10 and f, timeout=60)
        assert later["html"] != first["html"]  # more histogram steps drawn
        with open_run(tmp_path / "live") as run:
            assert later["step"] <= run.last_step()
        assert served.get("/api/figures?run=nope")[0] == 404 and served.get("/api/figures")[0] == 404
        assert proc.wait(timeout=120) == 0
        with open_run(tmp_path / "live") as run:  # the run's end drawn at once
            assert _wait(lambda: served.json("/api/figures?run=live")["step"] == run.last_step(), timeout=30)
    finally:
        proc.kill()
        served.close()


def test_serving_a_live_and_a_killed_run_changes_no_file(tmp_path):
    proc = child(tmp_path / "killed", steps=5, pause=0.0, hang=True)
    assert proc.stdout.readline().strip() == "done"
    proc.kill()
    proc.wait()
    make_run(tmp_path / "finished", steps=4)
    before = {d: store_files(tmp_path / d) for d in ("killed", "finished")}
    assert {"gradsight.sqlite-wal", "gradsight.sqlite-shm"} <= set(before["killed"])
    mtimes = {p: p.stat().st_mtime_ns for d in ("killed", "finished") for p in (tmp_path / d).iterdir()}
    served = Served(tmp_path, doctor_interval=0.1)
    try:
        for _ in range(3):
            assert served.get("/")[0] == 200
            served.json("/api/poll?run=killed&since=&f=-1&run=finished&since=1&f=-1")
            served.json("/api/runs")
            time.sleep(0.3)
        killed = served.json("/api/poll?run=killed&since=&f=-1")["runs"]["killed"]
        assert killed["status"] == "running" and killed["writer"] == "gone"  # a killed writer
        assert "writer" not in served.json("/api/poll?run=finished&since=&f=-1")["runs"]["finished"]
    finally:
        served.close()
    assert {d: store_files(tmp_path / d) for d in ("killed", "finished")} == before
    assert {p: p.stat().st_mtime_ns for d in ("killed", "finished") for p in (tmp_path / d).iterdir()} == mtimes


def test_a_waiting_poll_answers_when_a_step_is_committed_or_the_runs_change(tmp_path):
    proc = child(tmp_path / "live", steps=200, pause=0.05)
    served = Served(tmp_path, doctor_interval=60)
    try:
        first = _wait(lambda: served.json("/api/runs")["runs"].get("live", {}).get("last"), timeout=60)
        runs_key = served.json("/api/runs")["runs_key"]
        fver = served.json("/api/poll?run=live&since=&f=-1")["runs"]["live"]["findings_version"]
        last = served.json(f"/api/poll?run=live&since={first}&f={fver}")["runs"]["live"]["last"]
        # nothing new when asked: the answer waits for the next commit (the HTTP timeout is 30 s, the wait 25 s)
        update = served.json(f"/api/poll?run=live&since={last}&f={fver}&k={runs_key}&wait=25")["runs"]["live"]
        assert update["steps"][0] == last + 1 and update["status"] == "running"
        # a page holding other runs is told at once
        other = served.json(f"/api/poll?run=live&since={update['last']}&f={fver}&k={runs_key + 1}&wait=25")
        assert other["runs_key"] == runs_key
        assert proc.wait(timeout=120) == 0
        final = served.json(f"/api/poll?run=live&since=&f={fver}")["runs"]["live"]
        done = served.json(f"/api/poll?run=live&since={final['last']}&f={fver}&k={runs_key}&wait=1")
        assert done["runs"]["live"] == {"status": "finished", "last": final["last"]}  # nothing new: after 1 s
    finally:
        proc.kill()
        served.close()


def test_the_doctor_runs_at_the_lowest_cpu_priority(report_runs):
    if not sys.platform.startswith("linux"):
        pytest.skip("threads have their own priority on Linux")
    served = Served(report_runs, doctor_interval=0.2)
    try:
        doctor = served.server.doctor._thread
        _wait(lambda: doctor.native_id is not None)
        assert _wait(lambda: os.getpriority(os.PRIO_PROCESS, doctor.native_id) == 19, timeout=5)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19  # the rest of the process as it was
    finally:
        served.close()


def test_a_kept_section_is_made_again_when_its_run_records(report_runs, tmp_path):
    root = many_runs(tmp_path, report_runs)
    proc = child(root / "live", steps=40, pause=0.2)
    served = Served(root)
    try:
        _wait(lambda: served.json("/api/runs")["runs"].get("live", {}).get("last"), timeout=60)
        assert served.get("/")[0] == 200  # the page names the runs it asks for
        first = served.json("/api/section?run=live")["data"]["live"]["last"]
        later = _wait(lambda: (s := served.json("/api/section?run=live")["data"]["live"]["last"]) > first and s)
        with open_run(root / "live") as run:
            assert first < later <= run.last_step()
    finally:
        proc.kill()
        served.close()


def test_the_page_names_each_run_by_its_path_from_where_serve_was_started(report_runs, tmp_path, monkeypatch):
    """As typed at the prompt (``runs/plain4``), not as an absolute path, on the page of a few
    runs and in a section of a page of many."""
    monkeypatch.chdir(report_runs.parent)
    served = Served(Path(report_runs.name))
    try:
        assert f'<td data-row="run">{report_runs.name}/plain4</td>' in served.get("/")[2].decode()
    finally:
        served.close()
    root = many_runs(tmp_path, report_runs)
    monkeypatch.chdir(root.parent)
    served = Served(Path(root.name))
    try:
        assert served.get("/")[0] == 200  # the page names the runs its sections are asked for by
        html = served.json("/api/section?run=plain4")["html"]
        assert f'<td data-row="run">{root.name}/plain4</td>' in html
    finally:
        served.close()

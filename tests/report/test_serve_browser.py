"""The live page of ``gradsight serve`` in Debian's chromium (Playwright), as in test_browser.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gradsight.report.html import LAZY_RUNS
from tests.report.test_browser import (  # skipped without playwright
    ARGS,
    CHROMIUM,
    Page,
    sync_api,
)
from gradsight.report import live as live_module
from gradsight.report.html import build_report
from gradsight.store.reader import open_run
from tests.report.test_serve import Served, _page_data, _wait, child, many_runs

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")


@pytest.fixture
def browser(tmp_path_factory):
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=ARGS, headless=True,
            viewport={"width": 1280, "height": 900})
        try:
            yield context
        finally:
            context.close()


def open_page(browser, url: str) -> Page:
    page = browser.new_page()
    opened = Page(page, url)
    page.goto(url)
    page.wait_for_selector("body[data-rendered=true]", state="attached", timeout=30_000)
    return opened


def test_hostile_names_stay_inert_on_the_live_page(browser, report_runs):
    served = Served(report_runs, doctor_interval=0.2)
    try:
        url = f"http://127.0.0.1:{served.port}/"
        opened = open_page(browser, url)
        page = opened.page
        page.wait_for_selector("section.run[data-status=finished]", state="attached", timeout=15_000)
        page.wait_for_selector("#run-1 [data-live=findings] li", state="attached", timeout=15_000)
        page.wait_for_timeout(2500)  # a few polls
        assert opened.dialogs == []
        assert opened.console_errors == []
        assert all(r.startswith(url) for r in opened.requests), opened.requests
        assert any("/api/poll?" in r for r in opened.requests)
        hostile = page.locator("section.run", has_text="hostile")
        assert hostile.locator("script").count() == 0 and page.locator("img[src=x]").count() == 0
        assert page.locator("#run-1 [data-live=status]").text_content().startswith("status: finished")
    finally:
        served.close()


def test_steps_of_a_recording_process_are_drawn_and_a_finding_appears(browser, tmp_path):
    proc = child(tmp_path / "live", steps=80, pause=0.2, nan_at=20)
    served = Served(tmp_path, doctor_interval=0.5)
    try:
        _wait(lambda: served.json("/api/runs")["runs"].get("live", {}).get("last"), timeout=60)
        opened = open_page(browser, f"http://127.0.0.1:{served.port}/")
        page = opened.page
        heat = page.locator("#run-0 [data-chart=heatmap] canvas")
        cols = int(heat.get_attribute("data-cols"))
        last = int(page.locator("#run-0").get_attribute("data-last-step") or -1)
        def drawn() -> bool:  # the heatmap grown and the run's last step moved on, both set by one poll
            return (int(heat.get_attribute("data-cols")) > cols
                    and int(page.locator("#run-0").get_attribute("data-last-step") or -1) > last)

        for _ in range(100):  # 10 s (the page's CSP forbids wait_for_function's eval)
            page.wait_for_timeout(100)
            if drawn():
                break
        assert int(heat.get_attribute("data-cols")) > cols
        assert int(page.locator("#run-0").get_attribute("data-last-step")) > last
        assert page.locator("#run-0").get_attribute("data-status") == "running"
        finding = page.locator("#run-0 [data-live=findings] li[data-code=nonfinite]")
        finding.wait_for(state="attached", timeout=20_000)  # the gradients go NaN at step 20
        since = re.search(r"\(since step (\d+)\)", finding.text_content())
        assert since and int(since.group(1)) >= 20
        assert opened.console_errors == [] and opened.dialogs == []
    finally:
        proc.kill()
        served.close()


def test_every_chart_over_steps_follows_a_recording_process(browser, tmp_path):
    """Update ratios measured every 3rd step (a table of their own steps), the model and loss
    lines, the heatmap and the non-finite markers all take the steps recorded after the page opened."""
    proc = child(tmp_path / "live", steps=120, pause=0.1, nan_at=70, update_ratio=3)
    served = Served(tmp_path, doctor_interval=0.5)
    try:
        _wait(lambda: (served.json("/api/runs")["runs"].get("live", {}).get("last") or 0) >= 6, timeout=60)
        opened = open_page(browser, f"http://127.0.0.1:{served.port}/")
        page = opened.page
        run = page.locator("#run-0")
        charts = {kind: run.locator(f"[data-chart={kind}] svg.gs-svg").first for kind in ("update", "model", "metrics")}

        def last_x(kind: str) -> float:
            return float(charts[kind].get_attribute("data-x-max"))

        before = {kind: last_x(kind) for kind in charts}
        heat = run.locator("[data-chart=heatmap] canvas")
        cols = int(heat.get_attribute("data-cols"))
        assert page.locator("#run-0 [data-chart=bands] path.marker").count() == 0  # no NaN yet
        def reach(step: int) -> int:
            for _ in range(300):  # 30 s (the page's CSP forbids wait_for_function's eval)
                if int(run.get_attribute("data-last-step") or -1) >= step:
                    break
                page.wait_for_timeout(100)
            return int(run.get_attribute("data-last-step"))

        last = min(reach(60), 69)  # the last finite values: the gradients go NaN at step 70
        assert last >= 60
        # the summary's rows that change follow too: the steps recorded and the last loss
        for _ in range(50):  # read between two polls (the page's step before and after the same)
            drawn = int(run.get_attribute("data-last-step"))
            summary = dict(zip(run.locator("table.kv th").all_text_contents(),
                               run.locator("table.kv td").all_text_contents()))
            if int(run.get_attribute("data-last-step")) == drawn:
                break
        assert summary["steps recorded"] == f"{drawn + 1} (steps 0\u2026{drawn})"
        assert summary["loss (last)"].endswith(f"at step {drawn}") and summary["status"] == "running"
        assert int(heat.get_attribute("data-cols")) > cols
        for _ in range(50):  # the charts read between two polls (the page may draw a step meanwhile)
            drawn = min(int(run.get_attribute("data-last-step")), 69)
            xs = {kind: last_x(kind) for kind in ("model", "metrics", "update")}
            if min(int(run.get_attribute("data-last-step")), 69) == drawn:
                break
        assert drawn >= last and xs["model"] == drawn and xs["metrics"] == drawn
        # measured at every 3rd step, from its first: the last such step drawn
        assert before["update"] < xs["update"] and drawn - 3 < xs["update"] <= drawn
        assert xs["update"] % 3 == before["update"] % 3
        # the markers of the NaN come with the steps (the doctor's finding later)
        assert reach(75) >= 75
        markers = page.locator("#run-0 [data-chart=bands] path.marker")
        assert markers.count() >= 1 and "step 70" in markers.first.get_attribute("data-label")
        assert opened.console_errors == [] and opened.dialogs == []
    finally:
        proc.kill()
        served.close()


def test_a_page_of_many_runs_loads_each_run_near_the_view_and_follows_it(browser, report_runs, tmp_path):
    root = many_runs(tmp_path, report_runs)
    proc = child(root / "live", steps=300, pause=0.2)  # recording all along (killed at the end)
    served = Served(root, doctor_interval=0.5)
    try:
        _wait(lambda: served.json("/api/runs")["runs"].get("live", {}).get("last"), timeout=60)
        url = f"http://127.0.0.1:{served.port}/"
        opened = open_page(browser, url)  # the runs in view drawn
        page = opened.page
        sections = page.locator("section.run")
        assert sections.count() == len(served.server.served.shown) > LAZY_RUNS  # every run listed at once
        assert page.locator("section.run[data-loaded=true]").count() < sections.count()  # the rest not yet read
        far = max(i for i, key in enumerate(served.server.served.shown) if key != "live")
        last = page.locator(f"#run-{far}")  # not read, and its status shown all the same
        last.locator("[data-live=status]", has_text="status: finished").wait_for(state="attached", timeout=15_000)
        assert last.get_attribute("data-loaded") is None
        keys = served.server.served.shown
        run = page.locator(f"#run-{keys.index('live')}")
        run.scroll_into_view_if_needed()
        run = page.locator(f"#run-{keys.index('live')}[data-loaded=true]")
        run.wait_for(state="attached", timeout=30_000)
        loaded = int(run.get_attribute("data-last-step") or -1)
        for _ in range(200):  # a loaded run's new steps come with the poll (20 s at most)
            if int(run.get_attribute("data-last-step") or -1) > max(loaded, 0):
                break
            page.wait_for_timeout(100)
        assert int(run.get_attribute("data-last-step")) > max(loaded, 0)
        compared = page.locator("#compare-chart svg path.series")
        assert 0 < compared.count() < sections.count()  # the comparison: the runs loaded so far
        for i in range(sections.count()):  # every run, when it comes into view
            page.locator(f"#run-{i}").scroll_into_view_if_needed()
            page.locator(f"#run-{i}[data-loaded=true] [data-chart=model] svg").wait_for(state="attached",
                                                                                     timeout=30_000)
        # every run compared once loaded, coloured among all the page's runs (a colour per run without a
        # family, as the report's), and their statistics offered
        names = sorted(compared.nth(i).get_attribute("data-name").split(" (")[0] for i in range(compared.count()))
        assert names == sorted(page.locator("section.run h2").all_text_contents())
        colours = {compared.nth(i).get_attribute("data-name").split(" (")[0]: compared.nth(i).get_attribute("stroke")
                   for i in range(compared.count())}
        report = _page_data(build_report([open_run(root / key) for key in keys]))  # the static report's colours
        assert colours == {r["name"]: r["color"] for r in report["runs"]}
        offered = page.locator("#compare-stat option").all_inner_texts()
        assert "grad_norm" in offered and "grad_rms" in offered and len(offered) == len(set(offered))
        hostile = page.locator(f"#run-{keys.index('hostile')}")
        assert hostile.locator("h2").text_content() == "hostile"
        assert hostile.locator("script").count() == 0 and page.locator("img[src=x]").count() == 0
        page.wait_for_timeout(1000)
        assert opened.dialogs == [] and opened.console_errors == []
        assert all(r.startswith(url) for r in opened.requests), opened.requests
        assert sum("/api/section?" in r for r in opened.requests) == sections.count()  # each run asked for once
    finally:
        proc.kill()
        served.close()


def test_a_recording_runs_figures_follow_it(browser, tmp_path, monkeypatch):
    """The gradient distributions (drawn by the server) are asked for again as the run records."""
    # drawn at the lowest CPU priority (test_serve checks it), which a busy machine may starve for minutes
    monkeypatch.setattr(live_module.Doctor, "_lower_priority", staticmethod(lambda: None))
    proc = child(tmp_path / "live", steps=800, pause=0.1, histograms=5)
    served = Served(tmp_path, doctor_interval=0.2, figures_s=1)
    try:
        _wait(lambda: (served.json("/api/runs")["runs"].get("live", {}).get("last") or 0) >= 5, timeout=60)
        opened = open_page(browser, f"http://127.0.0.1:{served.port}/")
        page = opened.page
        box = page.locator("#run-0 [data-live=figures]")
        assert box.locator("img").count() == 1  # drawn with the section
        first = box.locator("img").get_attribute("src")
        for _ in range(100):  # the section's last step is set once its first poll has answered
            if page.locator("#run-0").get_attribute("data-last-step") is not None:
                break
            page.wait_for_timeout(100)
        opened_at = int(page.locator("#run-0").get_attribute("data-last-step"))
        for _ in range(600):  # 60 s (the page's CSP forbids wait_for_function's eval)
            page.wait_for_timeout(100)
            if int(box.get_attribute("data-step") or -1) > opened_at:
                break
        assert int(box.get_attribute("data-step")) > opened_at
        assert box.locator("img").count() == 1 and box.locator("img").get_attribute("src") != first
        assert "Gradient distributions" in box.text_content()
        assert opened.console_errors == [] and opened.dialogs == []
        assert all(r.startswith(f"http://127.0.0.1:{served.port}/") for r in opened.requests)
    finally:
        proc.kill()
        served.close()


def test_a_page_of_many_runs_gets_each_runs_figures_apart(browser, report_runs, tmp_path, monkeypatch):
    """A section comes without its figures (seconds of matplotlib): the page asks for them after."""
    monkeypatch.setattr(live_module.Doctor, "_lower_priority", staticmethod(lambda: None))  # see above
    root = many_runs(tmp_path, report_runs)
    assert child(root / "hist", steps=12, pause=0.0, histograms=4).wait(timeout=120) == 0
    served = Served(root, doctor_interval=0.2)
    try:
        keys = served.server.served.shown
        part = served.json("/api/section?run=hist") if served.get("/")[0] == 200 else None
        assert '<div data-live="figures" data-pending="true"></div>' in part["html"] and "<img" not in part["html"]
        opened = open_page(browser, f"http://127.0.0.1:{served.port}/")
        page = opened.page
        page.locator(f"#run-{keys.index('hist')}").scroll_into_view_if_needed()
        box = page.locator(f"#run-{keys.index('hist')} [data-live=figures]")
        box.locator("img").wait_for(state="attached", timeout=60_000)
        assert box.get_attribute("data-pending") is None and int(box.get_attribute("data-step")) == 11
        assert "Gradient distributions" in box.text_content()
        small = page.locator(f"#run-{keys.index('small0')}")  # a run without figures: an empty box, asked once
        small.scroll_into_view_if_needed()
        small.locator("[data-live=figures][data-step]").wait_for(state="attached", timeout=60_000)
        assert small.locator("[data-live=figures]").inner_html() == ""
        assert opened.console_errors == [] and opened.dialogs == []
    finally:
        served.close()

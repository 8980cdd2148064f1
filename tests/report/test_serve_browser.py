"""The live page of ``gradsight serve`` in Debian's chromium (Playwright), as in test_browser.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.report.test_browser import (  # skipped without playwright
    ARGS,
    CHROMIUM,
    Page,
    sync_api,
)
from tests.report.test_serve import Served, _wait, child

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

"""The report in a real headless browser: Debian's chromium driven by Playwright.

Never downloads a browser: Playwright is pointed at /usr/bin/chromium. Skipped when
chromium or the playwright package is missing; CI installs both (.ci/run).
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")


class Page:
    """An opened report and everything the browser said while loading and drawing it."""

    def __init__(self, page, url: str) -> None:
        self.page, self.url = page, url
        self.console_errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: m.type in ("error", "warning") and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.console_errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))


@pytest.fixture(scope="module")
def browser_page(report_html: Path, tmp_path_factory: pytest.TempPathFactory):
    user_data = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(user_data), executable_path=CHROMIUM, args=ARGS, headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            url = report_html.resolve().as_uri()
            opened = Page(page, url)
            page.goto(url)
            page.wait_for_selector("body[data-rendered=true]", state="attached", timeout=30_000)
            yield opened
        finally:
            context.close()


def test_page_loads_without_errors_requests_or_dialogs(browser_page):
    assert browser_page.console_errors == []
    assert browser_page.requests == [browser_page.url]  # the file itself, nothing else
    assert browser_page.dialogs == []  # the module named <script>alert(1)</script> stayed text


def test_charts_are_drawn_with_the_expected_series(browser_page):
    page = browser_page.page
    # plain4 is the second run: 4 layers, 12 steps; flow = median + 5 overlaid steps
    run = page.locator("#run-1")
    assert run.locator("[data-chart=flow] svg").get_attribute("data-series") == "6"
    assert run.locator("[data-chart=flow] svg path.series").count() == 6
    assert run.locator("[data-chart=bands] svg").get_attribute("data-series") == "3"
    assert run.locator("[data-chart=update] svg path.series").count() == 4
    canvas = run.locator("[data-chart=heatmap] canvas")
    assert (canvas.get_attribute("data-rows"), canvas.get_attribute("data-cols")) == ("4", "12")
    assert run.locator("[data-chart=flow] svg .marker").count() == 1  # the NaN layer
    assert page.locator("#compare-chart svg path.series").count() == 3  # one per run
    assert run.locator(".graph svg g.node").count() > 5


def test_hover_shows_layer_name_and_value(browser_page):
    page = browser_page.page
    overlay = page.locator("#run-1 [data-chart=flow] svg rect.overlay")
    overlay.scroll_into_view_if_needed()
    box = overlay.bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + box["height"] / 2)  # the first layer
    tip = page.locator("#gs-tip")
    assert tip.is_visible()
    assert "inp" in tip.text_content() and "grad_rms:" in tip.text_content()
    heat = page.locator("#run-1 [data-chart=heatmap] canvas")
    heat.scroll_into_view_if_needed()
    hb = heat.bounding_box()
    page.mouse.move(hb["x"] + hb["width"] / 2, hb["y"] + 12)
    assert "step" in tip.text_content()


def test_picking_an_activation_statistic_redraws(browser_page):
    page = browser_page.page
    page.select_option("#run-1 select.stat", "module:act_rms")
    flow = page.locator("#run-1 [data-chart=flow]")
    assert flow.locator(".title").text_content().startswith("act_rms by module")
    assert flow.locator("svg").get_attribute("data-series") == "6"
    # module rows take their layer's role: inp (weighted) and head by default, not blocks (other)
    assert page.locator("#run-1 [data-chart=heatmap] canvas").get_attribute("data-rows") == "2"
    page.select_option("#run-1 select.role", "all")
    assert page.locator("#run-1 [data-chart=heatmap] canvas").get_attribute("data-rows") == "3"
    page.select_option("#run-1 select.role", "default")
    page.select_option("#run-1 select.stat", "layer:grad_rms")


def test_update_ratio_lines_are_drawn_through_a_sparse_series(browser_page):
    """residual4 has update ratios at steps 0, 4, 8 only: one line of 3 points per layer."""
    paths = browser_page.page.locator("#run-2 [data-chart=update] svg path.series")
    assert paths.count() == 4
    for i in range(4):
        d = paths.nth(i).get_attribute("d")
        assert d.count("M") == 1 and d.count("L") == 2, d


def test_the_role_filter_redraws_every_layer_chart(browser_page):
    page = browser_page.page
    run = page.locator("#run-1")
    page.select_option("#run-1 select.role", "head")
    assert run.locator("[data-chart=heatmap] canvas").get_attribute("data-rows") == "1"
    assert run.locator("[data-chart=update] svg path.series").count() == 1
    assert "(head, forward order)" in run.locator("[data-chart=flow] .title").text_content()
    page.select_option("#run-1 select.role", "weighted")
    assert run.locator("[data-chart=heatmap] canvas").get_attribute("data-rows") == "3"
    page.select_option("#run-1 select.role", "default")
    assert run.locator("[data-chart=heatmap] canvas").get_attribute("data-rows") == "4"
    page.select_option("#compare-role", "head")
    assert page.locator("#compare-chart svg path.series").count() == 3
    page.select_option("#compare-role", "default")
    assert browser_page.console_errors == []


def test_screenshot_is_not_blank(browser_page):
    from PIL import Image, ImageStat

    page = browser_page.page
    page.locator("#run-1 [data-chart=heatmap]").scroll_into_view_if_needed()
    shot = Image.open(io.BytesIO(page.screenshot())).convert("L")
    assert ImageStat.Stat(shot).stddev[0] > 20
    heat = Image.open(io.BytesIO(page.locator("#run-1 [data-chart=heatmap] canvas").screenshot())).convert("RGB")
    assert len(heat.getcolors(maxcolors=100_000)) > 20  # a real colour map, not one flat colour


@pytest.fixture(scope="module")
def bertish_page(browser_page, bertish_report: Path):
    """The report of a run with long names and activation statistics, in a second tab."""
    page = browser_page.page.context.new_page()
    url = bertish_report.resolve().as_uri()
    opened = Page(page, url)
    page.goto(url)
    page.wait_for_selector("body[data-rendered=true]", state="attached", timeout=30_000)
    yield opened
    page.close()


def _axis_labels(page, chart: str) -> list[tuple[str, str]]:
    """``(shown text, title)`` of a chart's x tick labels."""
    return page.locator(f"#run-0 [data-chart={chart}] svg text.xtick").evaluate_all(
        "els => els.map(e => [e.firstChild.nodeValue, e.querySelector('title').textContent])")


def test_x_labels_are_whole_trailing_parts_with_the_full_name_on_hover(bertish_page):
    """Labels used to be the last 25 characters of a name (``…er.0.attention.output.dense``)."""
    labels = _axis_labels(bertish_page.page, "flow")
    full = [f"bert.encoder.layer.{i}.{part}" for i in range(3) for part in ("attention.output.dense", "output.dense")]
    assert [title for _, title in labels] == full + ["bert.pooler.dense"]  # weighted + head by default
    for shown, title in labels:
        assert title.endswith("." + shown.removeprefix("…")) and not shown.startswith("bert.")
    assert [shown for shown, _ in labels][:2] == ["…0.attention.output.dense", "encoder.layer.0.output.dense"]
    assert bertish_page.console_errors == []


def test_the_role_selector_filters_module_statistics(bertish_page):
    page = bertish_page.page
    run = page.locator("#run-0")
    page.select_option("#run-0 select.stat", "module:act_rms")
    rows = {}
    for role in ("default", "norm", "all"):
        page.select_option("#run-0 select.role", role)
        rows[role] = int(run.locator("[data-chart=heatmap] canvas").get_attribute("data-rows"))
    assert rows == {"default": 7, "norm": 3, "all": 10}  # 6 linear + the head, 3 LayerNorms, all 10 modules
    page.select_option("#run-0 select.role", "default")
    assert "(weighted + head, forward order)" in run.locator("[data-chart=flow] .title").text_content()
    page.select_option("#run-0 select.stat", "layer:grad_rms")


def test_a_log_axis_within_one_decade_has_two_labelled_ticks(bertish_page, bertish_report):
    """act_rms of the weighted modules lies within one decade (0.3 to 0.9 here): the flow
    chart's y axis and the heatmap's colour bar each label two ticks or more."""
    page = bertish_page.page
    page.select_option("#run-0 select.stat", "module:act_rms")
    ticks = page.locator("#run-0 [data-chart=flow] svg text.ytick").all_text_contents()
    bar = page.locator("#run-0 [data-chart=heatmap] canvas").get_attribute("data-colorbar-ticks").split()
    page.select_option("#run-0 select.stat", "layer:grad_rms")
    for labels in (ticks, bar):
        values = [float(v) for v in labels]
        assert len(values) >= 2 and len(set(labels)) == len(labels)
        assert max(values) / min(values) < 10


@contextlib.contextmanager
def _own_page(browser_page, html: Path):
    """A report opened in a page of its own in the module's browser (a second Playwright in this
    thread is refused), drawn, and closed after."""
    page = browser_page.page.context.new_page()
    try:
        page.goto(html.resolve().as_uri())
        page.wait_for_selector("body[data-rendered=true]", state="attached", timeout=30_000)
        yield page
    finally:
        page.close()


def test_update_ratio_lines_join_each_layers_own_steps_under_rotating_snapshots(browser_page, tmp_path, monkeypatch):
    """Three layers measured in turn (one chunk of the snapshot per step): each layer's line
    joins its own 3 of the 9 steps, with no gap and no non-finite marker at the others'."""
    import torch

    import gradsight as gs
    from gradsight.instrument import update_ratio as ur
    from gradsight.report import write_report

    monkeypatch.setattr(ur, "SNAPSHOT_FLOOR_BYTES", 0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "runs" / "rotating", optimizer=opt, update_ratio=True) as mon:
        for _ in range(9):
            model(torch.randn(4, 8)).pow(2).mean().backward()
            mon.step()
            opt.step()
            opt.zero_grad()
    html = write_report([tmp_path / "runs" / "rotating"], tmp_path / "report.html")
    with _own_page(browser_page, html) as page:
        paths = page.locator("[data-chart=update] svg path.series")
        assert paths.count() == 3
        for i in range(3):
            d = paths.nth(i).get_attribute("d")
            assert d.count("M") == 1 and d.count("L") == 2, d


@pytest.fixture(scope="module")
def notebook_page(browser_page, report_runs: Path, tmp_path_factory: pytest.TempPathFactory):
    """What a notebook shows of the compare runs (a run of HTML-named modules among them):
    the card of that run, then ``gs.show`` of them all, as the notebook puts them in its page."""
    import gradsight as gs

    with gs.open_run(report_runs / "hostile") as run:
        card = run._repr_html_()
    path = tmp_path_factory.mktemp("notebook") / "notebook.html"
    path.write_text(f"<!DOCTYPE html><html><body><div id='card'>{card}</div>"
                    f"<div id='report'>{gs.show(report_runs)._repr_html_()}</div></body></html>")
    page = browser_page.page.context.new_page()
    url = path.resolve().as_uri()
    opened = Page(page, url)
    page.goto(url)
    frame = page.frame_locator("#report iframe")
    frame.locator("body[data-rendered=true]").wait_for(state="attached", timeout=30_000)
    yield opened, frame
    page.close()


def test_the_report_runs_sandboxed_inside_a_notebook(notebook_page):
    opened, frame = notebook_page
    assert opened.dialogs == [] and opened.console_errors == []
    assert [r for r in opened.requests if r not in (opened.url, "about:srcdoc")] == []
    assert frame.locator("section.run").count() == 3  # the report's scripts ran: its charts are drawn
    assert frame.locator("#run-1 [data-chart=flow] svg path.series").count() == 6
    # scripts only: the frame cannot reach the notebook's page
    reach = frame.locator("body").evaluate("() => { try { return parent.document.title; } catch (e) { return 'blocked'; } }")
    assert reach == "blocked"
    card = opened.page.locator("#card")
    assert card.locator("svg").count() == 2 and "<script>alert(1)</script>" in card.text_content()


def test_a_page_of_many_runs_draws_the_charts_near_the_view(browser_page, tmp_path):
    """Past 6 runs a chart is drawn when it comes near the view: the first run's at once, the
    last run's once scrolled to; its selectors redraw it as on any page."""
    from gradsight.report import write_report
    from tests.plots.runs import make_run

    for i in range(8):
        make_run(tmp_path / "runs" / f"r{i}", depth=1, steps=3, seed=i)
    out = write_report([tmp_path / "runs"], tmp_path / "report.html")
    page = browser_page.page.context.new_page()  # the module's browser (one Playwright per thread)
    try:
        opened = Page(page, out.resolve().as_uri())
        page.goto(opened.url)
        page.wait_for_selector("body[data-rendered=true]", state="attached", timeout=30_000)
        assert page.locator("#run-0 [data-chart=flow] svg").count() == 1
        last = page.locator("#run-7")
        assert last.locator("[data-chart=heatmap] canvas").count() == 0  # far below: not drawn yet
        last.locator("[data-chart=heatmap]").scroll_into_view_if_needed()
        last.locator("[data-chart=heatmap] canvas").wait_for(state="attached", timeout=10_000)
        assert last.locator("[data-chart=heatmap] canvas").get_attribute("data-cols") == "3"
        page.select_option("#run-7 select.stat", "layer:grad_norm")
        title = page.locator("#run-7 [data-chart=flow] .title")
        for _ in range(50):
            if title.text_content().startswith("grad_norm"):
                break
            page.wait_for_timeout(100)
        assert title.text_content().startswith("grad_norm by layer")
        assert opened.console_errors == [] and opened.dialogs == []
    finally:
        page.close()


def test_a_share_is_drawn_from_0_to_1_with_its_zeros(browser_page, tmp_path):
    """``act_saturated`` (a share): a linear colour bar from 0 to 1, and a layer with no unit
    saturated drawn in the scale's low colour, not in the grey of a missing cell."""
    import torch

    import gradsight as gs
    from gradsight.display import MISSING_COLOR, lut
    from gradsight.report import write_report

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight.mul_(30)  # the first tanh saturates, the second does not
    with gs.watch(model, tmp_path / "runs" / "tanh", activations=True) as mon:
        for _ in range(4):
            model(torch.randn(16, 8)).sum().backward()
            mon.step()
    html = write_report([tmp_path / "runs" / "tanh"], tmp_path / "report.html")
    with _own_page(browser_page, html) as page:
        page.select_option("#run-0 select.stat", "module:act_saturated")
        canvas = page.locator("#run-0 [data-chart=heatmap] canvas")
        assert canvas.get_attribute("data-colorbar-ticks").split() == ["0", "0.25", "0.5", "0.75", "1"]
        assert int(canvas.get_attribute("data-rows")) == 3  # layers '0', '2' and the head '4' (no tanh after it)

        def colour(row: int) -> str:  # at the middle of a row, in the middle step
            rgb = canvas.evaluate("""(cv, row) => {
                const box = cv.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
                const x = Math.round((170 + (box.width - 170 - 86) / 2) * dpr);
                const y = Math.round((8 + (row + 0.5) * (cv.height / dpr - 48) / 3) * dpr);
                return Array.from(cv.getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3)); }""", row)
            return "#" + "".join(f"{c:02x}" for c in rgb)

        ticks = [float(t) for t in page.locator("#run-0 [data-chart=flow] svg text.ytick").all_text_contents()]
        assert min(ticks) <= 0 < max(ticks) < 10  # the flow chart: a linear axis that holds the zeros
        assert colour(1) == lut()[0]  # layer '2': 0, the scale's low end
        assert colour(2) == MISSING_COLOR  # the head: nothing recorded
        assert colour(0) not in (lut()[0], MISSING_COLOR)  # layer '0': saturated

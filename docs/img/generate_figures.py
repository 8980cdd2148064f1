"""Regenerate the example images of docs/figures.md.

    python docs/img/generate_figures.py            # trains four small MLPs (about a minute on a CPU)

Plain and residual sigmoid MLPs of 10 and 30 linear layers are trained for 150 SGD
steps on a synthetic task, recorded with gs.watch, and every figure is drawn from
those runs. A NaN is planted in one gradient of the 30-layer plain network at step
90 so the non-finite markers have something to show. The report screenshot needs
Playwright and /usr/bin/chromium and is skipped without them.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import gradsight as gs
from gradsight.models.lecture import LectureSimpleResNet
from gradsight import plots
from gradsight.models import create_model

HERE = Path(__file__).resolve().parent


def train_runs(root: Path, steps: int = 150) -> dict[str, Path]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 32, generator=g)
    y = (x @ torch.randn(32, 4, generator=g)).argmax(1)
    runs = {}
    for family, factory in (("plain", "mlp"), ("residual", "resmlp")):
        for depth in (10, 30):
            torch.manual_seed(0)
            model = create_model(factory, depth=depth, width=48, in_features=32, num_classes=4,
                                 activation="sigmoid", init="xavier")
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            name = f"{family}{depth}"
            with gs.watch(model, root / name, optimizer=opt, name=name, overwrite=True, update_ratio=True,
                          config={"family": family, "depth": depth}) as mon:
                for step in range(steps):
                    idx = torch.randint(0, len(x), (64,), generator=g)
                    loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                    loss.backward()
                    nan_step = name == "plain30" and step == 90
                    if nan_step:
                        model.body.block3.branch.fc1.weight.grad[0, 0] = float("nan")
                    mon.step(loss)
                    if not nan_step:
                        opt.step()
                    opt.zero_grad()
            runs[name] = root / name
            print("recorded", name)
    return runs


def save(fig, name: str) -> None:
    fig.savefig(HERE / name, dpi=110, bbox_inches="tight", metadata={"Software": None})
    print("wrote", HERE / name)


def screenshot(html: Path, out: Path) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("playwright is not installed: no report screenshot")
        return
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        print("chromium is not installed: no report screenshot")
        return
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"]
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=chromium, args=args, headless=True,
                                                    viewport={"width": 1200, "height": 1400})
        page = ctx.new_page()
        page.goto(html.resolve().as_uri())
        page.wait_for_selector("body[data-rendered=true]", state="attached")
        page.evaluate("document.querySelector('#run-1 .controls').scrollIntoView()")
        page.screenshot(path=str(out))
        ctx.close()
    print("wrote", out)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        runs = train_runs(Path(tmp))
        plain = gs.open_run(runs["plain30"])
        save(plots.flow(plain, n_steps=4), "flow.png")
        save(plots.heatmap(plain), "heatmap.png")
        save(plots.quantile_bands(plain), "bands.png")
        save(plots.update_ratio(plain), "update_ratio.png")
        save(plots.nonfinite(plain), "nonfinite.png")
        save(plots.depth_overlay(list(runs.values())), "compare.png")
        save(plots.depth_sweep(list(runs.values())), "depth_sweep.png")
        if shutil.which("dot"):
            lecture = gs.graph(LectureSimpleResNet(), torch.randn(1, 1, 28, 28))
            lecture.render(HERE / "graph_lecture.png")
            lecture.module_view().render(HERE / "graph_lecture_modules.png")
            resnet = gs.graph(create_model("resnet20"), torch.randn(2, 3, 32, 32), view="module", max_nesting=2)
            resnet.render(HERE / "graph_resnet20_blocks.png")
            print("wrote graphs")
        from gradsight.report import write_report

        html = write_report(list(runs.values()), Path(tmp) / "report.html")
        screenshot(html, HERE / "report.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

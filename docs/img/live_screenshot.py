"""Regenerate docs/img/live.png: ``gradsight serve`` showing a ResNet-20 training on mnist5k.

A child process trains the zoo's ResNet-20 (SGD, batch 64) under ``gs.watch`` for a few dozen
steps; the live server follows its folder and Debian's chromium (Playwright) takes the page
while the run records::

    python docs/img/live_screenshot.py            # needs playwright and /usr/bin/chromium
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
STEPS = 80  # recorded in all; the picture is taken after SHOT_AT of them, the run still recording
SHOT_AT = 40
MAX_BYTES = 300_000

TRAIN = r"""
import sys, torch
import gradsight as gs
from gradsight.data import load_dataset
from gradsight.models import create_model

torch.manual_seed(0)
data = load_dataset("mnist5k")
model = create_model("resnet20", in_channels=1)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
with gs.watch(model, sys.argv[1], name="resnet20-mnist5k", optimizer=opt) as mon:
    for step in range(int(sys.argv[2])):
        i = torch.randint(0, len(data.train_y), (64,))
        loss = torch.nn.functional.cross_entropy(model(data.train_x[i]), data.train_y[i])
        loss.backward()
        mon.step(loss)
        opt.step()
        opt.zero_grad()
"""


def main() -> int:
    from playwright.sync_api import sync_playwright

    from gradsight.report.server import LiveServer
    from gradsight.store.reader import open_run

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"]
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the page names the folder as given: "runs"
        env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, "-c", TRAIN, "runs/resnet20", str(STEPS)], env=env)
        try:
            while not (Path("runs/resnet20/gradsight.sqlite").exists()):
                time.sleep(0.5)
            server = LiveServer("runs", "127.0.0.1", 0, doctor_interval=1.0)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            with open_run("runs/resnet20") as run:
                while (run.last_step() or 0) < SHOT_AT // 2 and proc.poll() is None:
                    time.sleep(0.5)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, args=args, headless=True)
                page = browser.new_page(viewport={"width": 1200, "height": 1400})
                page.goto(server.url)
                page.wait_for_selector("body[data-rendered=true]", state="attached")
                while int(page.locator("#run-0").get_attribute("data-last-step") or -1) < SHOT_AT:
                    if proc.poll() is not None:
                        break
                    page.wait_for_timeout(300)  # the page follows the run
                page.wait_for_timeout(500)
                png = page.screenshot()
                browser.close()
            server.shutdown()
            server.server_close()
        finally:
            proc.kill()
            proc.wait()
    out = HERE / "live.png"
    if len(png) > MAX_BYTES:  # a palette image: the page is flat colours
        from PIL import Image

        buf = io.BytesIO()
        Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128).save(buf, format="PNG", optimize=True)
        png = buf.getvalue()
    out.write_bytes(png)
    print(f"wrote {out} ({len(png):,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

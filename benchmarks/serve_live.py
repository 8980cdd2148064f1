"""What ``gradsight serve`` costs and how soon a step shows: a measurement, not a test.

Three numbers:

1. **latency**: a child process trains a ``--layers``-layer MLP recording every step
   (the writer commits about once a second) while the page is open in chromium
   (Playwright, Debian's /usr/bin/chromium); each recorded step's wall time (the
   store's ``steps.time``) is compared with the moment the page has drawn it (its
   section's ``data-last-step`` reaches the step, set after the redraw). p50 / p95 over
   every step drawn.
2. **poll cost**: answers of the server (in this process, over HTTP) to a poll with
   nothing new and to a poll with one new step of the same run: median ms and bytes.
3. **training cost**: the child's median step time with and without the page polling,
   in interleaved rounds; the median of the rounds' ratios.

    python benchmarks/serve_live.py                 # 100 layers
    python benchmarks/serve_live.py --layers 20 --rounds 2
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHILD = r"""
import json, sys, time, torch
from torch import nn
import gradsight as gs
torch.manual_seed(0)
torch.set_num_threads(1)
layers, seconds, pause = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
model = nn.Sequential(*[m for _ in range(layers - 1) for m in (nn.Linear(64, 64), nn.Tanh())], nn.Linear(64, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
times = []
with gs.watch(model, sys.argv[1], optimizer=opt) as mon:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
        if pause:
            time.sleep(pause)
print(json.dumps(times))
"""

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


def start_child(run_dir: Path, layers: int, seconds: float, pause: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), str(layers), str(seconds), str(pause)],
                            env=env, stdout=subprocess.PIPE, text=True)


def serve(root: Path):
    from gradsight.report.server import LiveServer

    server = LiveServer(root, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def get(port: int, path: str) -> tuple[float, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    t0 = time.perf_counter()
    conn.request("GET", path)
    body = conn.getresponse().read()
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed * 1e3, len(body)


def step_times(run_dir: Path) -> dict[int, float]:
    conn = sqlite3.connect((run_dir / "gradsight.sqlite").resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return {int(s): float(t) for s, t in conn.execute("SELECT step, time FROM steps")}
    finally:
        conn.close()


def latency(root: Path, layers: int, seconds: float, browser) -> list[float]:
    run_dir = root / "latency"
    root.mkdir(parents=True, exist_ok=True)
    child = start_child(run_dir, layers, seconds, pause=0.1)
    server = serve(root)
    try:
        while not (run_dir / "gradsight.sqlite").exists() or server.served.refresh(force=True) == []:
            time.sleep(0.1)
        time.sleep(2.0)
        page = browser.new_page()
        page.goto(server.url)
        page.wait_for_selector("body[data-rendered=true]", state="attached", timeout=60_000)
        seen: dict[int, float] = {}
        last = -1
        while child.poll() is None:
            value = page.locator("#run-0").get_attribute("data-last-step")
            now = time.time()
            if value and int(value) > last:
                for step in range(last + 1, int(value) + 1):
                    seen[step] = now
                last = int(value)
            time.sleep(0.02)
        page.close()
        child.communicate()
        times = step_times(run_dir)
        first = min(seen)  # steps drawn with the page's opening are not a latency
        return [seen[s] - times[s] for s in sorted(seen) if s in times and s > first]
    finally:
        server.shutdown()
        server.server_close()


def poll_costs(root: Path, layers: int) -> dict[str, float]:
    run_dir = root / "poll"
    child = start_child(run_dir, layers, 4.0, pause=0.0)
    child.communicate()
    server = serve(root)
    try:
        port = server.server_address[1]
        last = max(step_times(run_dir))
        key = "poll"
        get(port, f"/api/poll?run={key}&since={last}&f=-1")
        fver = server.served.get(key).findings_version
        empty = [get(port, f"/api/poll?run={key}&since={last}&f={fver}") for _ in range(200)]
        one = [get(port, f"/api/poll?run={key}&since={last - 1}&f={fver}") for _ in range(50)]
        return {"empty_ms": statistics.median(e[0] for e in empty), "empty_bytes": empty[0][1],
                "one_step_ms": statistics.median(o[0] for o in one), "one_step_bytes": one[0][1]}
    finally:
        server.shutdown()
        server.server_close()


def training_cost(root: Path, layers: int, rounds: int, seconds: float, browser) -> list[tuple[float, float]]:
    out = []
    for r in range(rounds):
        medians = {}
        for polled in (False, True) if r % 2 == 0 else (True, False):
            run_dir = root / f"train{r}{int(polled)}"
            child = start_child(run_dir, layers, seconds, pause=0.0)
            server = page = None
            if polled:
                while not (run_dir / "gradsight.sqlite").exists():
                    time.sleep(0.05)
                time.sleep(0.5)
                server = serve(run_dir)
                page = browser.new_page()
                page.goto(server.url)
            times = json.loads(child.communicate()[0])
            if page is not None:
                page.close()
                server.shutdown()
                server.server_close()
            medians[polled] = statistics.median(times[5:])
        out.append((medians[False], medians[True]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0, help="training time of the latency run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-seconds", type=float, default=10.0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        root = Path(tmp)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        costs = poll_costs(root / "costs", args.layers)
        print(f"poll, nothing new: {costs['empty_ms']:.2f} ms, {costs['empty_bytes']} bytes; "
              f"one new step of {args.layers} layers: {costs['one_step_ms']:.2f} ms, {costs['one_step_bytes']} bytes")
        lat = sorted(latency(root / "lat", args.layers, args.seconds, browser))
        p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
        print(f"step recorded -> drawn: {len(lat)} steps, p50 {statistics.median(lat):.2f} s, p95 {p95:.2f} s, "
              f"max {lat[-1]:.2f} s")
        rounds = training_cost(root / "train", args.layers, args.rounds, args.round_seconds, browser)
        for without, with_page in rounds:
            print(f"training step: {without * 1e3:.2f} ms without a page, {with_page * 1e3:.2f} ms with one polling "
                  f"({with_page / without:.3f}x)")
        print(f"median ratio: {statistics.median(w / wo for wo, w in rounds):.3f}")
        browser.close()


if __name__ == "__main__":
    main()

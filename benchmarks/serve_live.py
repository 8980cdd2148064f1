"""What ``gradsight serve`` costs and how soon a step shows: a measurement, not a test.

Four measurements:

1. **latency**: a child process trains a ``--layers``-layer MLP recording every step
   (the writer commits about once a second) while the page is open in chromium
   (Playwright, Debian's /usr/bin/chromium); each recorded step's wall time (the
   store's ``steps.time``) is compared with the moment the page has drawn it (its
   section's ``data-last-step`` reaches the step, set after the redraw). p50 / p95 over
   every step recorded after the page was open; and what the page's script spent on each
   update (``data-draw-ms``: appending the new steps and redrawing the run's charts).
2. **poll cost**: answers of the server (in this process, over HTTP) to a poll with
   nothing new and to a poll with one new step of the same run: median ms and bytes.
3. **training cost**: the child's median step time with and without the page polling,
   in interleaved rounds (the first ``--settle`` seconds of each, while the page opens,
   left out); the median of the rounds' ratios.
4. **scale**: a folder of 50 runs, one of 1,000 layers x 100,000 steps (written through the
   store's writer), served: how long the page takes to open and draw in chromium, and how
   responsive it stays (a poll of every run, another statistic chosen in the big run).

    python benchmarks/serve_live.py                 # 100 layers
    python benchmarks/serve_live.py --layers 20 --rounds 2
    python benchmarks/serve_live.py --only scale --scale-root /tmp/scale   # keep the 50 runs
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

import numpy as np

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
        times.append((time.time(), time.perf_counter() - t0))
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


def latency(root: Path, layers: int, seconds: float, browser) -> tuple[list[float], list[float]]:
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
        opened = time.time()
        seen: dict[int, float] = {}
        draw_ms: list[float] = []
        last = -1
        section = page.locator("#run-0")
        while child.poll() is None:
            value = section.get_attribute("data-last-step")
            now = time.time()
            if value and int(value) > last:
                for step in range(last + 1, int(value) + 1):
                    seen[step] = now
                last = int(value)
                drawn = section.get_attribute("data-draw-ms")
                if drawn:
                    draw_ms.append(float(drawn))
            time.sleep(0.02)
        page.close()
        child.communicate()
        times = step_times(run_dir)
        # steps recorded before the page was open (drawn with its opening, or with its first poll) are not a latency
        return [seen[s] - times[s] for s in sorted(seen) if s in times and times[s] >= opened], draw_ms
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


def training_cost(root: Path, layers: int, rounds: int, seconds: float, settle: float,
                  browser) -> list[tuple[float, float]]:
    """Per round, the median step time of a child training without and with a page open
    (interleaved: the order alternates), over the steps ending ``settle`` seconds after its
    store appeared and later: the page's opening (the server building it, the browser drawing
    it the first time) is done by then, and what is measured is its polling."""
    out = []
    for r in range(rounds):
        medians = {}
        for polled in (False, True) if r % 2 == 0 else (True, False):
            run_dir = root / f"train{r}{int(polled)}"
            child = start_child(run_dir, layers, seconds, pause=0.0)
            server = page = None
            while not (run_dir / "gradsight.sqlite").exists():
                time.sleep(0.05)
            start = time.time()
            if polled:
                time.sleep(0.5)
                server = serve(run_dir)
                page = browser.new_page()
                page.goto(server.url)
                page.wait_for_selector("body[data-rendered=true]", state="attached", timeout=60_000)
                if time.time() - start > settle:
                    print(f"  (round {r}: the page took {time.time() - start:.1f} s to open, more than --settle)")
            times = json.loads(child.communicate()[0])
            if page is not None:
                page.close()
                server.shutdown()
                server.server_close()
            medians[polled] = statistics.median(dt for end, dt in times if end >= start + settle)
        out.append((medians[False], medians[True]))
    return out


def synthetic_run(run_dir: Path, layers: int, steps: int, seed: int = 0) -> None:
    """A finished run of ``layers`` layers x ``steps`` steps (layer ``grad_norm`` and
    ``grad_rms``, model ``grad_norm``, metric ``loss``) written through the store's writer
    in bulk: a few distinct steps' values written again and again (about 2 million values/s)."""
    from gradsight.store.schema import Level, RowKind
    from gradsight.store.writer import StoreWriter

    rng = np.random.default_rng(seed)
    names = [f"blocks.{i // 2}.fc{i % 2 + 1}" for i in range(layers)]
    stats = ("grad_norm", "grad_rms")
    writer = StoreWriter(run_dir, max_queue_bytes=1 << 34)  # nothing dropped: the writer's own pace
    now = time.time()
    writer.set_meta(name=run_dir.name, status="running", model_class="synthetic.DeepMLP", start_time=now - steps)
    writer.write_params([(f"{n}.weight", n, "[64, 64]", 4096, "float32", 1, "[]", i) for i, n in enumerate(names)])
    writer.write_layers([(n, d, "Linear", RowKind.LAYER) for d, n in enumerate(names)])
    series = [(1 + k * layers + i, Level.LAYER, n, st) for k, st in enumerate(stats) for i, n in enumerate(names)]
    series += [(len(series) + 1, Level.MODEL, "", "grad_norm"), (len(series) + 2, Level.METRIC, "loss", "loss")]
    writer.add_series(series)
    ids = np.array([s[0] for s in series], dtype=np.int64)
    scale = np.exp(rng.normal(-3.0, 1.5, layers))
    pool = [np.concatenate([scale * np.exp(rng.normal(0, 0.1, layers)), 0.01 * scale * np.exp(rng.normal(0, 0.1, layers)),
                            np.exp(rng.normal(0, 0.3, 2))]).astype(np.float32).astype(np.float64) for _ in range(16)]
    for step in range(steps):
        writer.write_scalars(step, ids, pool[step % len(pool)], now - steps + step)
    writer.close(status="finished")


def scale(root: Path, browser, runs: int, layers: int, steps: int) -> dict[str, float]:
    """A folder of ``runs`` runs, one of ``layers`` x ``steps`` (the others 20 x 1,000), served:
    the seconds from asking for the page to its first charts drawn in chromium, the page's bytes,
    every run listed, the big run's charts drawn (scrolled to at once; again in a second tab, its
    section kept by the server), and then how responsive it stays: a poll of every run with
    nothing new, and the redraw after choosing another statistic (a selector's change) in the
    big run's section."""
    if not (root / "big" / "gradsight.sqlite").exists():
        t0 = time.perf_counter()
        synthetic_run(root / "big", layers, steps)
        for i in range(runs - 1):
            synthetic_run(root / f"run{i:02d}", 20, 1000, seed=i + 1)
        print(f"built {runs} runs under {root} in {time.perf_counter() - t0:.0f} s")
    server = serve(root)
    try:
        built = get(server.server_address[1], "/")[0] / 1e3  # the server making the page alone
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        t0 = time.perf_counter()
        page.goto(server.url, timeout=300_000)
        page.wait_for_selector("body[data-rendered=true]", state="attached", timeout=300_000)
        opened = time.perf_counter() - t0
        listed = page.locator("section.run").count()  # every run listed (a heading at least)
        big_at = f"#run-{server.served.shown.index('big')}"
        page.locator(big_at).scroll_into_view_if_needed()
        page.wait_for_selector(f"{big_at} [data-chart=heatmap] canvas", state="attached", timeout=300_000)
        big_drawn = time.perf_counter() - t0
        size = len(page.content())
        port = server.server_address[1]
        keys = server.served.shown
        section = get(port, "/api/section?run=big")  # kept: made when the page asked for it
        reload_ = browser.new_page(viewport={"width": 1280, "height": 900})
        t2 = time.perf_counter()
        reload_.goto(server.url, timeout=300_000)
        reload_.locator(big_at).scroll_into_view_if_needed()
        reload_.wait_for_selector(f"{big_at} [data-chart=heatmap] canvas", state="attached", timeout=300_000)
        second = time.perf_counter() - t2
        reload_.close()
        query = "&".join(f"run={k}&since={server.served.get(k).open().last_step()}&f=-1" for k in keys)
        get(port, "/api/poll?" + query)
        fvers = {k: server.served.get(k).findings_version for k in keys}
        query = "&".join(f"run={k}&since={server.served.get(k).open().last_step()}&f={fvers[k]}" for k in keys)
        polls = [get(port, "/api/poll?" + query)[0] for _ in range(20)]
        big = page.locator(f"#run-{keys.index('big')}")
        big.scroll_into_view_if_needed()
        choose = []
        for value in ("layer:grad_norm", "layer:grad_rms") * 3:
            t1 = time.perf_counter()
            big.locator("select.stat").select_option(value)  # returns once the change handler has run
            choose.append(time.perf_counter() - t1)
        page.close()
        return {"open_s": opened, "page_s": built, "page_mb": size / 1e6, "poll_ms": statistics.median(polls),
                "choose_s": statistics.median(choose), "listed": listed, "big_s": big_drawn, "second_s": second,
                "section_ms": section[0], "section_mb": section[1] / 1e6}
    finally:
        server.shutdown()
        server.server_close()


PARTS = ("poll", "latency", "training", "scale")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0, help="training time of the latency run")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--round-seconds", type=float, default=25.0)
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds of each round left out of the training cost (the page opens in them)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"some of {', '.join(PARTS)}")
    parser.add_argument("--scale-runs", type=int, default=50)
    parser.add_argument("--scale-layers", type=int, default=1000)
    parser.add_argument("--scale-steps", type=int, default=100_000)
    parser.add_argument("--scale-root", type=Path, default=None,
                        help="folder of the scale runs, kept and used again (default: a temporary one; "
                             "writing them takes a few minutes)")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        root = Path(tmp)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        if "poll" in parts:
            costs = poll_costs(root / "costs", args.layers)
            print(f"poll, nothing new: {costs['empty_ms']:.2f} ms, {costs['empty_bytes']} bytes; one new step of "
                  f"{args.layers} layers: {costs['one_step_ms']:.2f} ms, {costs['one_step_bytes']} bytes")
        if "latency" in parts:
            lat, draw_ms = latency(root / "lat", args.layers, args.seconds, browser)
            lat = sorted(lat)
            p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
            print(f"step recorded -> drawn: {len(lat)} steps, p50 {statistics.median(lat):.2f} s, p95 {p95:.2f} s, "
                  f"max {lat[-1]:.2f} s; the page's append and redraw: median {statistics.median(draw_ms):.0f} ms, "
                  f"max {max(draw_ms):.0f} ms over {len(draw_ms)} updates")
        if "training" in parts:
            rounds = training_cost(root / "train", args.layers, args.rounds, args.round_seconds, args.settle, browser)
            for without, with_page in rounds:
                print(f"training step: {without * 1e3:.2f} ms without a page, {with_page * 1e3:.2f} ms with one "
                      f"polling ({with_page / without:.3f}x)")
            print(f"median ratio: {statistics.median(w / wo for wo, w in rounds):.3f}")
        if "scale" in parts:
            at = scale(args.scale_root or root / "scale", browser, args.scale_runs, args.scale_layers, args.scale_steps)
            print(f"{args.scale_runs} runs, one of {args.scale_layers:,} layers x {args.scale_steps:,} steps: the page "
                  f"opens (drawn) in {at['open_s']:.1f} s (the server makes it in {at['page_s']:.1f} s; "
                  f"{at['page_mb']:.1f} MB); a poll of every run with nothing new {at['poll_ms']:.1f} ms; another "
                  f"statistic in the big run's section drawn in {at['choose_s']:.2f} s; {at['listed']} runs listed "
                  f"at once; the big run drawn {at['big_s']:.1f} s after asking for the page, {at['second_s']:.1f} s "
                  f"in a second tab; its section, kept, answers in {at['section_ms']:.0f} ms "
                  f"({at['section_mb']:.1f} MB)")
        browser.close()


if __name__ == "__main__":
    main()

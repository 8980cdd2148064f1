"""The run store at scale: bytes per value on disk, writer throughput, read times.

Four runs, each written, closed, measured and deleted in turn:

- ``small``: a real recording: ``gs.watch`` on a 20-layer MLP (64 wide) trained with SGD for
  300 steps, every step, parameter, layer and model statistics (what the recorder writes);
- ``wide``: 5,000 layers x 3 layer statistics (``grad_norm``, ``grad_rms``, ``grad_abs_max``)
  + model ``grad_norm`` + metric ``loss``, 400 steps, written through ``StoreWriter``;
- ``deep``: the same with 1,000 layers x 10,000 steps;
- ``long``: the same with 100 layers x 100,000 steps.

Synthetic values are float32 gradient-like numbers (log-normal over layers, drifting over
steps), as the recorder produces them. Printed per run: values written, bytes per value of
the closed store (file size / values; and of the tables holding the values alone, without
the run's metadata, where SQLite has ``dbstat``), writer values/s (first value queued to
``close()`` returned; ``small``: values over the whole recorded training loop), and read times: ``Run.series`` of one statistic of every layer over all steps and
over the last 10,000, ``layer_matrix`` with its default step sample, ``Run.frame`` of one
statistic. With ``tensorboard`` installed, the same values of the first steps (up to
``--tb-values``) are also written as TensorBoard event files (``SummaryWriter.add_scalar``,
one tag per series) for bytes per value and values/s side by side.

    python benchmarks/store_scale.py                  # every run
    python benchmarks/store_scale.py --runs wide,deep  # some of them
    python benchmarks/store_scale.py --check          # exit 1 unless the targets are met
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gradsight as gs
from gradsight.store.query import layer_matrix
from gradsight.store.schema import DB_NAME, Kind, Level
from gradsight.store.writer import StoreWriter

LAYER_STATS = ("grad_norm", "grad_rms", "grad_abs_max")
TARGET_BYTES_PER_VALUE = 4.0
TARGET_VALUES_PER_S = 2_000_000
TARGET_READ_S = 1.0  # one statistic of every layer over 10,000 steps


@dataclass
class Shape:
    layers: int
    steps: int


SHAPES = {"wide": Shape(5_000, 400), "deep": Shape(1_000, 10_000), "long": Shape(100, 100_000)}


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _step_values(rng: np.random.Generator, layers: int, pool: int = 32) -> list[np.ndarray]:
    """``pool`` float64 arrays of float32 values, one step's worth each (layer stats, then model, metric)."""
    scale = np.exp(rng.normal(-3.0, 1.5, layers))
    out = []
    for _ in range(pool):
        drift = np.exp(rng.normal(0.0, 0.1, (len(LAYER_STATS), layers)))
        layer_values = (scale * drift * np.array([1.0, 0.01, 0.05])[:, None]).T.reshape(-1)
        extra = np.exp(rng.normal(0.0, 0.3, 2))
        out.append(np.concatenate([layer_values, extra]).astype(np.float32).astype(np.float64))
    return out


def write_synthetic(run_dir: Path, shape: Shape, seed: int = 0) -> tuple[int, float, list[np.ndarray], np.ndarray]:
    """Write a synthetic run; return (values written, writer seconds, value pool, series ids)."""
    rng = np.random.default_rng(seed)
    names = [f"blocks.{i // 2}.fc{i % 2 + 1}" for i in range(shape.layers)]
    pool = _step_values(rng, shape.layers)
    # the whole run may wait in the queue (it holds the same few arrays): nothing is dropped,
    # and the writer's own speed is measured
    writer = StoreWriter(run_dir, max_queue_bytes=1 << 40)
    writer.set_meta(name=run_dir.name, status="running", model_class="synthetic.DeepMLP", start_time=time.time())
    writer.write_params([(f"{n}.weight", n, "[64, 64]", 4096, "float32", 1, "[]", i) for i, n in enumerate(names)])
    writer.write_layers([(n, d, "Linear", Kind.LAYER) for d, n in enumerate(names)])
    series = [(1 + i * len(LAYER_STATS) + k, Level.LAYER, n, st) for i, n in enumerate(names) for k, st in enumerate(LAYER_STATS)]
    series += [(len(series) + 1, Level.MODEL, "", "grad_norm"), (len(series) + 2, Level.METRIC, "loss", "loss")]
    writer.add_series(series)
    ids = np.array([s[0] for s in series], dtype=np.int64)
    writer.flush()
    t0 = time.perf_counter()
    now = time.time()
    for step in range(shape.steps):
        writer.write_scalars(step, ids, pool[step % len(pool)], now + step)
    writer.close()  # returns once everything queued is written (it waits while the writer makes progress)
    return shape.steps * len(ids), time.perf_counter() - t0, pool, ids


def write_small(run_dir: Path, layers: int = 20, steps: int = 300) -> tuple[int, float]:
    """Record a real training loop; return (values written, seconds of the recorded loop)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(64, 64), nn.ReLU())])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 64), torch.randn(32, 64)
    t0 = time.perf_counter()
    with gs.watch(model, run_dir, optimizer=opt) as monitor:
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            monitor.step(loss)
            opt.step()
    seconds = time.perf_counter() - t0
    with gs.open_run(run_dir) as run:
        values = len(run.frame())
    return values, seconds


def tensorboard_side(pool: list[np.ndarray], tags: list[str], steps: int, max_values: int, out: Path) -> str:
    """TensorBoard's bytes per value and values/s on the first steps of the same values."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as exc:  # tensorboard not installed
        return f"tensorboard: skipped ({type(exc).__name__}: {exc}; pip install tensorboard)"
    n_steps = max(1, min(steps, max_values // len(tags)))
    writer = SummaryWriter(str(out), max_queue=1000, flush_secs=1)
    t0 = time.perf_counter()
    for step in range(n_steps):
        for tag, value in zip(tags, pool[step % len(pool)].tolist()):
            writer.add_scalar(tag, value, step)
    writer.close()
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    n = n_steps * len(tags)
    return (f"tensorboard ({n_steps:,} steps, {n:,} values): {size / n:.1f} B/value, "
            f"{n / seconds:,.0f} values/s")


def value_table_bytes(run_dir: Path) -> int | None:
    """Bytes of the pages of the tables holding the values (and their indexes), from SQLite's
    ``dbstat`` (None where SQLite is built without it): the file less the run's metadata."""
    import sqlite3

    tables = ("packed", "series_groups", "scalars", "scalars_by_series", "sqlite_autoindex_packed_1")
    try:
        with sqlite3.connect((run_dir / DB_NAME).resolve().as_uri() + "?mode=ro", uri=True) as conn:
            rows = conn.execute(f"SELECT SUM(pgsize) FROM dbstat WHERE name IN ({','.join('?' * len(tables))})",
                                tables).fetchone()
        return int(rows[0]) if rows and rows[0] is not None else None
    except sqlite3.DatabaseError:
        return None


def read_times(run_dir: Path) -> dict[str, float]:
    out = {}
    with gs.open_run(run_dir) as run:
        steps = run.steps()
        out["series_all_steps_s"], wide = _timed(lambda: run.series("grad_norm"))
        assert wide.shape == (len(steps), len(run.layers())), wide.shape
        last = steps[-10_000:]
        out["series_10k_steps_s"], _ = _timed(lambda: run.series("grad_norm", steps=last))
        out["layer_matrix_s"], _ = _timed(lambda: layer_matrix(run, "grad_norm"))
        if len(steps) * len(run.layers()) <= 10_000_000:
            out["frame_one_stat_s"], _ = _timed(lambda: run.frame(level=Level.LAYER, stat="grad_norm"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="small,wide,deep,long")
    parser.add_argument("--tb-values", type=int, default=300_000, help="values written to TensorBoard per run")
    parser.add_argument("--no-tensorboard", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 unless the targets are met")
    args = parser.parse_args(argv)
    failures = []
    root = Path(tempfile.mkdtemp(prefix="gs_store_scale_"))
    try:
        for name in args.runs.split(","):
            run_dir = root / name
            tb_line = None
            if name == "small":
                values, seconds = write_small(run_dir)
                rate_label = "recorder + writer + training"
            else:
                shape = SHAPES[name]
                values, seconds, pool, ids = write_synthetic(run_dir, shape)
                rate_label = "writer"
                if not args.no_tensorboard:
                    tags = [f"layer/{st}/{i}" for i in range(shape.layers) for st in LAYER_STATS]
                    tags += ["model/grad_norm", "metric/loss"]
                    tb_line = tensorboard_side(pool, tags, shape.steps, args.tb_values, root / f"{name}_tb")
            size = (run_dir / DB_NAME).stat().st_size
            value_bytes = value_table_bytes(run_dir)
            with gs.open_run(run_dir) as run:
                version = run.meta.get("schema_version")
                if name != "small" and len(run.steps()) != SHAPES[name].steps:
                    raise SystemExit(f"{name}: {len(run.steps())} of {SHAPES[name].steps} steps were written")
            reads = read_times(run_dir)
            print(f"{name}: {values:,} values, schema_version {version}, {size / 1e6:,.1f} MB: "
                  f"{size / values:.2f} B/value"
                  + (f" (value tables alone {value_bytes / values:.2f})" if value_bytes else "")
                  + f"; {values / seconds:,.0f} values/s ({rate_label}, {seconds:.1f} s)")
            print("    read: " + ", ".join(f"{k} {v:.3f}" for k, v in reads.items()))
            if tb_line:
                print("    " + tb_line)
            sys.stdout.flush()
            if size / values > TARGET_BYTES_PER_VALUE:
                failures.append(f"{name}: {size / values:.2f} B/value > {TARGET_BYTES_PER_VALUE}")
            if name != "small" and values / seconds < TARGET_VALUES_PER_S:
                failures.append(f"{name}: {values / seconds:,.0f} values/s < {TARGET_VALUES_PER_S:,}")
            if name == "deep" and reads["series_10k_steps_s"] > TARGET_READ_S:
                failures.append(f"{name}: one statistic over 10,000 steps in {reads['series_10k_steps_s']:.2f} s")
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(root / f"{name}_tb", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for line in failures:
        print("target missed: " + line)
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())

"""How long the HTML report of a big run takes, and how big it gets.

Builds a synthetic run store of ``--layers`` layers x ``--steps`` recorded steps
(default 1,000 x 10,000: layer-level ``grad_norm``, ``update_ratio`` and
``grad_nonfinite``, model-level ``grad_norm`` and ``grad_nonfinite``, the metric
``loss``, and a few steps with non-finite gradients), then times
``gradsight.report.write_report`` on it. The store is written once through the
store's writer (``--store`` keeps it for the next run).

    python benchmarks/report_scale.py                 # 1,000 layers x 10,000 steps
    python benchmarks/report_scale.py --check         # exit 1 unless < 30 s and < 20 MB
    python benchmarks/report_scale.py --layers 50 --steps 500

The report must render in under 30 s into a file under 20 MB: long runs are
downsampled for display (evenly spaced steps), never in the store.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gradsight.store.schema import DB_NAME
from gradsight.store.writer import StoreWriter

LIMIT_S = 30.0
LIMIT_MB = 20.0


def build_store(run_dir: Path, layers: int, steps: int, seed: int = 0) -> Path:
    """Write a synthetic finished run to ``run_dir`` (through the store's writer) and return it."""
    rng = np.random.default_rng(seed)
    names = [f"blocks.{i // 2}.fc{i % 2 + 1}" for i in range(layers)]
    now = time.time()
    writer = StoreWriter(run_dir, overwrite=True)
    writer.set_meta(
        name=run_dir.name, status="running", start_time=now - 3600, model_class="synthetic.DeepMLP",
        torch_version="-", gradsight_version="-", config={"depth": layers}, schedule="every(1)", backend="eager",
        device="cpu", num_params=layers * 4160, num_trainable=layers * 4160, optimizer="SGD", amp=False,
        depth_source="forward", steps_recorded=steps, step_calls=steps,
    )
    writer.write_layers([(n, d, "Linear", "layer") for d, n in enumerate(names)])
    writer.write_params([(f"{n}.weight", n, "[64, 64]", 4096, "float32", 1, "[]", i) for i, n in enumerate(names)])
    layer_stats = ("grad_norm", "update_ratio", "grad_nonfinite")
    series, sid = [], 0
    for stat in layer_stats:
        for n in names:
            sid += 1
            series.append((sid, "layer", n, stat))
    model_ids = {}
    for stat in ("grad_norm", "grad_nonfinite"):
        sid += 1
        model_ids[stat] = sid
        series.append((sid, "model", "", stat))
    loss_id = sid + 1
    series.append((loss_id, "metric", "loss", "loss"))
    writer.add_series(series)
    ids = np.array([s[0] for s in series], dtype=np.int64)  # layer stats, model stats, loss

    depth = np.arange(layers)
    profile = 0.05 * np.exp(-3.0 * depth / layers)  # gradients shrink toward the input... read backwards
    profile = profile[::-1] * 10
    bad_steps = {steps // 3: 5, steps // 3 + 1: 5, (2 * steps) // 3: layers // 2}
    chunk = 200
    for start in range(0, steps, chunk):
        t = np.arange(start, min(steps, start + chunk))
        k = len(t)
        trend = (1.0 + 0.5 * np.sin(t / 500.0))[None, :]
        grad = profile[:, None] * trend * np.exp(rng.normal(0, 0.25, (layers, k)))
        upd = 1e-3 * np.exp(rng.normal(0, 0.4, (layers, k))) * (1 + depth[:, None] / layers)
        nonfinite = np.zeros((layers, k))
        for s, layer in bad_steps.items():
            if start <= s < start + k:
                grad[: layer + 1, s - start] = np.inf
                nonfinite[: layer + 1, s - start] = 3
        model_norm = np.sqrt((grad**2).sum(axis=0))
        loss = 2.3 * np.exp(-t / steps) + 0.05
        values = np.concatenate([grad, upd, nonfinite, model_norm[None], nonfinite.sum(axis=0)[None], loss[None]])
        for j, step in enumerate(t):  # rows of ``values`` in series-id order
            writer.write_scalars(int(step), ids, values[:, j], now - 3600 + float(step))
    writer.close(status="finished")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--store", type=Path, default=None,
                    help="Run directory for the synthetic store; reused when it exists (default: a temporary one).")
    ap.add_argument("--out", type=Path, default=None, help="Where to write the report (default: temporary).")
    ap.add_argument("--check", action="store_true", help=f"Exit 1 unless < {LIMIT_S:g} s and < {LIMIT_MB:g} MB.")
    args = ap.parse_args(argv)

    from gradsight.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / f"scale-{args.layers}x{args.steps}"
        if not (store / DB_NAME).exists():
            t0 = time.perf_counter()
            build_store(store, args.layers, args.steps)
            print(f"built {store} ({(store / DB_NAME).stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
        out = args.out or Path(tmp) / "report.html"
        t0 = time.perf_counter()
        write_report([store], out)
        elapsed = time.perf_counter() - t0
        size_mb = out.stat().st_size / 1e6
    ok = elapsed < LIMIT_S and size_mb < LIMIT_MB
    print(f"report of {args.layers} layers x {args.steps} steps: {elapsed:.1f} s, {size_mb:.1f} MB "
          f"(limits {LIMIT_S:g} s, {LIMIT_MB:g} MB): {'ok' if ok else 'TOO SLOW OR TOO BIG'}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())

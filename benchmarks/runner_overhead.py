"""Throughput of ``gradsight.train.train`` against a bare hand-written PyTorch loop.

Both train the same model (same seed, same weights) on the same in-memory data in the same
order with the same optimizer, and evaluate on the test set after every epoch:

* ``bare``: forward, cross-entropy, zero_grad, backward, Adam step; then a no-grad pass over
  the test set in eval mode. Nothing else.
* ``runner``: :func:`gradsight.train.train` as ``compare`` uses it: gradient statistics through
  the monitor (update ratios included), per-step LR schedule, training loss/accuracy kept on
  the device, per-epoch metrics into the store, and the progress bar (written to a buffer).
  Two recording schedules: ``every step`` (the worst case; what ``auto`` gives a run of at
  most 110 steps) and ``auto, 10 epochs`` (what ``auto`` gives the lecture's 10-epoch run:
  the first 10 steps, then every 7th).

Each round runs the three in a rotated order; the ratio reported is the median over rounds of
bare time / runner time within the round (paired, so a machine shared with other jobs drifts
less into it), for wall-clock time and for the process's CPU time (every thread, the store's
writer included). On a machine shared with other jobs the CPU-time ratio is the steadier one:
wall time there also counts the time other processes held the cores. Target (issue
"Training"): runner throughput >= 0.95 of the bare loop's.

    python benchmarks/runner_overhead.py                       # ResNet-20, mnist5k, 1 epoch, 5 rounds
    python benchmarks/runner_overhead.py --model resnet --depth 56 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gradsight.data import batches, load_dataset
from gradsight.train import auto_schedule, build_for_data, lecture, train


class Timer:
    """Wall-clock and CPU seconds (this process, all threads) of a ``with`` block."""

    def __enter__(self) -> "Timer":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def bare_loop(model: torch.nn.Module, data, *, epochs: int, seed: int) -> None:
    """The hand-written loop: train ``epochs`` epochs, evaluate after each."""
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lecture.lr)
    for _ in range(epochs):
        model.train()
        for x, y in batches(data.train_x, data.train_y, lecture.batch_size, shuffle=True, generator=order):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            wrong = sum(int((model(x).argmax(1) != y).sum()) for x, y in
                        batches(data.test_x, data.test_y, 1000, shuffle=False))
    _ = wrong


def runner_loop(model: torch.nn.Module, data, *, epochs: int, seed: int, run_dir: Path, every) -> None:
    """``gradsight.train.train`` with the same settings (progress bar to a buffer)."""
    with contextlib.redirect_stderr(io.StringIO()):
        train(model, data, lecture, epochs=epochs, seed=seed, device="cpu", run_dir=run_dir, every=every,
              progress=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-samples", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from dataclasses import replace

    data = load_dataset("mnist5k")
    data = replace(data, train_x=data.train_x[: args.train_samples], train_y=data.train_y[: args.train_samples])
    seed = 0
    tmp = Path(tempfile.mkdtemp(prefix="gradsight-runner-bench-"))
    steps = lecture.steps_per_epoch(data.num_train) * args.epochs
    print(f"{args.model}-{args.depth} on mnist5k: {data.num_train} train / {data.num_test} test images, "
          f"{args.epochs} epoch(s) = {steps} steps of batch {lecture.batch_size}, {args.threads} thread(s), "
          f"torch {torch.__version__}")

    variants = {
        "bare": None,
        "runner, every step": 1,
        "runner, auto 10 epochs": auto_schedule(10 * lecture.steps_per_epoch(data.num_train)),
    }

    def run(which: str, tag: str) -> Timer:
        model = build_for_data(args.model, data, depth=args.depth, seed=seed)
        with Timer() as timer:
            if which == "bare":
                bare_loop(model, data, epochs=args.epochs, seed=seed)
            else:
                runner_loop(model, data, epochs=args.epochs, seed=seed, run_dir=tmp / tag, every=variants[which])
        return timer

    # warm up every path (allocator, kernels, the monitor's compiled statistics)
    for which in variants:
        run(which, f"warmup-{which}")

    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.rounds):
        for which in names[r % 3:] + names[: r % 3]:
            timer = run(which, f"r{r}-{which}")
            wall[which].append(timer.wall)
            cpu[which].append(timer.cpu)
        print(f"round {r + 1}: " + ", ".join(f"{k} {wall[k][-1]:.2f} s wall / {cpu[k][-1]:.2f} s CPU" for k in names),
              flush=True)

    for label, times in (("wall clock", wall), ("CPU time", cpu)):
        bare = statistics.median(times["bare"])
        print(f"[{label}] bare loop: median {bare:.2f} s = {steps / bare:.2f} steps/s")
        for which in names[1:]:
            ratio = statistics.median(b / t for b, t in zip(times["bare"], times[which]))
            median = statistics.median(times[which])
            print(f"[{label}] {which}: median {median:.2f} s = {steps / median:.2f} steps/s; throughput / bare = "
                  f"{ratio:.3f} (median of {args.rounds} paired rounds; ratio of medians {bare / median:.3f}); "
                  f"target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'}")

if __name__ == "__main__":
    main()

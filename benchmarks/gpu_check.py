"""GPU check: on one CUDA device, the GPU tests, then gradsight's overhead at realistic sizes, as one markdown table.

1. The tests marked ``cuda`` (``pytest -m cuda``, in a fresh process, this checkout's
   ``src`` first on the path): the statistics on CUDA tensors of every dtype against float64
   references (every backend: eager kernels on the GPU; histograms, update ratios), one
   transfer per recorded step, and DDP over NCCL where there are two GPUs.
2. ``benchmarks/peers.py``'s measurement (``bench``: interleaved rounds, each step timed to
   its end) on torchvision resnet18, batch 64 at 3x224x224, and a Hugging Face GPT-2 124M
   (12 layers, width 768, random weights from a config, nothing downloaded), batch 8 of
   1024 tokens, AdamW, rows ``bare``, ``quickstart`` and ``grads`` (grads only); then each
   row alone for a few steps for its peak ``torch.cuda.max_memory_allocated``, given above
   the bare loop's.

The table (card, torch and CUDA versions, the tests' summary, then one row per model and
row) is printed and written to ``--out``. Exits 2 without a CUDA device (``--device cuda``),
1 when a test failed (the table is written all the same).

    python benchmarks/gpu_check.py --out gpu_check.md          # at most ~8 minutes on one H100
    python benchmarks/gpu_check.py --quick --out gpu_check.md  # fewer rounds
    python benchmarks/gpu_check.py --device cpu --quick        # a dry run on the CPU at tiny sizes
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  (benchmarks/peers.py: the problems, the rows and the measurement)

REPO = Path(__file__).resolve().parents[1]
ROWS = ("bare", "quickstart", "grads")
MEMORY_STEPS = 3  #: steps of each row alone for its peak memory (the first measures update_ratio)


@dataclass
class Model:
    """A model of the check: how to build its problem at the GPU's size and at the dry run's."""

    key: str
    needs: str
    full: Callable[[str], peers.Problem]
    tiny: Callable[[str], peers.Problem]


MODELS = [
    Model("resnet18", "torchvision", lambda d: peers.resnet18_problem(batch=64, size=224, device=d),
          lambda d: peers.resnet18_problem(batch=2, size=32, device=d)),
    Model("gpt2", "transformers",
          lambda d: peers.gpt2_problem(layers=12, width=768, heads=12, tokens=1024, batch=8, vocab=50257, device=d),
          lambda d: peers.gpt2_problem(layers=2, width=64, heads=2, tokens=32, batch=2, vocab=256, device=d)),
]


def run_tests(paths: list[str], timeout: float) -> tuple[int, str]:
    """``pytest -m cuda`` on ``paths`` in a fresh process, its output passed through; returns its
    exit status and its summary line (``12 passed, 1 skipped in 80.1s``)."""
    path = [str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", *paths]  # a test module needing a missing extra stops no other
    print("$ python " + " ".join(cmd[1:]), flush=True)
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"did not finish within {timeout:.0f} s"
    print(done.stdout[-6000:] + done.stderr[-2000:], flush=True)
    lines = [line.strip("= ") for line in done.stdout.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)",
                                                                                  line)]
    return done.returncode, lines[-1] if lines else f"no summary (exit {done.returncode})"


def machine(device: str) -> str:
    """The card (or the CPU), torch and CUDA versions, and gradsight's."""
    import gradsight

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        where = f"{torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        where = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return f"{where}, torch {torch.__version__}, gradsight {gradsight.__version__}"


def measure(model: Model, device: str, size: str, rounds: int, warmup: int, time_limit: float,
            tmp: Path) -> tuple[str, dict[str, peers.Cell], dict[str, int | None]]:
    """The label, the timing cells (``peers.bench``) and each row's peak memory (CUDA only, else None)."""
    torch.manual_seed(0)
    problem = (model.full if size == "full" else model.tiny)(device)
    params = sum(p.numel() for p in problem.model.parameters())
    label = f"{problem.label}, {params / 1e6:.1f}M parameters"
    rows = {key: peers.all_rows()[key] for key in ROWS}
    t0 = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # libraries' notes are not the table
        cells, done = peers.bench(problem, rows, rounds, warmup, t0 + time_limit, tmp / model.key)
        memory: dict[str, int | None] = dict.fromkeys(ROWS)
        if device == "cuda":
            for key in ROWS:
                memory[key] = peers.cuda_peak_memory(problem, peers.all_rows()[key], MEMORY_STEPS,
                                                     tmp / f"{model.key}-memory" / key)
    print(f"  {label}: {done} rounds in {time.perf_counter() - t0:.0f} s, bare step {cells['bare'].median_ms:.1f} ms",
          flush=True)
    return label, cells, memory


def table(results: list[tuple[str, dict[str, peers.Cell], dict[str, int | None]]]) -> list[str]:
    """One markdown table: a line per model and row."""
    names = {key: peers.all_rows()[key].name for key in ROWS}
    lines = ["| model | row | step | / bare (25-75 %) | peak memory above bare |",
             "| --- | --- | ---: | ---: | ---: |"]
    for label, cells, memory in results:
        for key in ROWS:
            cell = cells[key]
            ratio = "1" if key == "bare" else f"{cell.ratio:.3f}x ({cell.low:.3f}-{cell.high:.3f})"
            if memory[key] is None:
                mem = "n/a (CPU)"
            elif key == "bare":
                mem = f"peak {memory[key] / 2**20:,.0f} MiB"
            else:
                mem = f"{(memory[key] - memory['bare']) / 2**20:+,.1f} MiB"
            lines.append(f"| {label} | {names[key]} | {cell.median_ms:.1f} ms | {ratio} | {mem} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cuda (the check) or cpu (a dry run at tiny sizes, to keep this script working)")
    ap.add_argument("--quick", action="store_true", help="8 rounds after 2 warm-up rounds (default 30 after 3)")
    ap.add_argument("--out", type=Path, help="also write the table to this markdown file")
    ap.add_argument("--models", default=",".join(m.key for m in MODELS), help="comma-separated: resnet18, gpt2")
    ap.add_argument("--tests", default="tests",
                    help="test paths for pytest -m cuda (default: the whole suite); 'none' runs no tests")
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds of timed rounds per model (default 60)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device: torch {torch.__version__} (CUDA {torch.version.cuda}) sees none; run it "
              "on a machine with a GPU, or pass --device cpu --quick for a dry run", file=sys.stderr)
        return 2
    wanted = [m for m in args.models.split(",") if m]
    unknown = set(wanted) - {m.key for m in MODELS}
    if unknown:
        ap.error(f"unknown model(s) {', '.join(sorted(unknown))}: choose from resnet18, gpt2")
    rounds, warmup = (8, 2) if args.quick else (30, 3)
    size = "full" if args.device == "cuda" else "tiny"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # GPT-2 is built from a config: nothing to download

    header = [f"gradsight GPU check on {machine(args.device)}"]
    print(header[0], flush=True)
    status = 0
    if args.tests != "none":
        code, summary = run_tests(args.tests.split(","), timeout=240.0)
        status = 0 if code in (0, 5) else 1  # 5: no test selected
        header.append(f"tests (`pytest -m cuda {args.tests.replace(',', ' ')}`): {summary}")
    results = []
    notes = []
    with tempfile.TemporaryDirectory(prefix="gradsight-gpu-check-") as tmp:
        for model in MODELS:
            if model.key not in wanted:
                continue
            try:
                __import__(model.needs)
            except Exception as exc:
                notes.append(f"{model.key}: skipped, {model.needs} not importable ({type(exc).__name__})")
                continue
            results.append(measure(model, args.device, size, rounds, warmup, args.time_limit, Path(tmp)))
    header.append(f"overhead: `benchmarks/peers.py`'s interleaved rounds ({rounds} after {warmup} warm-up, AdamW, "
                  "every step recorded, float32 at torch's default precision), median step time, median ratio to "
                  f"the bare step of the same round; peak memory: each row alone for {MEMORY_STEPS} steps, "
                  "`torch.cuda.max_memory_allocated` above the bare loop's")
    text = "\n\n".join([*header, "\n".join(table(results)), *(f"note: {n}" for n in notes)]) + "\n"
    print("\n" + text, flush=True)
    if args.out is not None:
        args.out.write_text(text)
    return status


if __name__ == "__main__":
    sys.exit(main())

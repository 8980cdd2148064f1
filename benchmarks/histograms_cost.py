"""Cost of ``histograms=`` measured side by side in one process.

Interleaved rounds of the same AdamW training step, every step recorded:

* ``bare``: forward, backward, optimizer step;
* ``quickstart``: with ``gs.watch(model, optimizer=optimizer)`` (the README's quickstart);
* ``+ histograms=10``: the same, with log2 histograms and precision headroom every
  10th recorded step;
* ``+ histograms=True``: the same, at every recorded step.

Prints the mean step time of each variant over the same steps (a multiple of 10, so
``histograms=10`` pays its histogram steps in proportion) in CPU time of the process
(``time.process_time``: what the step computes, not time the process waited for a
core on a shared machine) and in wall time, with the ratios of each histogram row to
``quickstart`` (the target: at most 1.05x with ``histograms=10``) and to ``bare``.

    python benchmarks/histograms_cost.py                 # MLP 12x1024, torchvision resnet18, a small GPT-2
    python benchmarks/histograms_cost.py --model mlp --steps 60
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import gradsight as gs
from overhead import make_mlp  # benchmarks/ is on the path when this script runs

VARIANTS = {"bare": None, "quickstart": False, "+ histograms=10": 10, "+ histograms=True": True}


def bench(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int,
          loss_fn) -> dict[str, float]:
    """Median step time of each variant; each trains its own copy of the model."""
    tmp = Path(tempfile.mkdtemp(prefix="gradsight-hist-bench-"))
    models = {k: copy.deepcopy(model) for k in VARIANTS}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    monitors = {k: gs.watch(models[k], tmp / f"{name}-{i}", optimizer=opts[k], histograms=h)
                for i, (k, h) in enumerate(VARIANTS.items()) if h is not None}
    cpu: dict[str, list[float]] = {k: [] for k in VARIANTS}
    wall: dict[str, list[float]] = {k: [] for k in VARIANTS}

    def step(k: str) -> tuple[float, float]:
        m, opt = models[k], opts[k]
        c0, t0 = time.process_time(), time.perf_counter()
        loss = loss_fn(m(x), y)
        loss.backward()
        if k in monitors:
            monitors[k].step(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.process_time() - c0, time.perf_counter() - t0

    for r in range(warmup + steps):
        for k in VARIANTS if r % 2 == 0 else reversed(list(VARIANTS)):
            dc, dt = step(k)
            if r >= warmup:
                cpu[k].append(dc)
                wall[k].append(dt)
    for mon in monitors.values():
        mon.close()
    return {k: (statistics.fmean(cpu[k]), statistics.fmean(wall[k])) for k in VARIANTS}


def report(name: str, means: dict[str, tuple[float, float]]) -> None:
    (base_c, base_w), (quick_c, quick_w) = means["bare"], means["quickstart"]
    print(f"\n{name}: mean step time in ms, CPU (wall); ratio to bare and to quickstart, CPU (wall)")
    for k, (c, w) in means.items():
        print(f"  {k:<20} {c * 1e3:8.1f} ({w * 1e3:8.1f})  {c / base_c:5.2f}x ({w / base_w:5.2f}x)  "
              f"{c / quick_c:5.3f}x ({w / quick_w:5.3f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["mlp", "resnet18", "gpt2", "all"], default="all")
    ap.add_argument("--steps", type=int, default=40, help="measured steps per variant (a multiple of 10)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model in ("mlp", "all"):
        x, y = torch.randn(16, 1024), torch.randn(16, 1024)
        report("MLP 12x1024, batch 16", bench("mlp", make_mlp(depth=12), x, y, args.steps, args.warmup, F.mse_loss))
    if args.model in ("resnet18", "all"):
        try:
            from torchvision.models import resnet18
        except ImportError:
            print("\nresnet18: skipped (torchvision is not installed)")
        else:
            x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 10, (16,))
            report("torchvision resnet18, batch 16, 64x64",
                   bench("resnet18", resnet18(num_classes=10), x, y, args.steps, args.warmup, F.cross_entropy))
    if args.model in ("gpt2", "all"):
        try:
            from transformers import GPT2Config, GPT2LMHeadModel
        except ImportError:
            print("\ngpt2: skipped (transformers is not installed)")
        else:
            config = GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=128)  # GPT-2's vocabulary: 50,257
            ids = torch.randint(0, config.vocab_size, (4, 128))

            def next_token(out, target):
                return F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), target[:, 1:].reshape(-1))

            report("Hugging Face GPT-2 (4 layers, width 256, GPT-2 vocabulary), 4 x 128 tokens",
                   bench("gpt2", GPT2LMHeadModel(config), ids, ids, args.steps, args.warmup, next_token))


if __name__ == "__main__":
    main()

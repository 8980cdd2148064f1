"""Overhead of gradient monitoring, measured side by side in one process.

Runs interleaved rounds of the same training step

* ``bare``: forward, backward, optimizer step;
* ``gradsight``: the same with ``monitor.step()`` recording every statistic at
  every step (store writes included);
* ``lecture``: the lecture's ``[p.grad.norm().item() for p in params]`` loop;

on (a) a compute-heavy model, CIFAR-style ResNet-56 on 1x28x28 input, batch 128,
and (b) a parameter-heavy one, a 20-layer MLP of width 1024, batch 32. Prints
per-step medians and each ratio to the bare loop.

Targets (issue "Core"): (a) gradsight <= 1.03x bare; (b) about one pass over the
gradients' memory (a single ``torch._foreach_norm`` pass, also printed, is that
physical reference).

    python benchmarks/overhead.py            # both models
    python benchmarks/overhead.py --model mlp --steps 30
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

import gradsight as gs


def make_mlp(depth: int = 20, width: int = 1024) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(width, width))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_resnet56() -> nn.Module:
    return gs.models.create_model("resnet56", in_channels=1, num_classes=10)


def bench(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, steps: int, warmup: int,
          backend: str, activations: bool = False) -> dict[str, float]:
    """Median step time of each variant; every variant trains its own copy of the model
    (same initial weights), so hooks of one never run in another."""
    tmp = Path(tempfile.mkdtemp(prefix="gradsight-bench-"))
    kwargs = {"backend": backend, "activations": activations}
    names = ["bare", "gradsight", "gradsight weights=False", "lecture", "one foreach_norm pass"]
    models = {k: copy.deepcopy(model) for k in names}
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}
    monitors = {
        "gradsight": gs.watch(models["gradsight"], tmp / f"{name}-all", **kwargs),
        "gradsight weights=False": gs.watch(models["gradsight weights=False"], tmp / f"{name}-light", weights=False,
                                            **kwargs),
    }

    def extra(key: str) -> None:
        params = [p for p in models[key].parameters() if p.requires_grad]
        if key in monitors:
            monitors[key].step()
        elif key == "lecture":
            [p.grad.norm().item() for p in params]
        elif key == "one foreach_norm pass":
            torch.stack(torch._foreach_norm([p.grad for p in params])).tolist()

    def step(key: str) -> float:
        m, opt = models[key], opts[key]
        t0 = time.perf_counter()
        loss = loss_fn(m(x), y)
        loss.backward()
        extra(key)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(warmup):
        for key in names:
            step(key)
    for _ in range(steps):  # interleaved rounds: drift and noise hit every variant alike
        for key in names:
            times[key].append(step(key))
    for mon in monitors.values():
        mon.close()
    medians = {k: statistics.median(v) for k, v in times.items()}
    label = f"backend={backend}" + (", activations=True" if activations else "")
    print(f"\n{name}: median step time over {steps} interleaved rounds ({label})")
    for key, med in medians.items():
        print(f"  {key:<24} {med * 1e3:9.2f} ms   {med / medians['bare']:.3f}x bare")
    return medians


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["resnet56", "mlp", "both"], default="both")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--backend", default="auto", choices=["auto", "eager", "fused"])
    ap.add_argument("--activations", action="store_true", help="also record activation statistics")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    ce = nn.functional.cross_entropy
    if args.model in ("resnet56", "both"):
        x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
        bench("(a) ResNet-56, 1x28x28, batch 128", make_resnet56(), x, y, ce, args.steps, args.warmup,
              args.backend, args.activations)
    if args.model in ("mlp", "both"):
        x, y = torch.randn(32, 1024), torch.randn(32, 1024)
        bench("(b) MLP 20x1024, batch 32", make_mlp(), x, y, nn.functional.mse_loss, args.steps * 2, args.warmup,
              args.backend, args.activations)


if __name__ == "__main__":
    main()

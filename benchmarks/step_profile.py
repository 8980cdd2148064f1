"""Where one recorded step's time goes, inside a training loop, against the floor.

Trains an MLP of ``--layers`` Linear(W, W) layers (ReLU between, batch 16, SGD) and, at each
step right after ``loss.backward()``, times either the floor (one ``torch._foreach_norm`` over
the gradients and one host copy: what ``benchmarks/peers.py`` calls ``floor``) or
``monitor.step()`` of ``gs.watch(model, dir, weights=False)`` (grads only), alternating, so
that both start from what a backward pass leaves in the caches. Inside ``monitor.step()`` the
C kernel's own call is timed too (``stats.native._run``, where the kernel is built), so the
step splits into the pass over the gradients and everything else (the plan, the transfer,
deriving the statistics on the host, the writer's queue). Prints the medians over the
steps after the first ``--warmup`` and the 25 % quantile of the rest.

    python benchmarks/step_profile.py                 # one thread, W=1024, 300 steps
    python benchmarks/step_profile.py --threads 2
    python benchmarks/step_profile.py --width 32      # tiny tensors: the fixed cost

Timings are noisy on a shared machine: compare numbers from one run, side by side.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch
from torch import nn

import gradsight as gs
from gradsight.stats import native


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--width", type=int, default=1024, help="W of each Linear(W, W) (default 1024)")
    parser.add_argument("--layers", type=int, default=12, help="number of Linear layers (default 12)")
    parser.add_argument("--steps", type=int, default=300, help="steps of each kind (default 300)")
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the medians (default 20)")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(args.layers):
        layers += [nn.Linear(args.width, args.width), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    x, y = torch.randn(16, args.width), torch.randn(16, args.width)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    params = list(model.parameters())

    kernel: list[float] = []
    run = native._run

    def timed_run(*a, **k):
        start = time.perf_counter()
        out = run(*a, **k)
        kernel.append(time.perf_counter() - start)
        return out

    native._run = timed_run
    times: dict[str, list[float]] = {"floor": [], "step": []}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monitor = gs.watch(model, f"{tmp}/run", weights=False)
        for _ in range(args.steps):
            for kind, spent in times.items():
                optimizer.zero_grad(set_to_none=True)
                ((model(x) - y) ** 2).mean().backward()
                start = time.perf_counter()
                if kind == "floor":
                    torch.stack(torch._foreach_norm([p.grad for p in params])).cpu()
                else:
                    monitor.step()
                spent.append(time.perf_counter() - start)
                optimizer.step()
        monitor.close()
    native._run = run

    def ms(values: list[float]) -> str:
        values = values[args.warmup:]
        return f"{statistics.median(values) * 1e3:.3f} ms (25 %: {statistics.quantiles(values, n=4)[0] * 1e3:.3f})"

    print(f"MLP {args.layers} x Linear({args.width}), batch 16, SGD, {args.threads} thread(s), torch {torch.__version__}, "
          f"kernel {'built, OpenMP threads' if native.uses_openmp() else 'built' if native.library() else 'unavailable'}")
    print(f"  floor (_foreach_norm of the gradients, one host copy): {ms(times['floor'])}")
    print(f"  monitor.step(), grads only:                           {ms(times['step'])}")
    if len(kernel) == len(times["step"]):
        rest = [s - k for s, k in zip(times["step"], kernel)]
        print(f"    of which the C kernel:                              {ms(kernel)}")
        print(f"    everything else:                                    {ms(rest)}")


if __name__ == "__main__":
    main()

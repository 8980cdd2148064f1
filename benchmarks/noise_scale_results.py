"""The measurement of docs/results.md's noise scale section: the gradient noise scale of a zoo
model over training.

A pre-LN GPT (``gpt_preln``, the registry's default size) on pystdlib, trained with the ``gpt``
recipe's AdamW (lr 1e-3, betas (0.9, 0.95), weight decay 0.1 on matrices) on batches of 32
windows of 64 bytes, each step accumulated from ``--micro`` micro-batches (default 4 of 8
windows), recorded with ``gs.watch(..., noise_scale=32 // micro)`` (a sample is a window).
Prints, per block of ``--block`` steps, the mean training loss, the noise scale from the
block's mean estimates (``mean gns_trace / mean gns_grad_sq``, steadier than the moving
average), the moving average ``gns`` at the block's last step, and both in tokens; then the
per-step spread of the estimates; and draws ``docs/img/noise_scale_gpt.png``
(``gs.plots.noise_scale``).

    python benchmarks/noise_scale_results.py --steps 1500 --out runs/gns
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.nn import functional as F

import gradsight as gs
from gradsight.data import load_dataset
from gradsight.data.batching import token_batch
from gradsight.models import create_model
from gradsight.train.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[1]
FIGURE = ROOT / "docs" / "img" / "noise_scale_gpt.png"


def train(out: Path, steps: int, micro: int, seed: int) -> Path:
    recipe = get_recipe("gpt")
    data = load_dataset("pystdlib")
    torch.manual_seed(seed)
    model = create_model("gpt_preln", vocab_size=data.vocab_size, context=recipe.context)
    optimizer = recipe.make_optimizer(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    per_micro = recipe.batch_size // micro
    run_dir = out / f"gpt_preln-micro{micro}"
    with gs.watch(model, run_dir, optimizer=optimizer, noise_scale=per_micro, overwrite=True,
                  config={"context": recipe.context, "batch_size": recipe.batch_size, "micro_batches": micro}) as mon:
        for _ in range(steps):
            total = 0.0
            for _ in range(micro):
                x, y = token_batch(data.train, recipe.context, per_micro, generator=gen)
                loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten()) / micro
                loss.backward()
                total += float(loss.detach())
            mon.step(total)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return run_dir


def tables(run_dir: Path, block: int) -> None:
    run = gs.open_run(run_dir)
    context = run.config["context"]
    loss = run.series("loss", "metric").iloc[:, 0]
    grad_sq = run.series("gns_grad_sq", "model").iloc[:, 0]
    trace = run.series("gns_trace", "model").iloc[:, 0]
    gns = run.series("gns", "model").iloc[:, 0]
    batch = int(run.series("gns_batch", "model").iloc[0, 0])
    print(f"\n{run.name}: batch {batch} windows = {batch * context} tokens\n")
    print("| steps | train loss (nats/byte) | B_simple, block means (windows) | (tokens) | gns, moving average at the "
          "block's end (windows) |")
    print("| --- | --- | --- | --- | --- |")
    for start in range(0, len(loss), block):
        sl = slice(start, start + block)
        b = trace.iloc[sl].mean() / grad_sq.iloc[sl].mean()
        print(f"| {loss.index[sl][0]}-{loss.index[sl][-1]} | {loss.iloc[sl].mean():.3f} | {b:.1f} | {b * context:,.0f} "
              f"| {gns.iloc[sl].iloc[-1]:.1f} |")
    late = slice(len(loss) // 2, None)
    print(f"\nper-step spread over the last half (std / mean): gns_grad_sq {grad_sq.iloc[late].std() / grad_sq.iloc[late].mean():.2f}, "
          f"gns_trace {trace.iloc[late].std() / trace.iloc[late].mean():.2f}; gns (moving average) "
          f"{gns.iloc[late].std() / gns.iloc[late].mean():.2f}")
    print("\n" + "\n".join(str(f) for f in gs.diagnose(run) if "noise_scale" in f.code))
    from gradsight.plots import noise_scale

    fig = noise_scale(run, title=f"gradient noise scale, gpt_preln on pystdlib ({batch} windows of {context} bytes)")
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=110, bbox_inches="tight")
    print(f"wrote {FIGURE}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/gns"))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--micro", type=int, default=4, help="micro-batches per step (of 32 windows in all)")
    ap.add_argument("--block", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = train(args.out, args.steps, args.micro, args.seed)
    tables(run_dir, args.block)


if __name__ == "__main__":
    main()

"""The measurement behind the doctor's ``eps_dominated`` threshold: Adam's state in a healthy run
and in runs where ``eps`` dominates the update.

A pre-LN GPT (``gpt_preln``, depth ``--depth``, width 64) on pystdlib, the ``gpt`` recipe's
AdamW (lr 1e-3, betas (0.9, 0.95), weight decay 0.1 on matrices), batches of ``--batch``
windows of 64 bytes, ``--steps`` steps, ``update_ratio=--every`` (the Adam state is read at
those steps). Runs:

* ``healthy``: eps 1e-8 (the default);
* ``eps1e-3``: eps 1e-3 (Wortsman et al. 2023's "AdamW epsilon issue" at a small scale);
* ``loss1e-6``: eps 1e-8, the loss (hence every gradient) multiplied by 1e-6.

Prints, per run, the final training loss and, per layer role and for the model, the medians
over the last half of the measured steps of ``adam_eps_frac``, ``adam_update_rms`` and
``adam_sqrt_v_rms``; the largest layer ``adam_eps_frac``; and the doctor's ``eps_dominated``
findings.

    python benchmarks/adam_eps.py --steps 300 --out runs/adam_eps
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

RUNS = {"healthy": (1e-8, 1.0), "eps1e-3": (1e-3, 1.0), "loss1e-6": (1e-8, 1e-6)}


def train(run_dir: Path, eps: float, loss_scale: float, args: argparse.Namespace) -> float:
    recipe = get_recipe("gpt")
    data = load_dataset("pystdlib")
    torch.manual_seed(args.seed)
    model = create_model("gpt_preln", vocab_size=data.vocab_size, context=recipe.context, depth=args.depth)
    optimizer = recipe.make_optimizer(model.parameters())
    for group in optimizer.param_groups:
        group["eps"] = eps
    gen = torch.Generator().manual_seed(args.seed)
    losses = []
    with gs.watch(model, run_dir, optimizer=optimizer, update_ratio=args.every,
                  overwrite=True, config={"eps": eps, "loss_scale": loss_scale}) as monitor:
        for _ in range(args.steps):
            x, y = token_batch(data.train, recipe.context, args.batch, generator=gen)
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            (loss * loss_scale).backward()
            monitor.step(loss.detach())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    return sum(losses[-20:]) / 20


def summary(run_dir: Path, final_loss: float, name: str) -> None:
    run = gs.open_run(run_dir)
    layers = run.layers().set_index("name")["role"]
    print(f"\n{name}: final loss {final_loss:.3f} nats/byte (mean of the last 20 steps)\n")
    print("| rows | adam_eps_frac | adam_update_rms | adam_sqrt_v_rms |")
    print("| --- | --- | --- | --- |")
    late = {}
    for stat in ("adam_eps_frac", "adam_update_rms", "adam_sqrt_v_rms"):
        table = run.series(stat, "layer")
        late[stat] = table.iloc[len(table) // 2:].median()
        model = run.series(stat, "model").iloc[:, 0]
        late[f"model_{stat}"] = model.iloc[len(model) // 2:].median()
    for role in sorted(set(layers.reindex(late["adam_eps_frac"].index))):
        names = [n for n in late["adam_eps_frac"].index if layers.get(n) == role]
        cells = [f"{late[s][names].median():.3g}" for s in ("adam_eps_frac", "adam_update_rms", "adam_sqrt_v_rms")]
        print(f"| {role} layers ({len(names)}), median | " + " | ".join(cells) + " |")
    print("| model | " + " | ".join(f"{late['model_' + s]:.3g}" for s in ("adam_eps_frac", "adam_update_rms",
                                                                          "adam_sqrt_v_rms")) + " |")
    worst = late["adam_eps_frac"].idxmax()
    print(f"\nlargest layer adam_eps_frac: {late['adam_eps_frac'][worst]:.3g} ({worst})")
    for finding in gs.diagnose(run):
        if finding.code == "eps_dominated":
            print(finding)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/adam_eps"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.runs.split(","):
        eps, loss_scale = RUNS[name]
        final = train(args.out / name, eps, loss_scale, args)
        summary(args.out / name, final, name)


if __name__ == "__main__":
    main()

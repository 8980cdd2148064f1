"""The measurements of docs/results-transformers.md: pre-LN vs post-LN GPTs on pystdlib.

Three stages, each printing the Markdown tables the page quotes::

    python benchmarks/transformer_results.py init                  # gradients at initialization
    python benchmarks/transformer_results.py train --out runs/tr   # the training runs (compare)
    python benchmarks/transformer_results.py tables --out runs/tr  # tables from those runs' stores

``init`` needs no training: for every (layout, depth, variant) it draws ``--seeds`` models and,
for each, ``--batches`` training batches of the ``gpt`` recipe (32 windows of 64 bytes of
pystdlib), and takes the gradient of the mean next-byte loss with ``torch.autograd.grad``. It
prints the gradient norm of every block's weight matrices, of the first attention output
bias and of the whole block (mean over seeds and batches), for three initializations
(``VARIANTS``), and draws ``docs/img/transformer_init_grads.png`` (the FFN output matrix
``mlp.c_proj.weight``, Xiong et al.'s W^(2), per layer). ``--width``/``--heads`` size the
models (default: the recipe's width 64, 4 heads); ``--variants`` picks initializations (the
figure is drawn only with all of them).

``train`` runs ``gradsight.train.compare`` three times (the stores go under ``--out``):
``activations`` (pre-LN, post-LN and no-skip at depth 6 and 12, recipe ``gpt`` as it is,
``--activations``; the same as ``gradsight compare --models gpt_preln,gpt_postln,gpt_noskip
--depths 6,12 --dataset pystdlib --recipe gpt --activations``), and ``lr<LR>-warmup0`` /
``lr<LR>-warmup<W>`` (pre-LN and post-LN at ``--depths`` with the recipe's learning rate
replaced by ``--lr``, without and with a linear warmup over ``--warmup`` steps).

Every run uses one torch thread (``--threads``) and seed 0.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch.nn import functional as F

from gradsight.data import load_dataset
from gradsight.data.batching import token_batch
from gradsight.models import create_model
from gradsight.train.compare import compare
from gradsight.train.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[1]
FIGURE = ROOT / "docs" / "img" / "transformer_init_grads.png"
LAYOUTS = ("gpt_preln", "gpt_postln")
#: The weight matrices of a block, in forward order (nanoGPT's names).
MATRICES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


# -- gradients at initialization -------------------------------------------------------------

def unit_embeddings(model: torch.nn.Module) -> None:
    """Redraw the token and position embeddings N(0, 1/2), so that their sum, the stream entering
    the first block, has unit RMS (as in the original Transformer, where the embeddings are scaled
    by sqrt(width)), instead of nanoGPT's N(0, 0.02**2) each (RMS 0.028)."""
    with torch.no_grad():
        for emb in (model.transformer.wte, model.transformer.wpe):
            emb.weight.normal_(0.0, math.sqrt(0.5))


def xavier_unit_embeddings(model: torch.nn.Module) -> None:
    """Xiong et al.'s setting as far as a decoder-only GPT has it: every linear weight
    Xavier-uniform (no depth scaling of the output projections), biases 0, and unit-RMS
    embeddings (:func:`unit_embeddings`)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
    unit_embeddings(model)


#: Initializations measured by ``init``: name -> function applied to the zoo model after construction.
VARIANTS = {
    "nanoGPT init": None,  # the zoo's, as trained by the recipe
    "unit-RMS embeddings": unit_embeddings,
    "Xavier + unit-RMS embeddings": xavier_unit_embeddings,
}


def init_grad_norms(family: str, depth: int, variant: str, stream: torch.Tensor, seeds: int,
                    batches: int, **model_kwargs: int) -> dict[str, list[float]]:
    """``{parameter name: [gradient norm per (seed, batch)]}`` of every parameter at initialization."""
    after = VARIANTS[variant]
    norms: dict[str, list[float]] = {}
    recipe = get_recipe("gpt")
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = create_model(family, depth=depth, **model_kwargs)
        if after is not None:
            after(model)
        weights = dict(model.named_parameters())
        order = torch.Generator().manual_seed(seed)
        for _ in range(batches):
            x, y = token_batch(stream, recipe.context, recipe.batch_size, generator=order)
            loss = F.cross_entropy(model(x).flatten(0, -2), y.flatten())
            grads = torch.autograd.grad(loss, list(weights.values()))
            for name, grad in zip(weights, grads):
                norms.setdefault(name, []).append(float(grad.double().norm()))
    return norms


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.2e}"


def run_init(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.set_num_threads(args.threads)
    stream = load_dataset("pystdlib").train
    depths = [int(d) for d in args.depths.split(",")]
    results: dict[tuple[str, int, str], dict[str, float]] = {}
    norms_of: dict[tuple[str, int, str], dict[str, list[float]]] = {}
    spread: dict[tuple[str, int, str], dict[str, float]] = {}
    variants = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    size = {"width": args.width, "heads": args.heads}
    for variant in variants:
        for family in LAYOUTS:
            for depth in depths:
                norms = init_grad_norms(family, depth, variant, stream, args.seeds, args.batches, **size)
                key = (family, depth, variant)
                norms_of[key] = norms
                results[key] = {n: statistics.fmean(v) for n, v in norms.items()}
                spread[key] = {n: statistics.pstdev(v) / statistics.fmean(v) for n, v in norms.items()}
    samples = args.seeds * args.batches
    for family, depth in [(f, d) for f in LAYOUTS for d in depths]:
        if (family, depth, "nanoGPT init") in norms_of:  # seed 0's first batch is the first step of a `gpt` run
            first = norms_of[(family, depth, "nanoGPT init")]
            print(f"{family}-{depth}, seed 0, first batch (the first step of `compare`'s run): "
                  + ", ".join(f"`{n}` {_fmt(first[n + '.weight'][0])} (weight), "
                              f"{_fmt(math.hypot(first[n + '.weight'][0], first[n + '.bias'][0]))} (layer)"
                              for n in ("transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj")) + "\n")
    print(f"## Gradient norm of each block's weight matrices at initialization, width {args.width}, "
          f"{args.heads} heads (mean over {args.seeds} seeds x {args.batches} batches = {samples} samples)\n")
    for (family, depth, variant), means in results.items():
        print(f"### {family}, depth {depth}, {variant}\n")
        print("| block | " + " | ".join(f"{m}.weight" for m in MATRICES) + " | attn.c_proj.bias | whole block |")
        print("| ---: |" + " ---: |" * (len(MATRICES) + 2))
        for block in range(depth):
            row = [means[f"transformer.h.{block}.{m}.weight"] for m in MATRICES]
            row.append(means[f"transformer.h.{block}.attn.c_proj.bias"])
            # the norm over every parameter of the block (weights, biases, LayerNorms), per sample, then the mean
            per_sample = [math.sqrt(sum(v[i] ** 2 for n, v in norms_of[(family, depth, variant)].items()
                                        if n.startswith(f"transformer.h.{block}.")))
                          for i in range(samples)]
            print(f"| {block + 1} | " + " | ".join(_fmt(v) for v in row) + f" | {_fmt(statistics.fmean(per_sample))} |")
        other = {n: v for n, v in means.items() if not n.startswith("transformer.h.")}
        print("\n" + ", ".join(f"`{n}` {_fmt(v)}" for n, v in other.items()))
        cv = spread[(family, depth, variant)]
        w2 = max(v for n, v in cv.items() if n.endswith("mlp.c_proj.weight"))
        print(f"\n(coefficient of variation over the samples: at most {w2:.2f} for `mlp.c_proj.weight`, "
              f"{max(cv.values()):.2f} over all parameters)\n")

    print("## FFN W^(2) (`mlp.c_proj.weight`) per block\n")
    for variant in variants:
        keys = [k for k in results if k[2] == variant]
        print(f"### {variant}\n")
        print("| block | " + " | ".join(f"{f.removeprefix('gpt_')} d{d}" for f, d, _ in keys) + " |")
        print("| ---: |" + " ---: |" * len(keys))
        for block in range(max(depths)):
            cells = [_fmt(results[k][f"transformer.h.{block}.mlp.c_proj.weight"]) if block < k[1] else ""
                     for k in keys]
            print(f"| {block + 1} | " + " | ".join(cells) + " |")
        print()
    print("## FFN W^(2) (`mlp.c_proj.weight`): last block / first block, and a straight-line fit of "
          "log norm against block index\n")
    print("| layout | depth | variant | first block | last block | last / first | growth per block |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for (family, depth, variant), means in results.items():
        w2 = [means[f"transformer.h.{b}.mlp.c_proj.weight"] for b in range(depth)]
        slope = _slope([math.log(v) for v in w2])
        print(f"| {family} | {depth} | {variant} | {_fmt(w2[0])} | {_fmt(w2[-1])} | {w2[-1] / w2[0]:.2f} | "
              f"x{math.exp(slope):.3f} |")

    if args.variants != "all":
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, variant_set in zip(axes, (("nanoGPT init",), ("Xavier + unit-RMS embeddings",))):
        for (family, depth, variant), means in results.items():
            if variant not in variant_set:
                continue
            w2 = [means[f"transformer.h.{b}.mlp.c_proj.weight"] for b in range(depth)]
            style = "-" if family == "gpt_postln" else "--"
            marker = "o" if depth == depths[0] else "s"
            ax.plot(range(1, depth + 1), w2, style, marker=marker, markersize=4,
                    label=f"{family.removeprefix('gpt_')} d{depth}" )
        ax.set_yscale("log")
        ax.set_xlabel("block (layer index)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("||dL/dW|| of mlp.c_proj.weight (FFN W2)")
    axes[0].set_title("nanoGPT initialization (as trained)")
    axes[1].set_title("Xavier linear layers, unit-RMS embeddings")
    fig.suptitle(f"Gradient norm of the FFN output matrix at initialization (width {args.width}), pystdlib, "
                 f"mean of {samples} batches", fontsize=10)
    fig.tight_layout()
    figure = FIGURE if args.width == 64 else FIGURE.with_stem(f"{FIGURE.stem}_w{args.width}")
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    print(f"\nfigure written to {figure.relative_to(ROOT)}")


def _slope(ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against 0, 1, 2, ..."""
    n = len(ys)
    mx, my = (n - 1) / 2, statistics.fmean(ys)
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum((i - mx) ** 2 for i in range(n))


# -- training runs ---------------------------------------------------------------------------

def run_train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = load_dataset("pystdlib")
    stages = args.stages.split(",")
    if "activations" in stages:
        compare(["gpt_preln", "gpt_postln", "gpt_noskip"], [6, 12], data, out=out / "activations",
                recipe="gpt", activations=True, progress=False, overwrite=args.overwrite,
                command="python benchmarks/transformer_results.py train")
    recipe = replace(get_recipe("gpt"), lr=args.lr)
    for warmup in (0, args.warmup):
        if f"warmup{warmup}" not in stages and "warmup" not in stages:
            continue
        compare(list(LAYOUTS), args.depths, data, out=out / f"lr{args.lr:g}-warmup{warmup}", recipe=recipe,
                warmup=warmup, progress=False, overwrite=args.overwrite,
                command=f"python benchmarks/transformer_results.py train --lr {args.lr:g} --warmup {args.warmup}")


def _runs(folder: Path) -> list[Path]:
    return sorted((folder / "runs").iterdir(), key=lambda p: (p.name.split("-")[0], int(p.name.split("-")[1])))


def _results_table(folder: Path) -> None:
    """Final train/test loss per run and the test bits per byte after every epoch."""
    import gradsight as gs

    print("| run | train loss (epoch 5) | test loss | test bits per byte, epochs 1..5 | time (s) |")
    print("| --- | ---: | ---: | --- | ---: |")
    for path in _runs(folder):
        with gs.open_run(path) as run:
            metrics = run.metrics()
            if "epoch" not in metrics:  # still training
                continue
            metrics = metrics.dropna(subset=["epoch"])
            last = metrics.iloc[-1]
            bits = " / ".join(f"{v:.2f}" for v in metrics["test_bits_per_byte"])
            print(f"| {path.name} | {last['train_loss']:.3f} | {last['test_loss']:.3f} | {bits} | "
                  f"{sum(metrics['epoch_time_s']):.0f} |")
    print()


def _loss_at(folder: Path, steps: list[int]) -> None:
    """The recorded mini-batch loss at a few steps: whether and when a run left the plateau."""
    import gradsight as gs

    print("| run | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("| --- |" + " ---: |" * len(steps))
    for path in _runs(folder):
        with gs.open_run(path) as run:
            loss = run.metrics()["loss"].dropna()
            values = [float(loss.loc[s]) if s in loss.index else float("nan") for s in steps]
        print(f"| {path.name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    print()


def _grad_over_training(folder: Path, steps: list[int]) -> None:
    """Gradient norm of a few layers at ``steps``: the first block's attention input projection,
    the middle block's, the last block's FFN output layer and the head (layer rows ``grad_norm``)."""
    import gradsight as gs

    print("| run | layer | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("| --- | --- |" + " ---: |" * len(steps))
    for path in _runs(folder):
        with gs.open_run(path) as run:
            depth = int(run.config["depth"])
            names = [f"transformer.h.0.attn.c_attn", f"transformer.h.{depth // 2}.attn.c_attn",
                     f"transformer.h.{depth - 1}.mlp.c_proj", "lm_head"]
            wide = run.series("grad_norm", level="layer")
        for name in names:
            cells = [_fmt(wide.loc[s, name]) if s in wide.index else "" for s in steps]
            print(f"| {path.name} | `{name}` | " + " | ".join(cells) + " |")
    print()


def _split_table(path: Path, steps: list[int]) -> None:
    """Per addition: skip and branch gradient norms and their cosine at ``steps``."""
    import gradsight as gs

    with gs.open_run(path) as run:
        frame = run.frame(level="block", stat=["skip_grad_norm", "branch_grad_norm", "skip_branch_cos"],
                          steps=steps)
        names = list(run.layers("block")["name"])
    table = frame.pivot_table(index=["name", "step"], columns="stat", values="value")
    if not set(steps) <= set(table.index.get_level_values("step")):
        return
    print(f"#### {path.name}: skip / branch gradient per addition\n")
    print("| addition | " + " | ".join(f"step {s}: skip, branch, branch/skip, cos" for s in steps) + " |")
    print("| --- |" + " --- |" * len(steps))
    for name in names:
        cells = []
        for s in steps:
            row = table.loc[(name, s)]
            skip, branch, cos = row["skip_grad_norm"], row["branch_grad_norm"], row["skip_branch_cos"]
            cells.append(f"{_fmt(skip)}, {_fmt(branch)}, {branch / skip:.2f}, {cos:+.2f}")
        print(f"| `{name}` | " + " | ".join(cells) + " |")
    print()


def _split_summary(paths: list[Path], steps: list[int]) -> None:
    """Per run and step: median and range over the additions of branch/skip and of the cosine, and
    the share of ||dL/ds||^2 that the skip term alone would give, skip^2 / ||skip + branch||^2."""
    import gradsight as gs

    print("| run | step | branch / skip: median (min-max) | cos: median (min-max) | "
          "skip^2 / ‖dL/ds‖^2: median (min-max) |")
    print("| --- | ---: | --- | --- | --- |")
    for path in paths:
        with gs.open_run(path) as run:
            frame = run.frame(level="block", stat=["skip_grad_norm", "branch_grad_norm", "skip_branch_cos"],
                              steps=steps)
        if frame.empty:
            continue
        wide = frame.pivot_table(index=["step", "name"], columns="stat", values="value")
        for s in steps:
            if s not in wide.index.get_level_values("step"):
                continue
            w = wide.loc[s]
            ratio = w["branch_grad_norm"] / w["skip_grad_norm"]
            total = (w["skip_grad_norm"] ** 2 + w["branch_grad_norm"] ** 2
                     + 2 * w["skip_grad_norm"] * w["branch_grad_norm"] * w["skip_branch_cos"])
            share = w["skip_grad_norm"] ** 2 / total

            def cell(v, f):
                return f"{f(v.median())} ({f(v.min())}-{f(v.max())})"

            print(f"| {path.name} | {s} | {cell(ratio, lambda v: f'{v:.2f}')} | "
                  f"{cell(w['skip_branch_cos'], lambda v: f'{v:+.2f}')} | {cell(share, lambda v: f'{v:.2f}')} |")
    print()


def _noskip_table(paths: list[Path], steps: list[int]) -> None:
    """The no-skip GPTs at ``steps``: per block, the gradient norm at the block's output (the
    output of its last module, ``mlp.c_proj``: module row ``out_grad_norm``) and the gradient
    norm of its FFN output layer (``mlp.c_proj``, weight and bias: layer row ``grad_norm``)."""
    import gradsight as gs

    for path in paths:
        with gs.open_run(path) as run:
            present = [s for s in steps if s in run.steps()]
            out = run.frame(level="module", stat="out_grad_norm", steps=present)
            weight = run.frame(level="layer", stat="grad_norm", steps=present)
        if not present:
            continue
        pattern = r"transformer\.h\.\d+\.mlp\.c_proj"
        tables = []
        for frame in (out, weight):
            frame = frame[frame["name"].str.fullmatch(pattern)]
            wide = frame.pivot_table(index="name", columns="step", values="value")
            tables.append(wide.loc[sorted(wide.index, key=lambda n: int(n.split(".")[2]))])
        out_wide, weight_wide = tables
        print(f"#### {path.name}: ‖dL/d(block output)‖ and ‖dL/d(mlp.c_proj)‖ per block\n")
        print("| block | " + " | ".join(f"step {s}: output, mlp.c_proj" for s in present) + " |")
        print("| ---: |" + " ---: |" * len(present))
        for (name, row), (_, wrow) in zip(out_wide.iterrows(), weight_wide.iterrows()):
            print(f"| {int(name.split('.')[2]) + 1} | "
                  + " | ".join(f"{_fmt(row[s])}, {_fmt(wrow[s])}" for s in present) + " |")
        first, last = out_wide.iloc[0], out_wide.iloc[-1]
        print("\nblock output gradient, " + ", ".join(
            f"step {s}: first / last block {first[s] / last[s]:.3g}, "
            f"x{math.exp(-_slope([math.log(v) for v in out_wide[s]])):.3f} per block toward the input"
            for s in present) + "\n")


def unigram_loss() -> float:
    """Cross-entropy (nats per byte) of the test split under the training split's byte
    frequencies (add-one smoothed): the loss of a model that ignores the context."""
    data = load_dataset("pystdlib")
    counts = torch.bincount(data.train.long(), minlength=256).double() + 1
    test = torch.bincount(data.test.long(), minlength=256).double()
    return float(-(test * (counts / counts.sum()).log()).sum() / test.sum())


def run_tables(args: argparse.Namespace) -> None:
    out = Path(args.out)
    unigram = unigram_loss()
    print(f"Byte frequencies alone (no context): test loss {unigram:.3f} nats, {unigram / math.log(2):.3f} bits per byte\n")
    steps = [int(s) for s in args.steps.split(",")]
    from gradsight.plots import training

    for folder in sorted(p for p in out.iterdir() if p.is_dir() and (p / "runs").is_dir()):
        print(f"## {folder.name}\n")
        # redrawn with this checkout's plots (bits per byte for language models)
        training.save_png(training.training_curves(_runs(folder)), folder / "figures" / "training-curves.png")
        _results_table(folder)
        _loss_at(folder, [0, 10, 50, 100, 150, 200, 300, 495])
        _grad_over_training(folder, [0, 5, 10, 20, 50, 100, 200, 495])
        runs = _runs(folder)
        if folder.name != "activations":
            continue
        layouts = [p for p in runs if not p.name.startswith("gpt_noskip")]
        _split_summary(layouts, steps)
        for path in layouts:
            if path.name.endswith("-6"):
                _split_table(path, steps)
        _noskip_table([p for p in runs if p.name.startswith("gpt_noskip")], steps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    init = sub.add_parser("init", help="gradient norms at initialization, and the figure")
    init.add_argument("--depths", default="6,12")
    init.add_argument("--seeds", type=int, default=4)
    init.add_argument("--batches", type=int, default=4)
    init.add_argument("--threads", type=int, default=1)
    init.add_argument("--width", type=int, default=64, help="model width (the recipe's models: 64)")
    init.add_argument("--heads", type=int, default=4)
    init.add_argument("--variants", default="all", help="comma-separated initializations, or all (draws the figure)")
    train = sub.add_parser("train", help="the training runs")
    train.add_argument("--out", default="runs/transformers")
    train.add_argument("--stages", default="activations,warmup")
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--warmup", type=int, default=100)
    train.add_argument("--depths", default="12")
    train.add_argument("--threads", type=int, default=1)
    train.add_argument("--overwrite", action="store_true")
    tables = sub.add_parser("tables", help="tables from the training runs' stores")
    tables.add_argument("--out", default="runs/transformers")
    tables.add_argument("--steps", default="0,100,495", help="recorded steps of the per-addition tables")
    args = parser.parse_args(argv)
    {"init": run_init, "train": run_train, "tables": run_tables}[args.stage](args)


if __name__ == "__main__":
    sys.exit(main())

"""``gradsight compare``: train plain and residual networks (or language models) of several depths side by side."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

from gradsight.cli import UserError


def _every(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        every = int(value)
    except ValueError:
        every = 0
    if every < 1:
        raise UserError(f"--every takes 'auto' or a positive integer; got {value!r}")
    return every


def canonical_command(name: str, params: dict[str, Any]) -> str:
    """The command line that reproduces this run, every setting spelled out."""
    args = ["gradsight", name]
    keys = ("models", "depths", "dataset", "epochs", "recipe", "context", "warmup", "seed", "device", "data_dir",
            "every", "histograms", "limit", "threads", "out")
    for key in keys:
        value = params.get(key)
        if value is None or (key == "every" and value == "auto"):
            continue
        args += [f"--{key.replace('_', '-')}", str(value)]
    for flag in ("no_download", "activations", "overwrite"):
        if params.get(flag):
            args.append(f"--{flag.replace('_', '-')}")
    return " ".join(shlex.quote(a) for a in args)


def print_summary(result: Any) -> None:
    """The results table and where everything was written."""
    from gradsight.train.compare import format_markdown

    out = result.out
    click.echo(format_markdown(result.table))
    click.echo("")
    click.echo(f"results: {out / 'results.md'}  {out / 'results.csv'}")
    figures = ", ".join(p.name for p in result.figures)
    click.echo(f"figures: {out / 'figures'}/  ({figures})")
    click.echo(f"runs:    {out / 'runs'}/  ({', '.join(p.name for p in result.run_dirs)})")
    if (out / "report.html").exists():
        click.echo(f"report:  {out / 'report.html'}")
    click.echo(f"inspect a run with: gradsight info {result.run_dirs[-1]}")


def write_report(result: Any) -> Path | None:
    """``report.html`` of the runs of a comparison, in its output directory; ``None``, with a
    warning on stderr, when it cannot be written (the results themselves are complete)."""
    from gradsight.report import write_report as write_html

    target = result.out / "report.html"
    try:
        return write_html(result.run_dirs, target)
    except Exception as exc:  # noqa: BLE001 - the comparison succeeded; say why the report is missing
        target.unlink(missing_ok=True)
        click.echo(f"gradsight: warning: could not write {target}: {exc}", err=True)
        return None


def finish(result: Any) -> None:
    """Write the report of a finished comparison and print where everything is."""
    write_report(result)
    print_summary(result)


def threads_option(fn):
    return click.option("--threads", type=click.IntRange(min=1), default=None,
                        help="CPU threads for torch (default: torch's choice). On a busy machine 1 can be much faster.")(fn)


@click.command()
@click.option("--models", default="plain,resnet", show_default=True,
              help="Comma-separated model families: plain, resnet, preresnet, mlp, resmlp; language models "
                   "(token_resmlp, gpt_preln, ...) for a text dataset.")
@click.option("--depths", default="20,56", show_default=True,
              help="Comma-separated depths; 6n+2 for the CNN families (20, 32, 44, 56, 110).")
@click.option("--dataset", default="mnist5k", show_default=True,
              help="mnist5k (offline), mnist or fashion-mnist; pystdlib (this Python's standard library as bytes, "
                   "offline) or text:PATH (a local text file or folder) for language models.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs per run [default: the recipe's].")
@click.option("--recipe", default="lecture", show_default=True,
              help="lecture (Adam 1e-3, batch 64, 10 epochs), he2016 (SGD 0.1 momentum 0.9, /10 at 50%/75%, wd 1e-4, "
                   "batch 128) or gpt (AdamW 1e-3, betas 0.9/0.95, wd 0.1 on matrices, batch 32 x 64 bytes, "
                   "100 batches per epoch, 5 epochs).")
@click.option("--context", type=click.IntRange(min=1), default=None,
              help="Language models: window length in bytes [default: the recipe's, 64].")
@click.option("--warmup", type=click.IntRange(min=0), default=None,
              help="Linear learning-rate warmup over the first STEPS steps (0: none) [default: the recipe's, none].")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/compare"), show_default=True,
              help="Output directory (must not exist unless --overwrite).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every run: weights and data order.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when available.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Folder with the MNIST/Fashion-MNIST IDX files.")
@click.option("--no-download", is_flag=True, help="Never download datasets; fail if the files are missing.")
@click.option("--every", default="auto", show_default=True,
              help="Record gradient statistics every k-th step, or 'auto' (first 10 steps, then about 100 more).")
@click.option("--activations", is_flag=True, help="Also record activation and residual-split statistics (slower).")
@click.option("--histograms", type=click.IntRange(min=1), default=None, metavar="K",
              help="Also record log2 gradient histograms and fp16/bf16/fp8 headroom at every K-th recorded step "
                   "(1: every recorded one); see gradsight plot --kind hist.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N training and test samples (bytes of a text dataset).")
@threads_option
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (once the new results are complete).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(models: str, depths: str, dataset: str, epochs: int | None, recipe: str, context: int | None,
            warmup: int | None, out: Path, seed: int, device: str, data_dir: Path | None, no_download: bool, every: str,
            activations: bool, histograms: int | None, limit: int | None, threads: int | None, overwrite: bool, quiet: bool) -> None:
    """Train every combination of --models and --depths on --dataset with the same seed
    and the same data order, and write a results table (Markdown and CSV), each run's
    store, a gradient-flow figure per run, one overlaying all runs, the training curves
    and report.html.

    \b
    Example:
      gradsight compare --models plain,resnet --depths 20,56 --dataset mnist5k \\
          --epochs 5 --recipe lecture --out runs/cmp
      gradsight compare --models gpt_preln,gpt_postln --depths 6,12 \\
          --dataset pystdlib --recipe gpt --warmup 100 --out runs/gpt
    """
    params = dict(locals())
    every_value = _every(every)
    import torch

    from gradsight.train.compare import compare

    if threads is not None:
        torch.set_num_threads(threads)
    params["threads"] = torch.get_num_threads()  # the quoted command names the count the runs used
    try:
        result = compare(
            models, depths, dataset, out=out, epochs=epochs, recipe=recipe, seed=seed, device=device,
            data_dir=data_dir, download=not no_download, every=every_value, activations=activations,
            histograms=histograms or False, limit=limit,
            overwrite=overwrite, progress=not quiet, command=canonical_command("compare", params),
            context=context, warmup=warmup,
        )
    except ValueError as exc:  # DatasetError included: bad input, nothing was written
        raise UserError(str(exc)) from None
    finish(result)

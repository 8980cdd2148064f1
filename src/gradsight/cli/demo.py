"""``gradsight demo``."""

from __future__ import annotations

from pathlib import Path

import click

from gradsight.cli import UserError


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Output directory (replaced if it exists).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs per network [default: 2, or 1 with --quick].")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every run: weights and data order.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when available.")
@click.option("--quick", is_flag=True, help="Seconds, not minutes: depths 8 and 14, 512 samples, 1 epoch.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads for torch. 1 keeps the demo within minutes on a small machine that is also "
                   "running anything else; more threads only help on idle cores.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(out: Path, epochs: int | None, seed: int, device: str, quick: bool, threads: int, quiet: bool) -> None:
    """The main job on the embedded MNIST sample: train plain and residual CNNs of
    20 and 56 layers (lecture recipe), record their gradients, and print the
    results table and where the figures and runs are."""
    import torch

    from gradsight.cli.compare import finish
    from gradsight.train.demo import run_demo

    torch.set_num_threads(threads)
    try:
        result = run_demo(out, epochs=epochs, seed=seed, device=device, quick=quick, progress=not quiet)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    finish(result)

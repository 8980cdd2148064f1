"""``gradsight demo``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Directory for the demo's runs.")
@click.option("--steps", default=300, show_default=True, type=click.IntRange(min=1), help="Training steps per model.")
@click.option("--depth", default=20, show_default=True, type=click.IntRange(min=2), help="Number of hidden layers.")
@click.option("--seed", default=0, show_default=True)
def command(out: Path, steps: int, depth: int, seed: int) -> None:
    """Train a plain and a residual deep MLP on a synthetic task with the
    monitor attached, record both runs, and print where they are."""
    from gradsight.demo import run_demo

    run_demo(out, steps=steps, depth=depth, seed=seed)

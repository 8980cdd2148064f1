"""``gradsight info RUN``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--stat", default="grad_norm", show_default=True, help="Statistic used to rank layers.")
@click.option("--top", default=3, show_default=True, type=click.IntRange(min=1), help="How many layers to show at each end.")
def command(run: Path, stat: str, top: int) -> None:
    """Summarize RUN: model, steps recorded, layers, and the layers with the
    smallest and largest gradients (mean over recorded steps)."""
    from gradsight.report_text import run_info

    click.echo(run_info(run, stat=stat, top=top))

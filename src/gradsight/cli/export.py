"""``gradsight export RUN --format csv|parquet -o FILE``."""

from __future__ import annotations

from pathlib import Path

import click

from gradsight.cli import UserError


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="File to write.")
@click.option("--level", type=click.Choice(["param", "layer", "model", "metric"]), multiple=True,
              help="Only these levels (repeatable). Default: all.")
@click.option("--stat", multiple=True, help="Only these statistics (repeatable). Default: all.")
def command(run: Path, fmt: str, output: Path, level: tuple[str, ...], stat: tuple[str, ...]) -> None:
    """Write the statistics of RUN as a long table (step, level, name, layer,
    depth, stat, value) to a CSV or Parquet file."""
    from gradsight.store.reader import open_run

    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("parquet export needs pyarrow: pip install 'gradsight[parquet]'") from None
    with open_run(run) as r:
        df = r.frame(level=list(level) or None, stat=list(stat) or None)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".partial")
    if fmt == "csv":
        df.to_csv(tmp, index=False)
    else:
        df.to_parquet(tmp, index=False)
    tmp.replace(output)
    click.echo(f"wrote {len(df):,} rows to {output}")

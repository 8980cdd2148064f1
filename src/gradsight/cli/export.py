"""``gradsight export RUN --format csv|parquet|tensorboard -o PATH``."""

from __future__ import annotations

from pathlib import Path

import click

from gradsight._files import atomic_path
from gradsight.cli import UserError
from gradsight.cli._args import require_stat
from gradsight.cli.plot import ROLE_CHOICES


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "tensorboard"]), default="csv",
              show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="File to write (csv, parquet) or directory for the event files (tensorboard).")
@click.option("--level", type=click.Choice(["param", "layer", "model", "metric"]), multiple=True,
              help="Only these levels (repeatable). Default: all; for tensorboard all but param.")
@click.option("--stat", multiple=True, help="Only these statistics (repeatable). Default: all.")
@click.option("--role", "roles", type=click.Choice(ROLE_CHOICES), multiple=True,
              help="Only rows of layers with these roles (repeatable; csv and parquet): embedding, norm, weighted, "
                   "head, scalar, other. Model and metric rows have no role and are left out. Default: all rows.")
def command(run: Path, fmt: str, output: Path, level: tuple[str, ...], stat: tuple[str, ...],
            roles: tuple[str, ...]) -> None:
    """Write the statistics of RUN as a long table (step, level, name, layer,
    depth, role, stat, value) to a CSV or Parquet file, or as TensorBoard event
    files (a scalar per level, statistic and name; per-step histograms across
    parameters) into a directory that TensorBoard can open."""
    from gradsight.store.reader import open_run

    if not output.name:
        raise UserError(f"-o {str(output)!r} names no file: give the file (or, for tensorboard, the directory) "
                        "to write, e.g. -o run.csv")
    role = None if not roles or "all" in roles else list(roles)
    if fmt == "tensorboard":
        if role is not None:
            raise UserError("--role applies to csv and parquet export")
        _export_tensorboard(run, output, level, stat)
        return
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("parquet export needs pyarrow: pip install 'gradsight[parquet]'") from None
    with open_run(run) as r:
        for name in stat:
            require_stat(r, name)
        df = r.frame(level=list(level) or None, stat=list(stat) or None, role=role)
    with atomic_path(output) as partial:
        if fmt == "csv":  # a forward rank is an integer (model and metric rows have none): "3", not "3.0"
            df.assign(depth=df["depth"].astype("Int64")).to_csv(partial, index=False)
        else:
            df.to_parquet(partial, index=False)
    click.echo(f"wrote {len(df):,} rows to {output}")


def _export_tensorboard(run: Path, output: Path, level: tuple[str, ...], stat: tuple[str, ...]) -> None:
    from gradsight.integrations.tensorboard import export_tensorboard
    from gradsight.store.reader import open_run

    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UserError("tensorboard export needs tensorboard: pip install 'gradsight[tensorboard]'") from None
    if output.exists() and not output.is_dir():
        raise UserError(f"{output} is a file; tensorboard export writes a directory of event files")
    with open_run(run) as r:
        for name in stat:
            require_stat(r, name)
        counts = export_tensorboard(r, output, levels=list(level) or None, stats=list(stat) or None)
    click.echo(
        f"wrote {counts['scalars']:,} scalars and {counts['histograms']:,} histograms "
        f"({counts['steps']:,} steps) to {output}"
    )

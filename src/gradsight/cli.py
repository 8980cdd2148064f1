"""The ``gradsight`` command line.

Every command turns bad input into a one-line ``gradsight: error: ...`` on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gradsight import __version__
from gradsight._errors import GradsightError


class UserError(click.ClickException):
    exit_code = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gradsight")
def cli() -> None:
    """gradsight: see how gradients flow through a PyTorch network.

    Record per-layer gradient statistics during training with
    ``gs.watch(model, run_dir=...)`` in Python, then inspect the run here.

    \b
    Examples:
      gradsight demo                      train small models and record runs
      gradsight info runs/exp1            summarize a recorded run
      gradsight export runs/exp1 --format csv -o exp1.csv
    """


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--stat", default="grad_norm", show_default=True, help="Statistic used to rank layers.")
@click.option("--top", default=3, show_default=True, type=click.IntRange(min=1), help="How many layers to show at each end.")
def info(run: Path, stat: str, top: int) -> None:
    """Summarize RUN: model, steps recorded, layers, and the layers with the
    smallest and largest gradients (mean over recorded steps)."""
    from gradsight.report_text import run_info

    click.echo(run_info(run, stat=stat, top=top))


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="File to write.")
@click.option("--level", type=click.Choice(["param", "layer", "model", "metric"]), multiple=True,
              help="Only these levels (repeatable). Default: all.")
@click.option("--stat", multiple=True, help="Only these statistics (repeatable). Default: all.")
def export(run: Path, fmt: str, output: Path, level: tuple[str, ...], stat: tuple[str, ...]) -> None:
    """Write the statistics of RUN as a long table (step, level, name, layer,
    depth, stat, value) to a CSV or Parquet file."""
    from gradsight.store.reader import open_run

    with open_run(run) as r:
        df = r.frame(level=list(level) or None, stat=list(stat) or None)
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("parquet export needs pyarrow: pip install 'gradsight[parquet]'") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".partial")
    if fmt == "csv":
        df.to_csv(tmp, index=False)
    else:
        df.to_parquet(tmp, index=False)
    tmp.replace(output)
    click.echo(f"wrote {len(df):,} rows to {output}")


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Directory for the demo's runs.")
@click.option("--steps", default=300, show_default=True, type=click.IntRange(min=1), help="Training steps per model.")
@click.option("--depth", default=20, show_default=True, type=click.IntRange(min=2), help="Number of hidden layers.")
@click.option("--seed", default=0, show_default=True)
def demo(out: Path, steps: int, depth: int, seed: int) -> None:
    """Train a plain and a residual deep MLP on a synthetic task with the
    monitor attached, record both runs, and print where they are."""
    from gradsight.demo import run_demo

    run_demo(out, steps=steps, depth=depth, seed=seed)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, mapping user errors to exit status 2."""
    try:
        cli.main(args=argv, prog_name="gradsight", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("gradsight: aborted", err=True)
        return 130
    except click.UsageError as exc:
        click.echo(f"gradsight: error: {exc.format_message()} (see 'gradsight --help')", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"gradsight: error: {exc.format_message()}", err=True)
        return 2
    except (GradsightError, FileNotFoundError, ValueError) as exc:
        click.echo(f"gradsight: error: {exc}", err=True)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

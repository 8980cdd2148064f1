"""``gradsight report RUN... -o report.html``."""

from __future__ import annotations

from pathlib import Path

import click

from gradsight.cli import UserError
from gradsight.cli._args import (GRAPH_BATCH, build, forward_errors, input_options, model_arg_option, parse_shape,
                                 resolve_input)


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("report.html"), show_default=True,
              help="HTML file to write.")
@click.option("--stat", default="grad_rms", show_default=True,
              help="Statistic shown first (grad_norm for runs without it; any recorded statistic can be picked "
                   "on the page). The layer charts show the weighted layers and the head first, every role a click away.")
@click.option("--title", default=None, help="Page title.")
@click.option("--graph", "graph_spec", default=None, metavar="MODEL_SPEC",
              help="Also draw the computation graph of this model (see 'gradsight graph --help'), coloured by "
                   "each run. Runs whose directory holds a graph.json show that graph anyway.")
@input_options(shape_default="the registered model's input; for --graph")
@model_arg_option
def command(runs: tuple[Path, ...], output: Path, stat: str, title: str | None, graph_spec: str | None,
            input_shape: str | None, input_dtype: str | None, vocab_size: int | None,
            model_args: tuple[str, ...]) -> None:
    """Write one self-contained HTML report of RUNS (run directories, or
    directories holding runs such as the output of 'gradsight compare').

    The page has the run summaries, the results table of 'gradsight compare'
    when present, interactive charts (hover for layer names and values), the
    computation graph and the diagnosis. It needs no network access.
    """
    from gradsight.report.html import write_report

    if output.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"cannot write {output.name}: the report is HTML, name it *.html")
    graphs = None
    if graph_spec is not None:
        from gradsight.compgraph import graph

        model, info = build(graph_spec, model_args, parse_shape(input_shape))
        inputs = resolve_input(info, input_shape, input_dtype, vocab_size).batch(GRAPH_BATCH)
        with forward_errors(inputs.shape):
            graphs = graph(model, inputs, probe=False)
    path = write_report(runs, output, stat=stat, title=title, graphs=graphs)
    size = path.stat().st_size
    click.echo(f"wrote {path} ({size / 1e6:.1f} MB)")

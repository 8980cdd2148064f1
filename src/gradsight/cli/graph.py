"""``gradsight graph MODEL_SPEC -o FILE.svg [--run RUN --stat grad_norm]``."""

from __future__ import annotations

from pathlib import Path

import click

from gradsight.cli import UserError
from gradsight.cli._args import (GRAPH_BATCH, build, forward_errors, input_options, model_arg_option, parse_shape,
                                 require_stat, resolve_input)


@click.command()
@click.argument("model_spec")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="File to write: .svg, .png, .pdf (rendered with Graphviz) or .dot.")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=None,
              help="Colour nodes by this run's statistic (mean over its steps).")
@click.option("--stat", default="grad_norm", show_default=True, help="Statistic to colour by.")
@click.option("--view", type=click.Choice(["autograd", "module"]), default="autograd", show_default=True,
              help="autograd: every operation, parameters as leaves; module: operations folded into modules.")
@click.option("--max-depth", type=click.IntRange(min=0), default=None,
              help="Module view: fold modules nested deeper than this many levels (1 = the model's children).")
@input_options
@model_arg_option
@click.option("--no-probe", is_flag=True,
              help="Without --run, do not colour by the gradient of one backward pass of sum(output).")
def command(model_spec: str, output: Path, run_dir: Path | None, stat: str, view: str, max_depth: int | None,
            input_shape: str | None, input_dtype: str | None, vocab_size: int | None, model_args: tuple[str, ...],
            no_probe: bool) -> None:
    """Draw the computation graph of one forward pass of MODEL_SPEC.

    MODEL_SPEC is a registered model (resnet20, plain56, simple_resnet, ...), a
    registered model with arguments (resnet:depth=56), or package.module:callable
    with optional arguments (pkg.nets:Net:width=32). The graph is traced on a batch
    of two samples of --input-shape (default: the registered model's input); give
    --input-dtype long --vocab-size N for a language model. Skip connections of the
    residual blocks are dashed and orange; nodes are coloured on a log scale by
    --stat of --run, or else by the gradient norm of one backward pass.

    \b
    Examples:
      gradsight graph simple_resnet -o graph.svg
      gradsight graph resnet20 --view module --max-depth 2 -o resnet20.png
      gradsight graph resnet20 --run runs/resnet20 --stat grad_norm -o g.svg
      gradsight graph mypkg.lm:tiny_gpt --input-shape 16 --input-dtype long --vocab-size 100 -o lm.svg
    """
    from gradsight.compgraph import graph
    from gradsight.compgraph.render import FORMATS

    if output.suffix.lower().lstrip(".") not in (*FORMATS, "dot", "gv"):
        raise UserError(f"cannot write {output.name}: use .svg, .png, .pdf or .dot")
    shape = parse_shape(input_shape)
    model, info = build(model_spec, model_args, shape)
    x = resolve_input(info, shape, input_dtype, vocab_size).batch(GRAPH_BATCH)
    run = None
    if run_dir is not None:
        from gradsight.store.reader import open_run

        run = open_run(run_dir)
        require_stat(run, stat, "layer")
    with forward_errors(x.shape):
        g = graph(model, x, run, stat=stat, view=view, max_nesting=max_depth, probe=not no_probe)
    if run is not None and not any(n.value is not None for n in g.nodes):
        click.echo(f"note: none of the layers of {run_dir} match the modules of {model_spec}; nodes are not coloured",
                   err=True)
    written = g.render(output)
    if written != output:
        click.echo(f"Graphviz 'dot' was not found, so the graph was written as DOT to {written}; render it with "
                   f"'dot -T{output.suffix.lstrip('.').lower()} {written} -o {output}' after installing Graphviz "
                   "(apt-get install graphviz)")
    else:
        click.echo(f"wrote {written} ({len(g.nodes)} nodes, {len(g.skip_edges)} skip edges)")

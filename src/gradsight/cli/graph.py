"""``gradsight graph MODEL_SPEC -o FILE.svg [--run RUN --stat grad_norm]``."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

import click

from gradsight.cli import UserError


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _kwargs(text: str) -> dict[str, Any]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, val = part.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UserError(f"bad model argument {part!r}: write KEY=VALUE, e.g. depth=56")
        out[key.strip()] = _value(val.strip())
    return out


def build_model(spec: str, extra: dict[str, Any] | None = None):
    """A model from a spec: a registered name (``resnet20``), a name with arguments
    (``resnet:depth=56,width=16``), or ``package.module:callable`` optionally with
    arguments (``torchvision.models:resnet18:num_classes=10``); ``extra`` adds arguments."""
    from torch import nn

    from gradsight.models import create_model, is_model, list_models

    name, _, rest = spec.partition(":")
    kwargs = dict(extra or {})
    if is_model(name):
        kwargs = {**_kwargs(rest), **kwargs}
        try:
            return create_model(name, **kwargs)
        except (TypeError, ValueError) as exc:
            raise UserError(f"cannot build {spec!r}: {exc}") from None
    if rest:
        attr, _, args = rest.partition(":")
        kwargs = {**_kwargs(args), **kwargs}
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"cannot import {name!r} for model {spec!r}: {exc}") from None
        factory = getattr(module, attr, None)
        if factory is None:
            raise UserError(f"{name!r} has no attribute {attr!r}")
        if isinstance(factory, nn.Module):
            return factory
        try:
            model = factory(**kwargs) if callable(factory) else factory
        except TypeError as exc:
            raise UserError(f"cannot build {spec!r}: {exc} (pass arguments as {name}:{attr}:key=value,...)") from None
        if not isinstance(model, nn.Module):
            raise UserError(f"{spec!r} did not give a torch.nn.Module")
        return model
    raise UserError(f"unknown model {spec!r}: use a registered name ({', '.join(list_models()[:8])}, ...; "
                    "see gradsight.models.list_models()) or package.module:callable")


def make_input(model, shape: str | None):
    """A random input of ``shape`` (``"2,3,32,32"``), or one guessed from the model's first layer."""
    import torch

    from gradsight.graph import trace_inputs_for

    if shape:
        try:
            dims = [int(s) for s in shape.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"bad --input-shape {shape!r}: write integers like 2,3,32,32") from None
        if not dims or any(d <= 0 for d in dims):
            raise UserError(f"bad --input-shape {shape!r}: dimensions must be positive")
        return torch.randn(*dims)
    try:
        return trace_inputs_for(model)
    except ValueError as exc:
        raise UserError(f"{exc} (--input-shape)") from None


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
              help="Module view: fold modules nested deeper than this.")
@click.option("--input-shape", default=None, help="Input shape, e.g. 2,3,32,32 (default: guessed).")
@click.option("--arg", "args", multiple=True, metavar="KEY=VALUE",
              help="Keyword argument for the model factory (repeatable).")
@click.option("--no-probe", is_flag=True,
              help="Without --run, do not colour by the gradient of one backward pass of sum(output).")
def command(model_spec: str, output: Path, run_dir: Path | None, stat: str, view: str, max_depth: int | None,
            input_shape: str | None, args: tuple[str, ...], no_probe: bool) -> None:
    """Draw the computation graph of one forward pass of MODEL_SPEC.

    MODEL_SPEC is a registered model (resnet20, plain56, simple_resnet, ...), a
    registered model with arguments (resnet:depth=56,width=16), or
    package.module:callable with optional arguments (pkg.nets:Net:width=32).
    Skip connections are dashed and orange; nodes are coloured on a log scale by
    --stat of --run, or else by the gradient norm of one backward pass.

    \b
    Examples:
      gradsight graph simple_resnet -o graph.svg
      gradsight graph resnet20 --view module --max-depth 2 -o resnet20.png
      gradsight graph resnet20 --run runs/resnet20 --stat grad_norm -o g.svg
    """
    from gradsight.graph import graph
    from gradsight.graph.render import FORMATS

    if output.suffix.lower().lstrip(".") not in (*FORMATS, "dot", "gv"):
        raise UserError(f"cannot write {output.name}: use .svg, .png, .pdf or .dot")
    extra = _kwargs(",".join(args)) if args else None
    model = build_model(model_spec, extra)
    x = make_input(model, input_shape)
    run = None
    if run_dir is not None:
        from gradsight.store.reader import open_run

        run = open_run(run_dir)
        if stat not in run.stats("layer"):
            raise UserError(f"run {run_dir} has no layer statistic {stat!r}; available: "
                            f"{', '.join(run.stats('layer')) or 'none'}")
    try:
        g = graph(model, x, run, stat=stat, view=view, max_depth=max_depth, probe=not no_probe)
    except (RuntimeError, IndexError, ValueError) as exc:
        raise UserError(f"the forward pass failed on an input of shape {tuple(x.shape)}: {exc} "
                        "(give --input-shape)") from None
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

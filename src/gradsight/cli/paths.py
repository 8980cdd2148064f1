"""``gradsight paths MODEL``: gradient per path length in a residual network (Veit et al. 2016)."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any

import click

from gradsight.cli import UserError


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(size < 1 for size in shape):
        raise UserError(f"--input-shape takes positive comma-separated sizes, e.g. 1,28,28; got {text!r}")
    return shape


def _model_args(pairs: tuple[str, ...]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UserError(f"--arg takes KEY=VALUE, e.g. --arg in_channels=1; got {pair!r}")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value  # a bare word: a string such as norm=batch
    return kwargs


def _build(spec: str, shape: tuple[int, ...] | None, kwargs: dict[str, Any]) -> Any:
    """Load the model; for a registry model whose first layer does not fit ``shape``, rebuild it
    with ``in_channels`` / ``in_features`` taken from the shape (unless given with --arg)."""
    from torch import nn

    from gradsight.modelspec import load_model

    try:
        model = load_model(spec, **kwargs)
        if shape is None or ":" in spec:
            return model
        first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
        if isinstance(first, nn.Conv2d) and "in_channels" not in kwargs and first.in_channels != shape[0]:
            model = load_model(spec, **kwargs, in_channels=shape[0])
        elif isinstance(first, nn.Linear) and "in_features" not in kwargs and first.in_features != math.prod(shape):
            model = load_model(spec, **kwargs, in_features=math.prod(shape))
    except TypeError as exc:
        raise UserError(f"cannot build {spec!r} with these arguments: {exc}") from None
    return model


@click.command(short_help="Gradient per path length in a residual network.")
@click.argument("model_spec", metavar="MODEL")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the figure here (PNG, PDF, SVG); only the summary is printed without it.")
@click.option("--samples", default=3, show_default=True, type=click.IntRange(min=1),
              help="Random block sets per path length.")
@click.option("--input-shape", help="Shape of one input without the batch dimension, e.g. 1,28,28 "
              "[default: guessed from the first layer; 32x32 images for conv nets].")
@click.option("--batch-size", default=2, show_default=True, type=click.IntRange(min=1),
              help="Random inputs per pass.")
@click.option("--arg", "model_args", multiple=True, metavar="KEY=VALUE",
              help="Keyword for the model factory, e.g. --arg norm=none; repeatable.")
@click.option("--eval", "eval_mode", is_flag=True,
              help="Measure in eval mode (BN running statistics) instead of training mode (batch statistics).")
@click.option("--seed", default=0, show_default=True, help="Seed for the weights, inputs and sampled paths.")
def command(model_spec: str, output: Path | None, samples: int, input_shape: str | None, batch_size: int,
            model_args: tuple[str, ...], eval_mode: bool, seed: int) -> None:
    """Measure how much gradient flows along paths through k = 0..n residual branches of MODEL
    (a registered name such as resnet110, or package.module:factory), at initialization, as in
    Veit et al. (2016), Fig. 6: the share of paths of each length, the gradient magnitude of one
    path, and their product, which shows the path lengths that carry the gradient.

    \b
    Examples:
      gradsight paths resnet110 -o paths.png
      gradsight paths resnet56 --input-shape 1,28,28 --samples 5 -o paths.png
      gradsight paths resmlp --arg depth=110 --arg width=64 --arg norm=batch -o paths.png
    """
    import torch

    from gradsight.probes import path_lengths

    shape = _shape(input_shape)
    torch.manual_seed(seed)
    model = _build(model_spec, shape, _model_args(model_args))
    model.train(not eval_mode)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if tqdm is None:
            return
        if bar is None:
            bar = tqdm(total=total, desc="paths", unit="pass", leave=False)
        bar.update(1)

    try:
        result = path_lengths(model, samples=samples, seed=seed, input_shape=shape,
                              batch_size=batch_size, progress=progress)
    except RuntimeError as exc:  # typically a shape mismatch between input and model
        raise UserError(f"{model_spec} failed on inputs of shape {shape or 'guessed'}: "
                        f"{str(exc).splitlines()[0]} (try --input-shape)") from None
    finally:
        if bar is not None:
            bar.close()

    first, last = result.effective_range(0.9)
    magnitude = result.magnitude
    click.echo(f"{model_spec}: {result.n_blocks} residual blocks, {samples} sampled path(s) per length, "
               f"{'eval' if eval_mode else 'training'} mode")
    click.echo(f"gradient magnitude of one path: {magnitude[0]:.3g} (k=0), "
               f"{magnitude[result.n_blocks // 2]:.3g} (k={result.n_blocks // 2}), "
               f"{magnitude[-1]:.3g} (k={result.n_blocks})")
    click.echo(f"gradient per path length peaks at k = {result.peak_length}, "
               f"mean k = {result.mean_length:.1f}, 90% from k = {first} to {last}")
    if output is not None:
        from gradsight.plots.probes import plot_path_lengths

        fig = plot_path_lengths(result, title=f"{model_spec}: gradient per path length "
                                f"({result.n_blocks} blocks, {samples} samples per length)")
        fig.savefig(output, dpi=120)
        click.echo(f"wrote {output}")

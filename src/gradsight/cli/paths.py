"""``gradsight paths MODEL``: gradient per path length in a residual network (Veit et al. 2016)."""

from __future__ import annotations

from pathlib import Path

import click

from gradsight._files import save_figure
from gradsight.cli import UserError
from gradsight.cli._args import build, input_options, model_arg_option, parse_shape, resolve_input


@click.command(short_help="Gradient per path length in a residual network.")
@click.argument("model_spec", metavar="MODEL")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the figure here (PNG, PDF, SVG); only the summary is printed without it.")
@click.option("--samples", default=3, show_default=True, type=click.IntRange(min=1),
              help="Random block sets per path length.")
@input_options
@click.option("--batch-size", default=2, show_default=True, type=click.IntRange(min=1),
              help="Random inputs per pass.")
@model_arg_option
@click.option("--eval", "eval_mode", is_flag=True,
              help="Measure in eval mode (BN running statistics) instead of training mode (batch statistics).")
@click.option("--seed", default=0, show_default=True, help="Seed for the weights, inputs and sampled paths.")
def command(model_spec: str, output: Path | None, samples: int, input_shape: str | None, input_dtype: str | None,
            vocab_size: int | None, batch_size: int, model_args: tuple[str, ...], eval_mode: bool, seed: int) -> None:
    """Measure how much gradient flows along paths through k = 0..n residual branches of MODEL
    (a registered name such as resnet110, resnet:depth=56, or package.module:factory), at
    initialization, as in Veit et al. (2016), Fig. 6: the share of paths of each length, the
    gradient magnitude of one path, and their product, which shows the path lengths that carry
    the gradient. Residual blocks are the modules whose output adds their input to a branch,
    found in the autograd graph, so any residual network works (e.g. torchvision's resnet18).

    \b
    Examples:
      gradsight paths resnet110 -o paths.png
      gradsight paths resnet56 --input-shape 1,28,28 --samples 5 -o paths.png
      gradsight paths resmlp --arg depth=110 --arg width=64 --arg norm=batch -o paths.png
      gradsight paths torchvision.models:resnet18 --input-shape 3,64,64 -o paths.png
    """
    import torch

    from gradsight.probes import path_lengths

    shape = parse_shape(input_shape)
    torch.manual_seed(seed)
    model, info = build(model_spec, model_args, shape)
    sample = resolve_input(info, shape, input_dtype, vocab_size)
    inputs = sample.batch(batch_size, generator=torch.Generator().manual_seed(seed))
    param = next(model.parameters(), None)
    if param is not None:
        inputs = inputs.to(param.device, param.dtype if sample.is_float else inputs.dtype)
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
        result = path_lengths(model, inputs, samples=samples, seed=seed, progress=progress)
    except RuntimeError as exc:  # typically a shape mismatch between input and model
        raise UserError(f"{model_spec} failed on inputs of shape {sample.describe()}: "
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
        save_figure(fig, output, dpi=120)
        click.echo(f"wrote {output}")

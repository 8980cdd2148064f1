"""``gradsight shattering``: shattered gradients of plain and residual MLPs (Balduzzi et al. 2017)."""

from __future__ import annotations

from pathlib import Path

import click

from gradsight._files import save_figure
from gradsight.cli import UserError
from gradsight.cli._args import parse_int_list


@click.command(short_help="Shattered gradients of plain vs residual MLPs.")
@click.option("--depths", default="2,8,24", show_default=True,
              help="Plain MLPs: numbers of linear layers (even), comma-separated; '' for none.")
@click.option("--blocks", default="2,8,50", show_default=True,
              help="Residual MLPs: numbers of two-layer residual blocks, comma-separated; '' for none.")
@click.option("--width", default=200, show_default=True, type=click.IntRange(min=1), help="Hidden width.")
@click.option("--points", default=256, show_default=True, type=click.IntRange(min=8),
              help="Evenly spaced inputs in [-2, 2].")
@click.option("--norm", default="batch", show_default=True, type=click.Choice(["batch", "layer", "none"]),
              help="Normalization after every hidden linear layer.")
@click.option("--seed", default=0, show_default=True, help="Seed for the weights.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the figure here (PNG, PDF, SVG); only the table is printed without it.")
def command(depths: str, blocks: str, width: int, points: int, norm: str, seed: int, output: Path | None) -> None:
    """Plot dy/dx of scalar ReLU networks over x in [-2, 2] and its autocorrelation, for plain
    and residual MLPs at initialization (He init, biases, batch norm by default), and print the
    lag-1 autocorrelation of each: about 0 is white noise (shattered), about 1 brown noise.

    \b
    Example:
      gradsight shattering --depths 2,8,24 --blocks 2,8,50 -o shattering.png
    """
    import torch

    from gradsight.models import create_model
    from gradsight.probes import shattering

    plain_depths = parse_int_list(depths, "--depths")
    residual_blocks = parse_int_list(blocks, "--blocks")
    bad = [d for d in plain_depths if d < 2 or d % 2]
    if bad:
        raise UserError(f"--depths counts linear layers and must be even numbers >= 2; got {bad}")
    if any(b < 1 for b in residual_blocks):
        raise UserError(f"--blocks must be >= 1; got {residual_blocks}")
    if not plain_depths and not residual_blocks:
        raise UserError("nothing to do: give --depths or --blocks")

    networks = [(f"plain, {d} layers", "mlp", d) for d in plain_depths]
    networks += [(f"residual, {b} blocks", "resmlp", 2 * b + 2) for b in residual_blocks]
    results = {}
    for label, name, depth in networks:
        torch.manual_seed(seed)
        model = create_model(name, depth=depth, width=width, in_features=1, num_classes=1,
                             norm=norm, bias=True, init="he")
        results[label] = shattering(model, n_points=points)

    label_width = max(len(label) for label in results)
    click.echo(f"{'network':<{label_width}}  {'layers':>6}  {'lag-1 r':>7}  {'flatness':>8}")
    for (label, _, depth), result in zip(networks, results.values()):
        click.echo(f"{label:<{label_width}}  {depth:>6}  {result.lag1:>7.3f}  {result.spectral_flatness:>8.3f}")
    click.echo(f"white noise: lag-1 r = 0 +- {2 / points ** 0.5:.2f} (95%), flatness ~ 0.56; "
               "brown noise: lag-1 r ~ 1, flatness ~ 0")
    if output is not None:
        from gradsight.plots.probes import plot_shattering

        fig = plot_shattering(results)
        fig.suptitle(f"dy/dx at initialization (width {width}, norm={norm}, seed {seed})", fontsize=10)
        save_figure(fig, output, dpi=120)
        click.echo(f"wrote {output}")

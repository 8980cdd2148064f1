"""``gradsight probe MODEL_SPEC``."""

from __future__ import annotations

from pathlib import Path

import click

from gradsight._files import atomic_path, save_figure
from gradsight.cli import UserError
from gradsight.cli._args import build, input_options, model_arg_option, parse_shape, resolve_input


@click.command()
@click.argument("model_spec")
@input_options
@model_arg_option
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=2))
@click.option("--seed", default=0, show_default=True)
@click.option("--eval", "eval_mode", is_flag=True, help="Probe in eval mode (batch norm uses running statistics).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write the Signal Propagation Plot here (png/svg/pdf).")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Write the per-module table as CSV.")
def command(model_spec: str, input_shape: str | None, input_dtype: str | None, vocab_size: int | None,
            model_args: tuple[str, ...], batch_size: int, seed: int, eval_mode: bool, output: Path | None,
            csv_path: Path | None) -> None:
    """Probe a model at initialization: one forward pass on a unit-Gaussian batch
    and one backward pass from a unit-Gaussian output gradient.

    Prints, per residual block (or per layer when there are none), the forward
    signal (average squared channel mean, channel variance, residual-branch
    variance, RMS of the stream before the addition) and the backward signal (gradient norm at the block output, and the
    skip/branch split of the gradient reaching its input). MODEL_SPEC is a
    registered model, with optional arguments (resnet:depth=56), or
    package.module:factory; the batch holds --batch-size samples of --input-shape
    (default: the registered model's input).
    """
    import torch

    from gradsight.probes.probe import probe

    shape = parse_shape(input_shape)
    model, info = build(model_spec, model_args, shape)
    sample = resolve_input(info, shape, input_dtype, vocab_size)
    if eval_mode:
        model.eval()
    torch.manual_seed(seed)
    inputs = None if sample.is_float else sample.batch(batch_size, generator=torch.Generator().manual_seed(seed))
    try:
        table = probe(model, inputs, input_shape=sample.shape, batch_size=batch_size, seed=seed)
    except RuntimeError as exc:
        raise UserError(f"the model does not accept input of shape {sample.describe()}: "
                        f"{str(exc).splitlines()[0]}") from None
    kind = "block" if (table.kind == "block").any() else "layer"
    rows = table[table.kind == kind]
    cols = ["depth", "name", "act_mean_sq", "act_var", "act_saturated", "branch_var", "stream_rms", "out_grad_norm",
            "skip_grad_norm", "branch_grad_norm", "skip_branch_cos"]
    cols = [c for c in cols if rows[c].notna().any()]
    click.echo(rows[cols].to_string(index=False, float_format=lambda v: f"{v:.3e}"))
    if csv_path is not None:
        with atomic_path(csv_path) as partial:
            table.to_csv(partial, index=False)
        click.echo(f"table written to {csv_path}")
    if output is not None:
        from gradsight.plots.probes import plot_signal_propagation

        fig = plot_signal_propagation(table, title=f"{model_spec}: signal propagation at initialization")
        save_figure(fig, output, dpi=120)
        click.echo(f"figure written to {output}")

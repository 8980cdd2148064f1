"""``gradsight probe MODEL_SPEC``."""

from __future__ import annotations

from pathlib import Path

import click

from gradsight.cli import UserError


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise UserError(f"--input-shape must be comma-separated integers such as 1,28,28, got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise UserError(f"--input-shape must be positive integers such as 1,28,28, got {text!r}")
    return shape


@click.command()
@click.argument("model_spec")
@click.option("--input-shape", default="1,28,28", show_default=True, help="Shape of one input sample.")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=2))
@click.option("--seed", default=0, show_default=True)
@click.option("--eval", "eval_mode", is_flag=True, help="Probe in eval mode (batch norm uses running statistics).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write the Signal Propagation Plot here (png/svg/pdf).")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Write the per-module table as CSV.")
def command(model_spec: str, input_shape: str, batch_size: int, seed: int, eval_mode: bool, output: Path | None,
            csv_path: Path | None) -> None:
    """Probe a model at initialization: one forward pass on a unit-Gaussian batch
    and one backward pass from a unit-Gaussian output gradient.

    Prints, per residual block (or per layer when there are none), the forward
    signal (average squared channel mean, channel variance, residual-branch
    variance) and the backward signal (gradient norm at the block output, and the
    skip/branch split of the gradient reaching its input). MODEL_SPEC is a
    registry name (see 'gradsight compare --help') or package.module:factory.
    """
    import torch

    from gradsight.modelspec import load_model
    from gradsight.probes.probe import probe

    shape = parse_shape(input_shape)
    kwargs = {"in_channels": shape[0]} if len(shape) == 3 else {}
    try:
        model = load_model(model_spec, **kwargs)
    except TypeError:
        model = load_model(model_spec)
    if eval_mode:
        model.eval()
    torch.manual_seed(seed)
    try:
        table = probe(model, input_shape=shape, batch_size=batch_size, seed=seed)
    except RuntimeError as exc:
        raise UserError(f"the model does not accept input of shape {shape}: {str(exc).splitlines()[0]}") from None
    kind = "block" if (table.kind == "block").any() else "layer"
    rows = table[table.kind == kind]
    cols = ["depth", "name", "act_mean_sq", "act_var", "branch_var", "out_grad_norm", "skip_grad_norm",
            "branch_grad_norm", "skip_branch_cos"]
    cols = [c for c in cols if rows[c].notna().any()]
    click.echo(rows[cols].to_string(index=False, float_format=lambda v: f"{v:.3e}"))
    if csv_path is not None:
        table.to_csv(csv_path, index=False)
        click.echo(f"table written to {csv_path}")
    if output is not None:
        from gradsight.plots.probes import plot_signal_propagation

        fig = plot_signal_propagation(table, title=f"{model_spec}: signal propagation at initialization")
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=120)
        click.echo(f"figure written to {output}")

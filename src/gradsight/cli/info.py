"""``gradsight info RUN``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from gradsight._text import printable
from gradsight.cli._args import require_stat
from gradsight.cli.plot import ROLE_CHOICES

if TYPE_CHECKING:
    from gradsight.store.query import RunSummary


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--stat", default="grad_rms", show_default=True,
              help="Statistic used to rank layers (grad_rms: per element, comparable across layer sizes).")
@click.option("--role", "roles", type=click.Choice(ROLE_CHOICES), multiple=True,
              help="Layers to rank by role (repeatable), or all. Default: weighted and head.")
@click.option("--top", default=3, show_default=True, type=click.IntRange(min=1), help="How many layers to show at each end.")
def command(run: Path, stat: str, roles: tuple[str, ...], top: int) -> None:
    """Summarize RUN (a run directory, or a folder holding one run): model, steps recorded, layers by role, and the layers with the
    smallest and largest gradients (mean over recorded steps; by default among the
    weighted layers and the head)."""
    from gradsight.store.query import DEFAULT_ROLES, run_summary
    from gradsight.store.reader import open_run

    with open_run(run) as r:
        if r.stats("layer"):  # (a run of a model with nothing trainable has no layer rows at all)
            require_stat(r, stat, "layer")
        summary = run_summary(r, stat, role=roles or DEFAULT_ROLES)
    click.echo(printable(info_text(summary, top=top)))


def info_text(s: RunSummary, *, top: int = 3) -> str:
    """The lines ``gradsight info`` prints of a run summary."""
    from gradsight.display import display_name
    from gradsight.store.roles import role_label

    steps = s.steps
    lines = [
        f"run:        {s.path}",
        f"model:      {s.model}",
        f"status:     {s.status}" + (f" ({s.error})" if s.error else ""),
        f"started:    {s.start}   ended: {s.end}",
        f"parameters: {s.num_params:,} ({s.num_trainable:,} trainable, {s.num_tensors} tensors)",
        f"layers:     {s.num_layers} (depth order from {s.depth_source})"
        + (f"; {', '.join(f'{n} {r}' for r, n in s.role_counts.items())}" if s.role_counts else ""),
        f"steps:      {len(steps)} recorded" + (f", {steps[0]}..{steps[-1]}" if steps else ""),
    ]
    if s.layers is not None and not s.layers.empty:
        ranked = s.layers.dropna(subset=["mean"]).sort_values("mean")
        width = max((len(display_name(n)) for n in ranked["name"]), default=10)

        def rows(df):
            return [f"  {int(r.depth):>4}  {display_name(r.name):<{width}}  {r.role:<9}  {r.mean:.3e}"
                    for r in df.itertuples()]

        lines.append(f"smallest mean {s.stat} among {role_label(s.roles)} (depth, layer, role, value):")
        lines += rows(ranked.head(top))
        lines.append(f"largest mean {s.stat}:")
        lines += rows(ranked.tail(top).iloc[::-1])
    return "\n".join(lines)

"""``gradsight plot RUN... --kind flow|heatmap|bands|update|nonfinite|compare|sweep -o FILE``."""

from __future__ import annotations

from pathlib import Path

import click

from gradsight.cli import UserError

FORMATS = (".png", ".svg", ".pdf")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--stat", default="grad_norm", show_default=True,
              help="Statistic to draw (grad_norm, grad_rms, update_ratio, an activation statistic, ...).")
@click.option("--kind", type=click.Choice(["flow", "heatmap", "bands", "update", "nonfinite", "compare", "sweep"]),
              default="flow", show_default=True,
              help="flow: by layer, several steps overlaid; heatmap: layer x step; bands: spread across layers "
                   "over time; update: update ratio per layer; nonfinite: NaN/Inf steps; compare: several runs "
                   "by relative depth; sweep: first/last layer ratio against depth.")
@click.option("--level", default="layer", show_default=True,
              help="Rows to draw: layer, param, or a module level (module, block).")
@click.option("--step", "steps", type=int, multiple=True, help="flow: overlay these steps (repeatable).")
@click.option("--title", default=None, help="Figure title (single figure).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Image file to write: .png, .svg or .pdf.")
def command(runs: tuple[Path, ...], stat: str, kind: str, level: str, steps: tuple[int, ...], title: str | None,
            output: Path) -> None:
    """Draw a figure of one or more recorded RUNS to an image file.

    \b
    Examples:
      gradsight plot runs/plain20 --kind flow -o flow.png
      gradsight plot runs/plain20 runs/resnet20 --kind heatmap -o heat.svg
      gradsight plot runs/compare --kind compare --stat grad_norm -o compare.pdf
    """
    import matplotlib

    from gradsight.plots._figure import STYLE
    from gradsight.store.query import expand_runs

    if output.suffix.lower() not in FORMATS:
        raise UserError(f"cannot write {output.name}: the output must end in .png, .svg or .pdf")
    with matplotlib.rc_context(STYLE):
        fig = _figure(expand_runs(runs), stat, kind, level, steps, title)
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=150, bbox_inches="tight")
    click.echo(f"wrote {output}")


def _figure(run_list: list, stat: str, kind: str, level: str, steps: tuple[int, ...], title: str | None):
    from matplotlib.figure import Figure

    import gradsight.plots as plots

    if kind == "update" and stat == "grad_norm":
        stat = "update_ratio"
    if kind not in ("nonfinite",):
        for run in run_list:
            available = run.stats(level)
            if stat not in available:
                raise UserError(f"run {run.path} has no statistic {stat!r} at level {level!r}; "
                                f"available: {', '.join(available) or 'none'}")
    fn = plots.KINDS[kind]
    if kind in plots.MULTI_RUN_KINDS:
        fig = fn(run_list, stat, level=level, title=title)
    elif kind == "nonfinite":
        if len(run_list) == 1:
            fig = fn(run_list[0], stat, title=title)
        else:
            fig = Figure(figsize=(9.0, 3.4 * len(run_list)), layout="constrained")
            for run, ax in zip(run_list, fig.subplots(len(run_list), 1, squeeze=False)[:, 0]):
                fn(run, stat, ax=ax)
    else:
        kwargs = {"level": level}
        if kind == "flow" and steps:
            kwargs["steps"] = list(steps)
        if kind == "update":
            kwargs["stat"] = stat
        args = () if kind == "update" else (stat,)
        if len(run_list) == 1:
            fig = fn(run_list[0], *args, title=title, **kwargs)
        else:
            n_layers = max(len(r.layers()) for r in run_list)
            width = min(16.0, max(9.0, 0.22 * n_layers + 3)) if kind == "flow" else 10.0
            height = 4.6 if kind == "flow" else min(12.0, max(3.4, 0.14 * n_layers + 1.8)) if kind == "heatmap" else 4.0
            fig = Figure(figsize=(width, height * len(run_list)), layout="constrained")
            for run, ax in zip(run_list, fig.subplots(len(run_list), 1, squeeze=False)[:, 0]):
                fn(run, *args, ax=ax, **kwargs)
    return fig

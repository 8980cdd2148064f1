"""``gradsight plot RUN... --kind flow|heatmap|bands|update|nonfinite|compare|sweep|hist|time|noise -o FILE``."""

from __future__ import annotations

from pathlib import Path

import click

from gradsight._files import save_figure
from gradsight.cli import UserError
from gradsight.cli._args import require_stat

FORMATS = (".png", ".svg", ".pdf")
#: ``--role`` choices: the roles of gradsight.store.roles.Role.ALL, and ``all``.
ROLE_CHOICES = ("all", "embedding", "norm", "weighted", "head", "scalar", "other")
#: Kinds that draw layers chosen by role (the sweep's ratio is over weighted layers by definition).
ROLE_KINDS = ("flow", "heatmap", "bands", "update", "compare")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--stat", default=None,
              help="Statistic to draw (grad_rms, grad_norm, update_ratio, an activation statistic, ...). "
                   "Default: grad_rms (grad_norm for runs without it; update_ratio for --kind update).")
@click.option("--kind", type=click.Choice(["flow", "heatmap", "bands", "update", "nonfinite", "compare", "sweep",
                                          "hist", "time", "noise"]),
              default="flow", show_default=True,
              help="flow: by layer, several steps overlaid; heatmap: layer x step; bands: spread across layers "
                   "over time; update: update ratio per layer; nonfinite: NaN/Inf steps; compare: several runs "
                   "by relative depth; sweep: first/last layer ratio against depth; hist: log2 |gradient| histograms "
                   "over training with the fp16/bf16/fp8 ranges (--level layer: up to 12 layers, --level model: "
                   "the model; needs gs.watch(..., histograms=...)); time: the gradient the rest of the model sends to "
                   "each time step of a recurrent layer's output, |dL/dh_t| against t, with the gain per step through the "
                   "recurrence written on it (needs gs.watch(..., through_time=True)); noise: the "
                   "gradient noise scale over training against the batch size (needs gs.watch(..., noise_scale=...)).")
@click.option("--level", default="layer", show_default=True,
              help="Rows to draw: layer, param, or a module level (module, block).")
@click.option("--role", "roles", type=click.Choice(ROLE_CHOICES), multiple=True,
              help="Layers to draw by role (repeatable): embedding, norm, weighted, head, scalar, other, or all. "
                   "Default: weighted and head. The sweep's ratio is always over weighted layers.")
@click.option("--step", "steps", type=int, multiple=True, help="flow: overlay these steps (repeatable).")
@click.option("--title", default=None, help="Figure title (single figure).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Image file to write: .png, .svg or .pdf.")
def command(runs: tuple[Path, ...], stat: str | None, kind: str, level: str, roles: tuple[str, ...],
            steps: tuple[int, ...], title: str | None, output: Path) -> None:
    """Draw a figure of one or more recorded RUNS to an image file.

    \b
    Examples:
      gradsight plot runs/plain20 --kind flow -o flow.png
      gradsight plot runs/plain20 --kind flow --role all --stat grad_norm -o all-layers.png
      gradsight plot runs/plain20 runs/resnet20 --kind heatmap -o heat.svg
      gradsight plot runs/compare --kind compare --stat grad_norm -o compare.pdf
      gradsight plot runs/amp --kind hist --level model -o hist.png
    """
    import matplotlib

    from gradsight.plots._figure import STYLE
    from gradsight.store.query import expand_runs

    if output.suffix.lower() not in FORMATS:
        raise UserError(f"cannot write {output.name}: the output must end in .png, .svg or .pdf")
    if roles and kind not in ROLE_KINDS:
        raise UserError(f"--role does not apply to --kind {kind}; it applies to {', '.join(ROLE_KINDS)}")
    with matplotlib.rc_context(STYLE):
        fig = _figure(expand_runs(runs), stat, kind, level, steps, title, roles)
        save_figure(fig, output, dpi=150, bbox_inches="tight")
    click.echo(f"wrote {output}")


def _default_stat(run_list: list, kind: str, level: str) -> str:
    from gradsight.store.query import DEFAULT_STAT

    if kind == "update":
        return "update_ratio"
    if kind == "nonfinite" or not all(DEFAULT_STAT in run.stats(level) for run in run_list):
        return "grad_norm"
    return DEFAULT_STAT


def _figure(run_list: list, stat: str | None, kind: str, level: str, steps: tuple[int, ...], title: str | None,
            roles: tuple[str, ...] = ()):
    from matplotlib.figure import Figure

    import gradsight.plots as plots
    from gradsight.store.query import DEFAULT_ROLES

    if kind == "hist":
        return _histograms(run_list, level, title)
    if kind == "time":
        return _through_time(run_list, steps, title)
    if kind == "noise":
        return _noise_scale(run_list, title)
    stat = stat or _default_stat(run_list, kind, level)
    role = (None if "all" in roles else roles) if roles else DEFAULT_ROLES
    if kind not in ("nonfinite",):
        for run in run_list:
            require_stat(run, stat, level)
    if steps:
        if kind != "flow":
            raise UserError(f"--step applies to --kind flow and time, not {kind}")
        for run in run_list:
            recorded = run.steps()
            missing = sorted(set(steps) - set(recorded))
            if missing:
                raise UserError(f"run {run.path} has no recorded step {', '.join(map(str, missing))}; "
                                f"it recorded {_describe_steps(recorded)}")
    fn = plots.KINDS[kind]
    if kind == "compare":
        fig = fn(run_list, stat, level=level, role=role, title=title)
    elif kind in plots.MULTI_RUN_KINDS:
        fig = fn(run_list, stat, level=level, title=title)
    elif kind == "nonfinite":
        if len(run_list) == 1:
            fig = fn(run_list[0], stat, title=title)
        else:
            fig = Figure(figsize=(9.0, 3.4 * len(run_list)), layout="constrained")
            for run, ax in zip(run_list, fig.subplots(len(run_list), 1, squeeze=False)[:, 0]):
                fn(run, stat, ax=ax)
    else:
        kwargs = {"level": level, "role": role}
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


def _describe_steps(steps: list[int]) -> str:
    """``no steps``, ``steps 0, 5, 10`` or ``120 steps from 0 to 1190``."""
    if not steps:
        return "no steps"
    if len(steps) <= 8:
        return "step" + ("s " if len(steps) > 1 else " ") + ", ".join(map(str, steps))
    return f"{len(steps):,} steps from {steps[0]} to {steps[-1]}"


def _through_time(run_list: list, steps: tuple[int, ...], title: str | None):
    """``--kind time``: the gradient through time of the first recurrent module of one run."""
    import gradsight.plots as plots

    if len(run_list) != 1:
        raise UserError(f"--kind time draws one run; got {len(run_list)}")
    run = run_list[0]
    module, table = plots.through_time_matrix(run, steps="all")
    if table.empty:
        raise UserError(f"run {run.path} has no gradient through time; record it with "
                        "gs.watch(..., through_time=True) on a model with an nn.LSTM, nn.GRU or nn.RNN")
    missing = sorted(set(steps) - {int(s) for s in table.index})
    if missing:
        raise UserError(f"run {run.path} has no gradient through time at step {', '.join(map(str, missing))}")
    return plots.through_time(run, module, steps=list(steps) or None, title=title)


def _noise_scale(run_list: list, title: str | None):
    """``--kind noise``: the gradient noise scale of one run against its batch size."""
    from gradsight import plots

    if len(run_list) != 1:
        raise UserError(f"--kind noise draws one run; got {len(run_list)}")
    run = run_list[0]
    if "gns" not in run.stats("model"):
        raise UserError(f"run {run.path} has no gradient noise scale; record it with gs.watch(..., "
                        "noise_scale=True) (or noise_scale=<samples per micro-batch>) while accumulating "
                        "gradients over several backward passes or under DDP")
    return plots.noise_scale(run, title=title)


def _histograms(run_list: list, level: str, title: str | None):
    """``--kind hist``: the model's histogram, or up to 12 layers', of one run."""
    import gradsight.plots as plots

    if len(run_list) != 1:
        raise UserError(f"--kind hist draws one run; got {len(run_list)}")
    if level not in ("layer", "model"):
        raise UserError(f"--kind hist draws --level layer or model, not {level!r}")
    run = run_list[0]
    if run.histograms(level="model").empty:  # one row a step; the layers' are recorded with it
        raise UserError(f"run {run.path} has no histograms; record them with gs.watch(..., histograms=True) "
                        f"or histograms=k (every k-th recorded step)")
    if level == "model":
        return plots.log2_histogram(run, title=title)
    return plots.log2_histograms(run, title=title)

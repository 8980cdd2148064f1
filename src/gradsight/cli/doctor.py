"""``gradsight doctor RUN|MODEL_SPEC``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gradsight._errors import GradsightError
from gradsight._text import printable
from gradsight.cli import UserError
from gradsight.cli._args import build, input_options, model_arg_option, parse_kwargs, parse_shape, resolve_input


@click.command()
@click.argument("target")
@input_options(shape_default="none; needed to check a model")
@model_arg_option
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=1),
              help="Training steps of a model check (random data, Adam).")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Learning rate of a model check.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=2))
@click.option("--seed", default=0, show_default=True)
@click.option("--keep-run", type=click.Path(path_type=Path), help="Keep the model check's recorded run here.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --keep-run's directory.")
@click.option("--fail-on", type=click.Choice(["error", "warning"]), default="error", show_default=True,
              help="Exit with status 1 when a finding is at least this severe.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.pass_context
def command(ctx: click.Context, target: str, input_shape: str | None, input_dtype: str | None,
            vocab_size: int | None, model_args: tuple[str, ...], steps: int, lr: float, batch_size: int, seed: int,
            keep_run: Path | None, overwrite: bool, fail_on: str, as_json: bool) -> None:
    """Diagnose gradient problems in plain language.

    TARGET is a recorded run directory (or a folder holding one run), or a model spec: a registered name (e.g.
    plain56, resnet:depth=56) or package.module:factory, which gets a short
    monitored training on random data first (--steps; --input-shape is one sample
    without the batch dimension; --input-dtype long --vocab-size N for a language
    model). Findings cover vanishing and
    exploding gradients, non-finite values and where they started, dead units,
    parameters without gradients, update ratios, residual branches and, for runs
    recorded with histograms=, gradients lost to fp16 or bf16 (amp_underflow).

    Exit status: 0 when healthy, 1 when a finding is at least --fail-on severe
    (so it can gate CI), 2 on bad input (never a traceback: a rule that fails
    is reported as a rule_failed finding).
    """
    import torch

    from gradsight.diagnosis import Severity, checkup, diagnose, format_findings

    from gradsight.store.reader import resolve_run

    path = Path(target)
    if path.exists():
        path = resolve_run(path)  # a run, or the one run below a folder
        try:
            findings = diagnose(path)
        except GradsightError:
            raise
        except Exception as exc:  # an unreadable store the reader did not recognize
            raise UserError(f"could not diagnose {path}: {type(exc).__name__}: {_first_line(exc)}") from None
        source = f"run {path}"
    else:
        kwargs = parse_kwargs(model_args)
        if input_shape is None:
            raise UserError(f"{target!r} is not a run directory; to check a model pass --input-shape, e.g. 1,28,28")
        shape = parse_shape(input_shape)
        torch.manual_seed(seed)
        try:
            model, info = build(target, kwargs, shape)
        except (UserError, GradsightError, ValueError, OSError):
            raise
        except Exception as exc:  # e.g. a factory that rejects its keywords
            raise UserError(f"could not build {target!r}: {type(exc).__name__}: {_first_line(exc)}") from None
        sample = resolve_input(info, shape, input_dtype, vocab_size)
        inputs = None if sample.is_float else sample.batch(batch_size, generator=torch.Generator().manual_seed(seed))
        try:
            findings = checkup(model, inputs=inputs, input_shape=sample.shape, steps=steps, lr=lr,
                                  batch_size=batch_size, seed=seed, run_dir=keep_run, overwrite=overwrite,
                                  progress=True)
        except (RuntimeError, TypeError, IndexError, ValueError) as exc:
            raise UserError(f"the model does not train on input of shape {sample.describe()}: "
                            f"{type(exc).__name__}: {_first_line(exc)}") from None
        source = f"model {target} after {steps} step(s) on random data"
    if as_json:
        click.echo(json.dumps({"target": source, "findings": [f.to_dict() for f in findings]}, indent=2))
    else:
        click.echo(printable(f"gradsight doctor: {source}"))
        click.echo(printable(format_findings(findings)))  # layer names may hold terminal escapes
        if keep_run is not None and not path.exists():
            click.echo(f"run kept at {keep_run}")
    if any(f.severity >= Severity(fail_on) for f in findings):
        ctx.exit(1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"

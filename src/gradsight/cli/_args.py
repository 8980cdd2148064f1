"""Arguments that several commands share: a model spec with ``--arg KEY=VALUE``, and its input.

Every command that builds a model takes it the same way:

- ``MODEL``: a model spec (:mod:`gradsight.models.spec`): ``plain56``, ``resnet:depth=110``,
  ``package.module:factory[:KEY=VALUE,...]``;
- ``--arg KEY=VALUE`` (repeatable): more keywords for the factory;
- ``--input-shape``: the shape of ONE sample, without the batch dimension (``1,28,28`` or
  ``1x28x28``); default the registered model's input. For a registered model it also sizes the
  first layer (``in_channels`` for images, ``in_features`` for vectors);
- ``--input-dtype float|long`` and ``--vocab-size N``: integer token ids in ``[0, N)`` instead of
  unit-Gaussian floats, for language models (default: what the registry says);
- the batch size is each command's own ``--batch-size``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from gradsight.cli import UserError

if TYPE_CHECKING:
    from torch import nn

    from gradsight.models.info import InputSpec, ModelInfo

__all__ = [
    "INPUT_DTYPES",
    "build",
    "forward_errors",
    "input_options",
    "model_arg_option",
    "parse_int_list",
    "parse_kwargs",
    "parse_shape",
    "require_stat",
    "resolve_input",
]

F = TypeVar("F", bound=Callable[..., Any])
#: ``--input-dtype`` choices: unit-Gaussian floats or integer token ids.
INPUT_DTYPES = ("float", "long")


#: Samples in the batch a computation graph is traced on.
GRAPH_BATCH = 2
#: Largest ``--input-shape`` accepted, in elements of one sample (a 3x2048x2048 image has 12.6 million):
#: beyond it the forward pass's activations would not fit in memory.
MAX_SAMPLE_ELEMENTS = 2**24


def parse_shape(text: str | None, option: str = "--input-shape") -> tuple[int, ...] | None:
    """``"1,28,28"`` or ``"1x28x28"`` -> ``(1, 28, 28)``; ``None`` stays ``None``.

    Raises:
        UserError: not positive integers; the message names ``option``.
    """
    if text is None:
        return None
    parts = re.split(r"[,x]", text.strip())
    if not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise UserError(f"bad {option} {text!r}: write positive integers such as 1,28,28 "
                        "(one sample, without the batch dimension)")
    shape = tuple(int(part) for part in parts)
    if math.prod(shape) > MAX_SAMPLE_ELEMENTS:
        raise UserError(f"{option} {text!r} has {math.prod(shape):,} elements per sample, more than the "
                        f"{MAX_SAMPLE_ELEMENTS:,} gradsight accepts (the forward pass would not fit in memory)")
    return shape


def require_stat(run: Any, stat: str, level: str | None = None) -> None:
    """Raise :class:`UserError` listing what ``run`` records when it has no statistic ``stat``
    (at ``level``, or at any level)."""
    available = run.stats(level)
    if stat not in available:
        where = f" at level {level!r}" if level is not None else ""
        raise UserError(f"run {run.path} has no statistic {stat!r}{where}; available: "
                        f"{', '.join(available) or 'none'}")


@contextmanager
def forward_errors(shape: Sequence[int]) -> Iterator[None]:
    """Turn a failing forward (or backward) pass of a model on an input of ``shape`` into a
    :class:`UserError` that names the shape; running out of memory says so."""
    try:
        yield
    except (RuntimeError, IndexError, ValueError, MemoryError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text:
            raise UserError(f"out of memory on an input of shape {tuple(shape)}: give a smaller --input-shape "
                            "(one sample, without the batch dimension)") from None
        raise UserError(f"the forward pass failed on an input of shape {tuple(shape)}: {text} "
                        "(give --input-shape: one sample, without the batch dimension)") from None


def parse_int_list(text: str, option: str) -> list[int]:
    """``"2,8,24"`` -> ``[2, 8, 24]``; ``""`` -> ``[]``.

    Raises:
        UserError: an item that is not an integer; the message names ``option``.
    """
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{option} takes comma-separated integers, e.g. 2,8,24; got {text!r}") from None


def parse_kwargs(pairs: str | Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items (``--arg`` values, or one comma-separated string) -> keywords.

    Values are Python literals or bare words (strings); see :func:`gradsight.models.spec.parse_kwargs`.
    """
    from gradsight.models.spec import parse_kwargs as parse

    try:
        return parse(pairs)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def model_arg_option(fn: F) -> F:
    """``--arg KEY=VALUE`` (repeatable), passed to the command as ``model_args``."""
    return click.option("--arg", "model_args", multiple=True, metavar="KEY=VALUE",
                        help="Keyword for the model factory, e.g. --arg norm=none; repeatable.")(fn)


def input_options(fn: F | None = None, *, shape_default: str = "the registered model's input") -> Any:
    """``--input-shape``, ``--input-dtype`` and ``--vocab-size``, passed as ``input_shape``,
    ``input_dtype`` and ``vocab_size``; ``shape_default`` says in the help what a missing
    ``--input-shape`` means. Used bare (``@input_options``) or called."""

    def decorate(fn: F) -> F:
        fn = click.option("--vocab-size", type=click.IntRange(min=1), default=None,
                          help="Token ids are drawn from [0, N) (with --input-dtype long) "
                               "[default: the registered model's vocabulary].")(fn)
        fn = click.option("--input-dtype", type=click.Choice(INPUT_DTYPES), default=None,
                          help="float: unit-Gaussian inputs; long: integer token ids, for language models "
                               "[default: what the registered model takes, else float].")(fn)
        fn = click.option("--input-shape", default=None,
                          help="Shape of ONE input sample, without the batch dimension, e.g. 1,28,28 or 16 "
                               f"(tokens) [default: {shape_default}].")(fn)
        return fn

    return decorate if fn is None else decorate(fn)


def build(spec: str, model_args: Sequence[str] | dict[str, Any] = (),
          input_shape: Sequence[int] | None = None) -> tuple[nn.Module, ModelInfo | None]:
    """Build the model of ``spec`` with ``--arg`` keywords, sized for ``input_shape``.

    Returns ``(model, info)`` as :func:`gradsight.models.spec.build_model`; ``info`` is ``None``
    for a model that is not registered.

    Raises:
        UserError: a bad spec, an unknown model, or keywords the factory does not take.
    """
    from gradsight.models.spec import build_model

    kwargs = model_args if isinstance(model_args, dict) else parse_kwargs(model_args)
    try:
        return build_model(spec, input_shape=input_shape, **kwargs)
    except TypeError as exc:
        raise UserError(f"cannot build {spec!r}: {exc} (pass keywords as --arg KEY=VALUE or "
                        "NAME:KEY=VALUE,...)") from None
    except ValueError as exc:
        raise UserError(str(exc)) from None


def resolve_input(info: ModelInfo | None, input_shape: Sequence[int] | str | None,
                  input_dtype: str | None = None, vocab_size: int | None = None) -> InputSpec:
    """The input of a command: the options where given, else the registered model's
    (:func:`gradsight.models.info.input_spec`, the rule of the Python API).

    Raises:
        UserError: no shape for a model that is not registered, or integer inputs without a
            vocabulary size.
    """
    from gradsight.models.info import UnknownInputError, input_spec

    shape = parse_shape(input_shape) if isinstance(input_shape, str) else input_shape
    try:
        return input_spec(info, input_shape=shape, input_dtype=input_dtype, vocab_size=vocab_size)
    except UnknownInputError as exc:
        raise UserError(_MISSING_INPUT[exc.missing]) from None


#: What a command says when :func:`resolve_input` lacks an option (by the keyword it lacks).
_MISSING_INPUT = {
    "input_shape": "this model is not registered, so give --input-shape: the shape of one sample "
                   "without the batch dimension, e.g. 3,32,32 (or 16 with --input-dtype long)",
    "vocab_size": "--input-dtype long draws token ids: give --vocab-size N as well",
}

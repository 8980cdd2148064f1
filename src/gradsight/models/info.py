"""What a model is and what it takes: ``ModelInfo``, and the one way to draw a sample input.

The registry (:mod:`gradsight.models._registry`) resolves a :class:`ModelInfo` for the keywords
a model is built with and records it on the model (``model.model_info``, read by
:func:`info_of`). Everything in gradsight that needs an input for a model and is not given one
(``gs.probe``, ``gs.path_lengths``, ``gs.graph``'s ``trace_inputs_for``, the check-up behind
``gradsight doctor``, the CLI's ``--input-shape`` / ``--input-dtype`` / ``--vocab-size``) draws it
with :func:`sample_input` (or :func:`input_spec` and :meth:`InputSpec.batch`, to draw several
batches of one resolved input), by one rule for each of the shape of one sample, the dtype and
the vocabulary:

1. what the caller passes (``input_shape=``, ``input_dtype=``, ``vocab_size=``), else
2. what the registry says (``input_kind``, ``input_shape``, ``vocab_size``), else
3. unit-Gaussian floats for the dtype; a missing shape (or a missing vocabulary for token ids)
   raises :class:`UnknownInputError`, naming the keyword to pass.

    >>> sample_input(create_model("resnet20"), 4).shape          # the registry's (3, 32, 32)
    torch.Size([4, 3, 32, 32])
    >>> sample_input(nn.Linear(6, 2), 4, input_shape=(6,)).shape  # a model from elsewhere
    torch.Size([4, 6])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = [
    "INFO_ATTRIBUTE",
    "INPUT_KINDS",
    "InputKind",
    "InputSpec",
    "ModelInfo",
    "UnknownInputError",
    "info_of",
    "input_spec",
    "sample_input",
]

InputKind = Literal["image", "vector", "tokens"]
#: What a model takes: ``image`` (N, C, H, W) floats, ``vector`` (N, F) floats (any shape that
#: flattens to F), ``tokens`` (N, T) integer ids in ``[0, vocab_size)``.
INPUT_KINDS: tuple[str, ...] = ("image", "vector", "tokens")
#: Attribute under which :func:`~gradsight.models.create_model` records a model's :class:`ModelInfo`.
INFO_ATTRIBUTE = "model_info"


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model, resolved for the keywords it is built with.

    Attributes:
        name: the registered name.
        family: the architecture family (``"plain"``, ``"resnet"``, ``"mlp"`` ...): twins of
            different depths share it.
        depth: weighted layers on the main path (convs + linears for the CNNs, linear layers
            for the MLPs), or ``None`` when the registration does not say.
        input_kind: ``"image"``, ``"vector"`` or ``"tokens"`` (see :data:`INPUT_KINDS`), or
            ``None`` when the registration does not say.
        input_shape: shape of ONE sample, without the batch dimension: ``(C, H, W)`` for
            images, ``(F,)`` for vectors, ``(T,)`` (sequence length) for tokens.
        in_channels: image channels (``image`` models), else ``None``.
        in_features: flattened input size (``vector`` models), else ``None``.
        vocab_size: number of token ids (``tokens`` models), else ``None``.
        summary: first line of the factory's docstring.
        module: the module that defines the factory.
    """

    name: str
    family: str
    depth: int | None
    input_kind: InputKind | None
    input_shape: tuple[int, ...] | None
    in_channels: int | None = None
    in_features: int | None = None
    vocab_size: int | None = None
    summary: str = ""
    module: str = ""

    @property
    def input_dtype(self) -> torch.dtype:
        """``torch.long`` for token models, else torch's default float dtype (``torch.float32``)."""
        return torch.long if self.input_kind == "tokens" else torch.get_default_dtype()

    def example_input(
        self,
        batch_size: int = 2,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """A random batch the model accepts: :func:`sample_input` of this info.

        Shape ``(batch_size, *input_shape)``: unit-Gaussian floats, or uniform token ids in
        ``[0, vocab_size)`` for token models.

        Raises:
            UnknownInputError: the registration gives no input shape.
        """
        return sample_input(self, batch_size, generator=generator, device=device)


def info_of(model: nn.Module) -> ModelInfo | None:
    """The :class:`ModelInfo` that :func:`~gradsight.models.create_model` recorded on ``model``,
    or ``None``."""
    info = getattr(model, INFO_ATTRIBUTE, None)
    return info if isinstance(info, ModelInfo) else None


class UnknownInputError(ValueError):
    """What a model takes is not known and was not given.

    Attributes:
        missing: the keyword to pass: ``"input_shape"`` (the shape of one sample) or
            ``"vocab_size"`` (token ids need a vocabulary). The CLI names its option instead
            (``--input-shape``, ``--vocab-size``).
    """

    def __init__(self, message: str, missing: str) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class InputSpec:
    """What one input sample of a model looks like, resolved by :func:`input_spec`.

    Attributes:
        shape: one sample, without the batch dimension.
        dtype: a floating dtype (unit-Gaussian values) or an integer one (token ids).
        vocab_size: token ids are drawn from ``[0, vocab_size)`` (integer dtypes only, else ``None``).
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    vocab_size: int | None = None

    @property
    def is_float(self) -> bool:
        """Whether the samples are floats (else token ids)."""
        return self.dtype.is_floating_point

    def batch(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """A random batch of shape ``(batch_size, *shape)``, drawn on the CPU (so a seeded
        ``generator`` gives the same values everywhere), then moved to ``device``.

        Raises:
            MemoryError: the batch does not fit in memory; the message gives its shape.
        """
        size = (batch_size, *self.shape)
        try:
            if self.is_float:
                x = torch.randn(size, generator=generator, dtype=self.dtype)
            else:
                x = torch.randint(0, self.vocab_size, size, generator=generator, dtype=self.dtype)
        except RuntimeError as exc:  # the CPU allocator's failure is a RuntimeError
            if "can't allocate memory" not in str(exc):
                raise
            raise MemoryError(f"out of memory drawing an input batch of shape {size}") from None
        return x if device is None else x.to(device)

    def describe(self) -> str:
        """``"1,28,28"``, or ``"16 (token ids < 256)"`` for token ids."""
        dims = ",".join(map(str, self.shape))
        return dims if self.is_float else f"{dims} (token ids < {self.vocab_size})"


def input_spec(
    model_or_info: nn.Module | ModelInfo | None,
    *,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | torch.dtype | None = None,
    vocab_size: int | None = None,
) -> InputSpec:
    """What one input sample of a model is: what the caller passes, else what the registry says.

    Args:
        model_or_info: a model (its recorded ``model.model_info``, if any), a :class:`ModelInfo`,
            or ``None`` (nothing registered).
        input_shape: shape of ONE sample, without the batch dimension; default the registry's.
        input_dtype: ``"float"`` (unit-Gaussian, torch's default float dtype), ``"long"`` (token
            ids) or a torch dtype; default ``torch.long`` for a registered token model, else
            ``"float"``.
        vocab_size: token ids are drawn from ``[0, vocab_size)``; default the registry's.

    Raises:
        UnknownInputError: no shape (the model is not registered, or its registration gives
            none), or token ids without a vocabulary size; ``missing`` names the keyword.
        ValueError: an ``input_dtype`` that is neither floating nor integer.
    """
    info = info_of(model_or_info) if isinstance(model_or_info, nn.Module) else model_or_info
    shape = tuple(input_shape) if input_shape is not None else (info.input_shape if info is not None else None)
    if shape is None:
        what = type(model_or_info).__name__ if info is None else f"model {info.name!r}"
        why = "it is not a registered model" if info is None else "its registration gives no input shape"
        raise UnknownInputError(
            f"the input of {what} is not known ({why}): pass input_shape=, the shape of one sample "
            "without the batch dimension, e.g. (1, 28, 28)", "input_shape")
    dtype = _dtype(input_dtype if input_dtype is not None else (info.input_dtype if info is not None else "float"))
    if dtype.is_floating_point:
        return InputSpec(tuple(int(n) for n in shape), dtype)
    vocab_size = vocab_size or (info.vocab_size if info is not None else None)
    if vocab_size is None:
        raise UnknownInputError("token ids need a vocabulary: pass vocab_size= (ids are drawn from "
                                "[0, vocab_size))", "vocab_size")
    return InputSpec(tuple(int(n) for n in shape), dtype, int(vocab_size))


def sample_input(
    model_or_info: nn.Module | ModelInfo | None,
    batch_size: int = 2,
    *,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | torch.dtype | None = None,
    vocab_size: int | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A random batch that ``model_or_info`` takes: ``input_spec(...).batch(batch_size)``.

    Args:
        model_or_info, input_shape, input_dtype, vocab_size: as :func:`input_spec`.
        batch_size: samples in the batch (the leading dimension).
        generator, seed: the random numbers: a generator, or a seed for a new one (not both);
            default torch's global generator.
        device: where the batch goes; default the device of a model's first parameter (the
            CPU for a :class:`ModelInfo` or a model without parameters).

    Returns:
        ``(batch_size, *input_shape)``: unit-Gaussian floats, or token ids in ``[0, vocab_size)``.

    Raises:
        UnknownInputError: no shape, or token ids without a vocabulary (see :func:`input_spec`).
    """
    if seed is not None:
        if generator is not None:
            raise ValueError("give generator= or seed=, not both")
        generator = torch.Generator().manual_seed(seed)
    if device is None and isinstance(model_or_info, nn.Module):
        device = next((p.device for p in model_or_info.parameters()), None)
    spec = input_spec(model_or_info, input_shape=input_shape, input_dtype=input_dtype, vocab_size=vocab_size)
    return spec.batch(batch_size, generator=generator, device=device)


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if dtype == "float":
        return torch.get_default_dtype()
    if dtype == "long":
        return torch.long
    if isinstance(dtype, torch.dtype) and (dtype.is_floating_point or not (dtype.is_complex or dtype == torch.bool)):
        return dtype
    raise ValueError(f"input_dtype must be 'float', 'long' or a floating or integer torch dtype; got {dtype!r}")

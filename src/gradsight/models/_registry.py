"""The model registry: ``@register_model``, ``list_models``, ``create_model``, ``model_info``.

Modelled on timm: a factory function registers itself under its own name, and every factory
takes keyword-only arguments, so ``create_model(name, **kwargs)`` is the only way in that the rest
of gradsight (CLI, training, tests) needs. The registration also says what the model is and what
it eats (a :class:`~gradsight.models.info.ModelInfo`, from which
:func:`~gradsight.models.info.sample_input` draws its inputs), so nothing downstream has to guess it
from the name or the first layer::

    @register_model(family="resnet", depth=lambda kw: kw.get("depth", 20),
                    input_kind="image", input_shape=(3, 32, 32))
    def resnet(*, depth: int = 20, **kwargs): ...

    model_info("resnet", depth=56, in_channels=1)
    # ModelInfo(name='resnet', family='resnet', depth=56, input_kind='image',
    #           input_shape=(1, 32, 32), in_channels=1, ...)
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar, overload

from torch import nn

from gradsight.models.info import INFO_ATTRIBUTE, INPUT_KINDS, InputKind, ModelInfo, info_of

__all__ = [
    "INPUT_KINDS",
    "InputKind",
    "ModelInfo",
    "create_model",
    "info_of",
    "is_model",
    "list_models",
    "model_info",
    "register_model",
]

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])
DepthRule = int | Callable[[Mapping[str, Any]], int] | None


@dataclass(frozen=True)
class _Registration:
    factory: Callable[..., nn.Module]
    family: str
    depth: DepthRule
    input_kind: InputKind | None
    input_shape: tuple[int, ...] | None
    vocab_size: int | None


_model_entrypoints: dict[str, _Registration] = {}


@overload
def register_model(fn: Factory) -> Factory: ...


@overload
def register_model(
    *,
    family: str | None = None,
    depth: DepthRule = None,
    input_kind: InputKind | None = None,
    input_shape: tuple[int, ...] | None = None,
    vocab_size: int | None = None,
) -> Callable[[Factory], Factory]: ...


def register_model(
    fn: Factory | None = None,
    *,
    family: str | None = None,
    depth: DepthRule = None,
    input_kind: InputKind | None = None,
    input_shape: tuple[int, ...] | None = None,
    vocab_size: int | None = None,
) -> Factory | Callable[[Factory], Factory]:
    """Decorator: register a model factory under its function name, with what it is and takes.

    Used bare (``@register_model``) or with metadata (``@register_model(family=..., ...)``).

    Args:
        family: architecture family; default the factory's name.
        depth: the depth as a number, or a function of the keyword arguments the model is built
            with (``lambda kw: kw.get("depth", 20)``) that may raise ``ValueError`` for a bad
            depth.
        input_kind: ``"image"``, ``"vector"`` or ``"tokens"``.
        input_shape: default shape of one sample, without the batch dimension. For ``image``
            models the ``in_channels`` keyword replaces its first entry; for ``vector`` models
            ``in_features`` replaces it; for ``tokens`` it is the sequence length.
        vocab_size: default number of token ids (``tokens`` models; the ``vocab_size`` keyword
            replaces it).

    The factory must take keyword-only arguments and return an ``nn.Module``. Registering the
    same name from a different function raises ``ValueError``; re-registering the same function
    (e.g. after ``importlib.reload``) replaces the entry.
    """
    if input_kind is not None and input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {', '.join(INPUT_KINDS)}; got {input_kind!r}")
    if (input_kind is None) != (input_shape is None):
        raise ValueError("give input_kind and input_shape together")
    if input_kind == "tokens" and vocab_size is None:
        raise ValueError("a tokens model needs vocab_size")

    def decorate(factory: Factory) -> Factory:
        name = factory.__name__
        existing = _model_entrypoints.get(name)
        if existing is not None and _origin(existing.factory) != _origin(factory):
            raise ValueError(
                f"model {name!r} is already registered by "
                f"{existing.factory.__module__}.{existing.factory.__qualname__}"
            )
        _model_entrypoints[name] = _Registration(
            factory=factory,
            family=family or name,
            depth=depth,
            input_kind=input_kind,
            input_shape=tuple(input_shape) if input_shape is not None else None,
            vocab_size=vocab_size,
        )
        return factory

    return decorate if fn is None else decorate(fn)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of registered models, optionally filtered by an fnmatch ``pattern``.

    Example: ``list_models("resnet*")`` -> ``["resnet", "resnet110", "resnet20", ...]``.
    Matching is case-insensitive.
    """
    names = sorted(_model_entrypoints)
    if pattern is None:
        return names
    pattern = pattern.lower()
    return [name for name in names if fnmatch.fnmatchcase(name.lower(), pattern)]


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _model_entrypoints


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``, passing ``kwargs`` to its factory.

    The model's :class:`ModelInfo` for these keywords is recorded on it as ``model.model_info``
    (read it with :func:`info_of`).

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
        TypeError: a keyword the factory does not take.
    """
    model = _entrypoint(name).factory(**kwargs)
    info = model_info(name, **kwargs)
    setattr(model, INFO_ATTRIBUTE, info)
    return model


def model_info(name: str, **kwargs: Any) -> ModelInfo:
    """What registered model ``name`` is and takes, when built with ``kwargs``.

    Example: ``model_info("plain", depth=56).depth`` -> ``56``;
    ``model_info("resnet20", in_channels=1).input_shape`` -> ``(1, 32, 32)``.

    Raises:
        ValueError: an unknown name, or a depth the family does not have.
    """
    reg = _entrypoint(name)
    doc = inspect.getdoc(reg.factory) or ""
    depth = reg.depth(kwargs) if callable(reg.depth) else reg.depth
    info = ModelInfo(
        name=name,
        family=reg.family,
        depth=depth,
        input_kind=reg.input_kind,
        input_shape=reg.input_shape,
        summary=doc.splitlines()[0] if doc else "",
        module=reg.factory.__module__,
    )
    shape = reg.input_shape
    if reg.input_kind == "image":
        channels = int(kwargs.get("in_channels", shape[0]))
        info = replace(info, input_shape=(channels, *shape[1:]), in_channels=channels)
    elif reg.input_kind == "vector":
        features = int(kwargs.get("in_features", math.prod(shape)))
        info = replace(info, input_shape=(features,), in_features=features)
    elif reg.input_kind == "tokens":
        length = int(kwargs.get("context", shape[0]))  # token models take sequences up to ``context``
        info = replace(info, input_shape=(length,), vocab_size=int(kwargs.get("vocab_size", reg.vocab_size)))
    return info


def _entrypoint(name: str) -> _Registration:
    try:
        return _model_entrypoints[name]
    except KeyError:
        close = difflib.get_close_matches(name, _model_entrypoints, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Valid names: {', '.join(list_models())}"
        ) from None


def _origin(fn: Callable[..., Any]) -> tuple[str, str]:
    return fn.__module__, fn.__qualname__

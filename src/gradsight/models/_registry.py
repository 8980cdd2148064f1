"""The model registry: ``@register_model``, ``list_models``, ``create_model``, ``model_info``.

Modelled on timm: a factory function registers itself under its own name, and every factory
takes keyword-only arguments, so ``create_model(name, **kwargs)`` is the only way in that the rest
of gradsight (CLI, training, tests) needs.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

__all__ = ["ModelInfo", "create_model", "is_model", "list_models", "model_info", "register_model"]

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_model_entrypoints: dict[str, Callable[..., nn.Module]] = {}


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model.

    Attributes:
        name: the registered name.
        summary: first line of the factory's docstring.
        module: the module that defines the factory.
    """

    name: str
    summary: str
    module: str


def register_model(fn: Factory) -> Factory:
    """Decorator: register a model factory under its function name.

    The factory must take keyword-only arguments and return an ``nn.Module``. Registering the
    same name from a different function raises ``ValueError``; re-registering the same function
    (e.g. after ``importlib.reload``) replaces the entry.
    """
    name = fn.__name__
    existing = _model_entrypoints.get(name)
    if existing is not None and _origin(existing) != _origin(fn):
        raise ValueError(
            f"model {name!r} is already registered by {existing.__module__}.{existing.__qualname__}"
        )
    _model_entrypoints[name] = fn
    return fn


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

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
        TypeError: a keyword the factory does not take.
    """
    return _entrypoint(name)(**kwargs)


def model_info(name: str) -> ModelInfo:
    """Name, one-line summary (first docstring line) and defining module of a registered model."""
    fn = _entrypoint(name)
    doc = inspect.getdoc(fn) or ""
    return ModelInfo(name=name, summary=doc.splitlines()[0] if doc else "", module=fn.__module__)


def _entrypoint(name: str) -> Callable[..., nn.Module]:
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

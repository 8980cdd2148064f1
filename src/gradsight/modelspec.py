"""Turn a model spec string into a network: a registry name or ``package.module:factory``.

    >>> load_model("resnet20", in_channels=1)          # gradsight.models.create_model
    >>> load_model("torchvision.models:resnet18")      # any importable callable

Used by the command line and anything else that takes a model from the user as text.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from torch import nn

from gradsight.models import create_model, is_model, list_models

__all__ = ["load_model"]


def load_model(spec: str, **kwargs: Any) -> nn.Module:
    """Build the model named by ``spec``, passing ``kwargs`` to its factory.

    Args:
        spec: a registered model name (``gradsight.models.list_models()``), or
            ``package.module:factory`` where ``factory`` is a callable (a function or an
            ``nn.Module`` class; dots in it reach attributes, ``module:Outer.make``) that
            returns an ``nn.Module``.
        kwargs: keyword arguments for the factory.

    Raises:
        ValueError: an unknown name, a module or attribute that cannot be imported, a factory
            that is not callable or does not return an ``nn.Module``; the message lists the
            registered names.
        TypeError: a keyword the factory does not take.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty model spec; expected {_valid_names()}")
    spec = spec.strip()
    if ":" not in spec:
        if not is_model(spec):
            close = difflib.get_close_matches(spec, list_models(), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"unknown model {spec!r}.{hint} Expected {_valid_names()}")
        return create_model(spec, **kwargs)
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"model spec {spec!r} is malformed; expected {_valid_names()}")
    try:
        factory: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import {module_name!r} from model spec {spec!r} ({exc}); expected "
            f"{_valid_names()}"
        ) from exc
    for part in attr_path.split("."):
        try:
            factory = getattr(factory, part)
        except AttributeError:
            raise ValueError(
                f"{module_name!r} has no attribute {attr_path!r} (model spec {spec!r}); "
                f"expected {_valid_names()}"
            ) from None
    if not callable(factory):
        raise ValueError(f"{spec!r} is not callable; expected {_valid_names()}")
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def _valid_names() -> str:
    return f"'package.module:factory' or a registered model: {', '.join(list_models())}"

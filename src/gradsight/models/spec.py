"""One grammar for a model given as text: a registered name or an importable callable, with keywords.

    NAME                              plain56, resnet20
    NAME:KEY=VALUE[,KEY=VALUE...]     resnet:depth=110, mlp:depth=4,width=8
    MODULE:ATTR                       torchvision.models:resnet18, torch:nn.Identity
    MODULE:ATTR:KEY=VALUE[,...]       torchvision.models:resnet18:num_classes=10

``NAME`` is a registered model (:func:`gradsight.models.list_models`); ``MODULE`` is an importable
module and ``ATTR`` a callable in it (a function or an ``nn.Module`` class; dots reach nested
attributes, ``pkg.mod:Outer.make``) returning an ``nn.Module``, or an ``nn.Module`` instance.
``VALUE`` is a Python literal (``56``, ``True``, ``'A'``, ``(3, 3)``) or else a bare word taken as
a string (``norm=none``). Keywords given in code win over keywords in the text.

    >>> model, info = build_model("resnet:depth=56", in_channels=1)
    >>> info.depth, info.input_shape
    (56, (1, 32, 32))
    >>> load_model("torchvision.models:resnet18")   # the module alone
"""

from __future__ import annotations

import ast
import difflib
import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from gradsight.models._registry import create_model, is_model, list_models, model_info
from gradsight.models.info import INFO_ATTRIBUTE, ModelInfo, info_of

__all__ = ["ModelSpec", "build_model", "load_model", "parse_kwargs", "parse_spec", "parse_value", "sized_kwargs"]


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec.

    Attributes:
        text: the spec as given.
        name: the registered name, or ``None`` for an importable callable.
        module, attr: the module to import and the attribute path in it (``None`` for a name).
        kwargs: keywords written in the spec.
    """

    text: str
    name: str | None
    module: str | None = None
    attr: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def parse_value(text: str) -> Any:
    """A Python literal (``56``, ``True``, ``1e-3``, ``'A'``, ``(1, 2)``), or else the text itself."""
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_kwargs(pairs: str | Sequence[str]) -> dict[str, Any]:
    """``"depth=56,norm=none"`` (or ``["depth=56", "norm=none"]``) -> ``{"depth": 56, "norm": "none"}``.

    A string is split at commas; each item of a list is one ``KEY=VALUE`` and may hold commas
    (``--arg widths=(1,2)``).

    Raises:
        ValueError: an item that is not ``KEY=VALUE`` with an identifier as key; the message says
            "write KEY=VALUE".
    """
    items = pairs.split(",") if isinstance(pairs, str) else list(pairs)
    out: dict[str, Any] = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"bad model argument {item!r}: write KEY=VALUE, e.g. depth=56")
        out[key] = parse_value(value)
    return out


def parse_spec(text: str) -> ModelSpec:
    """Parse a model spec (see the module docstring) without building anything.

    Raises:
        ValueError: an empty or malformed spec, bad keywords, or a bare name that is not
            registered (the message suggests close names and lists the registered ones).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty model spec; expected {_valid_forms()}")
    text = text.strip()
    head, sep, rest = text.partition(":")
    if is_model(head):
        return ModelSpec(text, head, kwargs=parse_kwargs(rest) if sep else {})
    if not sep:
        close = difflib.get_close_matches(text, list_models(), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {text!r}.{hint} Expected {_valid_forms()}")
    attr, _, args = rest.partition(":")
    if not head or not attr:
        raise ValueError(f"model spec {text!r} is malformed; expected {_valid_forms()}")
    return ModelSpec(text, None, module=head, attr=attr, kwargs=parse_kwargs(args))


def sized_kwargs(info: ModelInfo, input_shape: Sequence[int] | None) -> dict[str, Any]:
    """The keyword that sizes a registered model's first layer for samples of ``input_shape``.

    ``{"in_channels": C}`` for image models (``input_shape = (C, H, W)``), ``{"in_features":
    prod(input_shape)}`` for vector models, ``{}`` for token models or without a shape.
    """
    if input_shape is None:
        return {}
    if info.input_kind == "image":
        return {"in_channels": int(input_shape[0])}
    if info.input_kind == "vector":
        return {"in_features": int(math.prod(input_shape))}
    return {}


def build_model(
    spec: str | ModelSpec, *, input_shape: Sequence[int] | None = None, **kwargs: Any
) -> tuple[nn.Module, ModelInfo | None]:
    """Build the model a spec names, and what the registry knows about it.

    Args:
        spec: a spec string (see the module docstring) or a parsed :class:`ModelSpec`.
        input_shape: shape of ONE sample, without the batch dimension; for a registered model
            it sets ``in_channels`` (images) or ``in_features`` (vectors) unless a keyword does.
        kwargs: keywords for the factory; they win over the spec's.

    Returns:
        ``(model, info)``: ``info`` is the registered model's :class:`ModelInfo` for these
        keywords, with ``input_shape`` when given (also recorded as ``model.model_info``), or
        ``None`` for an importable callable.

    Raises:
        ValueError: a bad spec, an unknown name, a module or attribute that cannot be imported,
            a factory that is not callable or does not return an ``nn.Module``.
        TypeError: a keyword the factory does not take.
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    merged = {**parsed.kwargs, **kwargs}
    if parsed.name is not None:
        merged = {**sized_kwargs(model_info(parsed.name), input_shape), **merged}
        model = create_model(parsed.name, **merged)
        info = info_of(model)
        if info is not None and input_shape is not None:
            info = replace(info, input_shape=tuple(int(n) for n in input_shape))
            setattr(model, INFO_ATTRIBUTE, info)
        return model, info
    factory = _import_attr(parsed)
    if isinstance(factory, nn.Module):
        if merged:
            raise TypeError(f"{parsed.text!r} is a module instance and takes no keywords; got {sorted(merged)}")
        return factory, None
    if not callable(factory):
        raise ValueError(f"{parsed.text!r} is not callable; expected {_valid_forms()}")
    model = factory(**merged)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{parsed.text!r} returned {type(model).__name__}, not an nn.Module")
    return model, info_of(model)


def load_model(spec: str, **kwargs: Any) -> nn.Module:
    """The model of :func:`build_model`, without its info."""
    return build_model(spec, **kwargs)[0]


def _import_attr(spec: ModelSpec) -> Any:
    assert spec.module is not None and spec.attr is not None
    try:
        target: Any = importlib.import_module(spec.module)
    except ImportError as exc:
        raise ValueError(
            f"cannot import {spec.module!r} from model spec {spec.text!r} ({exc}); expected {_valid_forms()}"
        ) from exc
    for part in spec.attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(
                f"{spec.module!r} has no attribute {spec.attr!r} (model spec {spec.text!r}); "
                f"expected {_valid_forms()}"
            ) from None
    return target


def _valid_forms() -> str:
    return (f"'package.module:factory[:KEY=VALUE,...]' or a registered model[:KEY=VALUE,...]: "
            f"{', '.join(list_models())}")

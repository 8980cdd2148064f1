"""Parameter inventory: names, owning layers, tied and frozen parameters, layer order."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class ParamInfo:
    name: str  #: first name in ``model.named_parameters()``
    param: nn.Parameter
    layer: str  #: qualified name of the module that owns it ('' = the model itself)
    aliases: list[str] = field(default_factory=list)  #: other names of a tied parameter
    position: int = 0

    @property
    def trainable(self) -> bool:
        return self.param.requires_grad


@dataclass
class Inventory:
    """What gradsight watches in a model.

    ``params`` lists every unique parameter (tied parameters once, under their
    first name); ``watched`` the trainable ones, which are recorded; ``layers``
    the owning modules of watched parameters, in registration order until the
    forward order is known (see :class:`ForwardOrder`).
    """

    params: list[ParamInfo]
    watched: list[ParamInfo]
    layers: list[str]
    layer_types: dict[str, str]

    @classmethod
    def of(cls, model: nn.Module) -> Inventory:
        aliases: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
        params = []
        for pos, (name, p) in enumerate(model.named_parameters()):
            layer = name.rsplit(".", 1)[0] if "." in name else ""
            params.append(ParamInfo(name, p, layer, [a for a in aliases[id(p)] if a != name], pos))
        watched = [pi for pi in params if pi.trainable]
        layers: list[str] = []
        for pi in watched:
            if pi.layer not in layers:
                layers.append(pi.layer)
        types = {ln: type(model.get_submodule(ln)).__name__ for ln in layers}
        return cls(params, watched, layers, types)


class ForwardOrder:
    """Learns the order in which layers first run during one forward pass.

    Forward pre-hooks on each layer and a forward hook on the model record the
    first call of each layer; after the model's forward returns, ``order`` holds
    the layers in execution order (layers that did not run go last, in
    registration order) and ``done`` is set. The hooks are then no-ops until
    :meth:`remove` is called (by the monitor, outside the forward pass).
    """

    TAG = "forward-order"

    def __init__(self, model: nn.Module, layers: list[str], hooks) -> None:
        self._layers = layers
        self._seen: list[str] = []
        self._seen_set: set[str] = set()
        self.order: list[str] | None = None
        self.done = False
        self._hooks = hooks
        for ln in layers:
            mod = model.get_submodule(ln)
            hooks.add(mod.register_forward_pre_hook(self._make_pre(ln)), self.TAG)
        hooks.add(model.register_forward_hook(self._on_model_end), self.TAG)

    def _make_pre(self, layer: str):
        def pre_hook(module: nn.Module, args: tuple) -> None:
            if not self.done and layer not in self._seen_set and not torch.compiler.is_compiling():
                self._seen_set.add(layer)
                self._seen.append(layer)

        return pre_hook

    def _on_model_end(self, module: nn.Module, args: tuple, output: object) -> None:
        if self.done or not self._seen:
            return
        self.order = self._seen + [ln for ln in self._layers if ln not in self._seen_set]
        self.done = True

    def remove(self) -> None:
        self._hooks.remove(self.TAG)

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
    """Learns the order in which modules first run during one forward pass.

    Forward pre-hooks on every module and a forward hook on the model record the
    first call of each module; after the model's forward returns, :meth:`rank`
    orders any set of module names by execution (modules that did not run go
    last, in registration order) and ``done`` is set. The hooks are then no-ops
    until :meth:`remove` is called (by the monitor, outside the forward pass).
    Under ``torch.compile`` tracing the hooks do nothing (``done`` stays False).
    """

    TAG = "forward-order"

    def __init__(self, model: nn.Module, hooks) -> None:
        self._registration = [name for name, _ in model.named_modules()]
        self._leaf_model = len(self._registration) == 1
        self._seen: list[str] = []
        self._seen_set: set[str] = set()
        self.done = False
        self._hooks = hooks
        for name, mod in model.named_modules():
            hooks.add(mod.register_forward_pre_hook(self._make_pre(name)), self.TAG)
        hooks.add(model.register_forward_hook(self._on_model_end), self.TAG)

    def _make_pre(self, name: str):
        def pre_hook(module: nn.Module, args: tuple) -> None:
            # is_compiling() first: dynamo then reads (and guards on) none of our state
            if not torch.compiler.is_compiling() and not self.done and name not in self._seen_set:
                self._seen_set.add(name)
                self._seen.append(name)

        return pre_hook

    def _on_model_end(self, module: nn.Module, args: tuple, output: object) -> None:
        if torch.compiler.is_compiling():
            return
        if not self.done and (len(self._seen) > 1 or (self._leaf_model and self._seen)):
            self.done = True

    def rank(self, names: list[str]) -> list[str]:
        """``names`` in forward-execution order (registration order if unknown)."""
        wanted = set(names)
        order = self._seen if self.done else []
        ranked = [n for n in order if n in wanted]
        seen = set(ranked)
        ranked += [n for n in self._registration if n in wanted and n not in seen]
        seen = set(ranked)
        return ranked + [n for n in names if n not in seen]

    def exec_index(self) -> dict[str, int]:
        """Global first-execution index of every module (registration order if unknown)."""
        return {n: i for i, n in enumerate(self.rank(self._registration))}

    def remove(self) -> None:
        self._hooks.remove(self.TAG)

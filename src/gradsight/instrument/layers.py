"""Parameter inventory: names, owning layers, tied and frozen parameters, layer order.

A parameter's *layer* is the module that owns it, except for a parameter owned by
a module that also has parameterized submodules (a *container*: a ViT's class
token, a learned temperature, an encoder's position embedding). Such a parameter
is a layer of its own, named by the parameter (``class_token``,
``encoder.pos_embedding``), and :class:`ForwardOrder` places it where the forward
pass first uses it rather than where its container starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy
from torch.overrides import TorchFunctionMode

from gradsight.store.roles import PARAMETER_LAYER_TYPE


@dataclass
class ParamInfo:
    name: str  #: first name in ``model.named_parameters()``
    param: nn.Parameter
    layer: str  #: the owning module's qualified name ('' = the model), or ``name`` itself when owned by a container
    aliases: list[str] = field(default_factory=list)  #: other names of a tied parameter
    position: int = 0

    @property
    def trainable(self) -> bool:
        return self.param.requires_grad


def _containers(model: nn.Module) -> set[str]:
    """Names of the modules that have a descendant owning parameters."""
    owners = {name for name, mod in model.named_modules() if next(mod.parameters(recurse=False), None) is not None}
    return {prefix for name in owners if name for prefix in _ancestors(name)}


def _ancestors(name: str) -> list[str]:
    """``'a.b.c' -> ['', 'a', 'a.b']``."""
    parts = name.split(".")
    return [""] + [".".join(parts[:k]) for k in range(1, len(parts))]


@dataclass
class Inventory:
    """What gradsight watches in a model.

    ``params`` lists every unique parameter (tied parameters once, under their
    first name); ``watched`` those recorded: the trainable ones, then those frozen at
    ``gs.watch`` that were unfrozen later and :meth:`join` the run at their first
    recorded gradient; ``layers`` the layers of watched parameters, in registration
    order until the forward order is known (see :class:`ForwardOrder`). ``layer_types``
    has every parameter's layer (frozen ones too); a layer that is a single
    container-owned parameter has the entry ``"Parameter"``.

    Raises:
        ValueError: for a lazy module (``nn.LazyLinear`` ...) whose parameters are
            not initialized yet (nothing is known of them before its first forward pass).
    """

    params: list[ParamInfo]
    watched: list[ParamInfo]
    layers: list[str]
    layer_types: dict[str, str]

    @classmethod
    def of(cls, model: nn.Module) -> Inventory:
        lazy = [name for name, mod in model.named_modules()
                if any(is_lazy(p) for p in mod.parameters(recurse=False))]
        if lazy:
            raise ValueError(f"run one forward pass before gs.watch (lazy modules: {', '.join(lazy)})")
        aliases: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
        containers = _containers(model)
        params = []
        for pos, (name, p) in enumerate(model.named_parameters()):
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            layer = name if owner in containers else owner
            params.append(ParamInfo(name, p, layer, [a for a in aliases[id(p)] if a != name], pos))
        watched = [pi for pi in params if pi.trainable]
        layers = list(dict.fromkeys(pi.layer for pi in watched))
        own = {pi.layer for pi in params if pi.layer == pi.name}
        types = {pi.layer: PARAMETER_LAYER_TYPE if pi.layer in own else type(model.get_submodule(pi.layer)).__name__
                 for pi in params}
        return cls(params, watched, layers, types)

    def all_layers(self) -> list[str]:
        """The layers of every parameter, frozen ones included, in order of their first parameter."""
        return list(dict.fromkeys(pi.layer for pi in self.params))

    def join(self, pi: ParamInfo) -> bool:
        """Record ``pi`` (frozen at watch, unfrozen since) from now on; True when its layer is new."""
        self.watched.append(pi)
        if pi.layer in self.layers:
            return False
        self.layers.append(pi.layer)
        return True

    def layer_numel(self) -> dict[str, int]:
        """Trainable elements per layer."""
        out: dict[str, int] = {}
        for pi in self.watched:
            out[pi.layer] = out.get(pi.layer, 0) + pi.param.numel()
        return out

    def tied_layers(self) -> set[str]:
        """Layers with a watched parameter that has other names (a tied embedding and head)."""
        return {pi.layer for pi in self.watched if pi.aliases}


#: Tensor methods and attributes that read metadata, not values: not a use of a parameter.
_NOT_A_USE = frozenset({"__get__", "size", "dim", "ndimension", "numel", "nelement", "stride", "storage_offset",
                        "is_contiguous", "is_floating_point", "is_complex", "element_size", "data_ptr", "__len__",
                        "__repr__", "__format__"})


class _FirstUse(TorchFunctionMode):
    """Calls ``on_use(name)`` the first time an operation takes one of ``params`` as an input.

    Args:
        params: ``id(parameter) -> name`` of the parameters to watch for.
        on_use: called once per parameter, during the operation that first uses it.
    """

    def __init__(self, params: dict[int, str], on_use: Callable[[str], None]) -> None:
        super().__init__()
        self._params = params
        self._on_use = on_use

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._params and getattr(func, "__name__", "") not in _NOT_A_USE:
            self._note(args)
            self._note(kwargs.values())
        return func(*args, **kwargs)

    def _note(self, values) -> None:
        for v in values:
            if isinstance(v, (list, tuple)):
                self._note(v)
            elif isinstance(v, Tensor):
                name = self._params.pop(id(v), None)
                if name is not None:
                    self._on_use(name)


class ForwardOrder:
    """Learns the order in which modules first run during one forward pass.

    Forward pre-hooks on every module and a forward hook on the model record the
    first call of each module; after the model's forward returns, :meth:`rank`
    orders any set of module names by execution (modules that did not run go
    last, in registration order) and ``done`` is set. The hooks are then no-ops
    until :meth:`remove` is called (by the monitor, outside the forward pass).
    Under ``torch.compile`` tracing the hooks do nothing (``done`` stays False).

    Args:
        model: the model.
        hooks: the registry that owns every handle.
        params: layer name -> its parameters. A name that is not a module (a
            parameter owned by a container, see :class:`Inventory`) is ranked where
            an operation first takes the parameter as an input; so is a module
            that never runs itself but whose parameters are used (the ``out_proj``
            of ``nn.MultiheadAttention``). Only when there are such parameters, a
            ``TorchFunctionMode`` watches the operations' inputs during the one
            observed forward pass. In registration order a parameter follows its
            owning module.
    """

    TAG = "forward-order"

    def __init__(self, model: nn.Module, hooks, params: dict[str, list[Tensor]] | None = None) -> None:
        modules = [name for name, _ in model.named_modules()]
        own = [name for name in (params or {}) if name not in set(modules)]
        self._registration = []
        for name in modules:
            self._registration.append(name)
            self._registration += [p for p in own if (p.rsplit(".", 1)[0] if "." in p else "") == name]
        self._leaf_model = len(modules) == 1
        self._seen: list[str] = []
        self._seen_set: set[str] = set()
        self._own = set(own)
        self._used_at: dict[str, tuple[int, int]] = {}  # module -> (len(_seen), use count) at its first param use
        self.done = False
        self._hooks = hooks
        self._params = {id(p): name for name, ps in (params or {}).items() for p in ps} if own else {}
        self._mode: _FirstUse | None = None
        for name, mod in model.named_modules():
            hooks.attach(mod, "register_forward_pre_hook", self._make_pre(name), self.TAG)
        hooks.attach(model, "register_forward_hook", self._on_model_end, self.TAG)
        if self._params:
            hooks.attach(model, "register_forward_pre_hook", self._watch_params, self.TAG)
            hooks.attach(model, "register_forward_hook", self._stop_watching_params, self.TAG, always_call=True)

    def _note(self, name: str) -> None:
        if name not in self._seen_set:
            self._seen_set.add(name)
            self._seen.append(name)

    def _on_use(self, name: str) -> None:
        if name in self._own:
            self._note(name)
        elif name not in self._seen_set and name not in self._used_at:
            self._used_at[name] = (len(self._seen), len(self._used_at))

    def _watch_params(self, module: nn.Module, args: tuple) -> None:
        if torch.compiler.is_compiling() or self.done or self._mode is not None or not self._params:
            return
        self._mode = _FirstUse(self._params, self._on_use)
        self._mode.__enter__()

    def _stop_watching_params(self, module: nn.Module, args: tuple, output: object) -> None:
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)

    def _place_modules_that_did_not_run(self) -> None:
        """Insert modules that never ran at the first use of their parameters."""
        late = sorted(((at, n) for n, at in self._used_at.items() if n not in self._seen_set), reverse=True)
        for (index, _), name in late:
            self._seen.insert(index, name)
            self._seen_set.add(name)

    def _make_pre(self, name: str):
        def pre_hook(module: nn.Module, args: tuple) -> None:
            # is_compiling() first: dynamo then reads (and guards on) none of our state
            if not torch.compiler.is_compiling() and not self.done:
                self._note(name)

        return pre_hook

    def _on_model_end(self, module: nn.Module, args: tuple, output: object) -> None:
        if torch.compiler.is_compiling():
            return
        if not self.done and (len(self._seen) > 1 or (self._leaf_model and self._seen)):
            self._place_modules_that_did_not_run()
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

    def unseen(self, names: list[str]) -> list[str]:
        """Those of ``names`` that the observed forward pass did not run (or use); all before it."""
        return [n for n in names if not self.done or n not in self._seen_set]

    def remove(self) -> None:
        self._hooks.remove(self.TAG)

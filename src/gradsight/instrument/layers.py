"""Parameter inventory: names, owning layers, tied and frozen parameters, layer order.

A parameter's *layer* is the module that owns it, except for a parameter owned by
a module that also has parameterized submodules (a *container*: a ViT's class
token, a learned temperature, an encoder's position embedding). Such a parameter
is a layer of its own, named by the parameter (``class_token``,
``encoder.pos_embedding``), and :class:`ForwardOrder` places it where the forward
pass first uses it rather than where its container starts.

Some modules hold what makes one layer in submodules (:func:`module_owners`): a
parametrized module (``torch.nn.utils.parametrize``: ``weight_norm``,
``spectral_norm``, ``orthogonal``) keeps its tensors' originals in
``lin.parametrizations.weight.original0``, and an adapter wrapper (PEFT's LoRA
``Linear``) holds the layer it adapts in ``base_layer`` and its adapter in
``lora_A``/``lora_B``. Those submodules are parts of their owner: the parametrized
module (``lin``) or the wrapper (``q_proj``) is the layer, with every parameter below it.

A recurrent module (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) holds one layer per stacked layer
and direction: ``rnn.l0`` has ``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
``bias_hh_l0``; ``rnn.l0_reverse`` the ``_reverse`` ones
(:func:`gradsight.instrument.recurrent.stacked_layer`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from gradsight.instrument.recurrent import stacked_layer
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


def _ancestors(name: str) -> list[str]:
    """``'a.b.c' -> ['', 'a', 'a.b']``."""
    parts = name.split(".")
    return [""] + [".".join(parts[:k]) for k in range(1, len(parts))]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _module_of(param_name: str) -> str:
    """The qualified name of the module a parameter is registered on."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else ""


def is_adapter_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` wraps a layer with an adapter: a ``base_layer`` submodule plus the
    adapter's (PEFT's tuner layers name theirs in ``adapter_layer_names``; else children
    named ``lora_*``, as a hand-written LoRA names them)."""
    if not isinstance(getattr(module, "base_layer", None), nn.Module):
        return False
    return bool(getattr(module, "adapter_layer_names", ())) or any(n.startswith("lora_") for n, _ in module.named_children())


def module_owners(model: nn.Module) -> dict[str, str]:
    """``module name -> the module whose layer it is part of`` (every name, shared modules under each).

    A module is its own owner except the parts of a parametrized module (its
    ``parametrizations`` and everything below, owned by the parametrized module) and
    everything below an adapter wrapper (:func:`is_adapter_wrapper`: its ``base_layer``
    and adapter, owned by the wrapper); the outermost such owner wins.
    """
    parts_of: dict[str, str] = {}  # path -> owner of that path and everything below it
    adapters: set[str] = set()  # owners of everything strictly below them
    named = list(model.named_modules(remove_duplicate=False))
    for name, mod in named:
        if is_adapter_wrapper(mod):
            adapters.add(name)
        elif parametrize.is_parametrized(mod):
            parts_of[_join(name, "parametrizations")] = name
    owners = {}
    for name, _ in named:
        owners[name] = name
        paths = (_ancestors(name) + [name] if name else [name]) if parts_of or adapters else []
        for path in paths:  # outermost first
            if path in parts_of or (path in adapters and path != name):
                owners[name] = parts_of.get(path, path)
                break
    return owners


class _Layering:
    """Which layer each parameter belongs to (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self.owners = module_owners(model)
        self.module_types = {name: type(mod).__name__ for name, mod in model.named_modules(remove_duplicate=False)}
        #: modules that own parameters (their own, their parametrizations', their adapter's)
        self.owning = {self.owners[name] for name, mod in model.named_modules()
                       if next(mod.parameters(recurse=False), None) is not None}
        #: modules with a descendant that owns parameters
        self.containers = {prefix for name in self.owning if name for prefix in _ancestors(name)}
        #: recurrent modules (one layer per stacked layer and direction) -> their type
        self.recurrent = {name: type(mod).__name__ for name, mod in model.named_modules()
                          if isinstance(mod, nn.RNNBase)}

    def layer(self, param_name: str) -> str:
        """The layer of a parameter: its owning module, or for a container a name of its own:
        the parameter's (``class_token``) or the parametrized tensor's (``block.scale`` for
        ``block.parametrizations.scale.original``); for a recurrent module, its stacked layer
        (``rnn.l0``, ``rnn.l0_reverse``)."""
        module = _module_of(param_name)
        owner = self.owners[module]
        if owner in self.recurrent and owner == module:
            stacked = stacked_layer(param_name.rsplit(".", 1)[-1])
            if stacked is not None:
                return _join(owner, stacked)
        if owner not in self.containers:
            return owner
        if owner == module:
            return param_name
        below = param_name[len(owner) + 1 if owner else 0:].split(".")  # parametrizations.<tensor>.original
        return _join(owner, below[1])

    def layer_type(self, layer: str) -> str:
        """The ``module_type`` of a layer: its module's class name (a recurrent module's for
        its stacked layers), or ``Parameter`` for a container's parameter."""
        if layer in self.owners:
            return self.module_types[layer]
        recurrent = self.recurrent.get(_module_of(layer))
        return recurrent if recurrent is not None else PARAMETER_LAYER_TYPE

    def leaf_layers(self, model: nn.Module) -> list[str]:
        """Modules that are a layer by themselves: they own parameters and every submodule is a part of them."""
        names = [name for name, _ in model.named_modules() if self.owners[name] == name]
        parents = {_module_of(name) for name, owner in self.owners.items() if name and owner == name}
        return [name for name in names if name in self.owning and name not in parents]


def param_layers(model: nn.Module) -> dict[str, str]:
    """``parameter name -> its layer``, as the run records it (:class:`Inventory`): the owning
    module, a parametrized module for its originals, an adapter wrapper for its adapter, or
    the parameter's own name for a container's parameter."""
    layering = _Layering(model)
    return {name: layering.layer(name) for name, _ in model.named_parameters()}


def layer_modules(model: nn.Module) -> list[str]:
    """Modules that are layers by themselves: a leaf module with parameters, a parametrized
    module or an adapter wrapper (the default choice of modules with activation statistics)."""
    return _Layering(model).leaf_layers(model)


@dataclass
class Inventory:
    """What gradsight watches in a model.

    ``params`` lists every unique parameter (tied parameters once, under their
    first name); ``watched`` those recorded: the trainable ones, then those frozen at
    ``gs.watch`` that were unfrozen later and :meth:`join` the run at their first
    recorded gradient; ``layers`` the layers of watched parameters, in registration
    order until the forward order is known (see :class:`ForwardOrder`); ``frozen_layers``
    the layers of frozen parameters only (not recorded; their place decides which layer
    is the head). ``layer_types`` has every parameter's layer (frozen ones too); a layer
    that is a single container-owned parameter has the entry ``"Parameter"``.

    Raises:
        ValueError: for a lazy module (``nn.LazyLinear`` ...) whose parameters are
            not initialized yet (nothing is known of them before its first forward pass).
    """

    params: list[ParamInfo]
    watched: list[ParamInfo]
    layers: list[str]
    layer_types: dict[str, str]  #: of ``layers`` and ``frozen_layers``
    frozen_layers: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, model: nn.Module) -> Inventory:
        lazy = [name for name, mod in model.named_modules()
                if any(is_lazy(p) for p in mod.parameters(recurse=False))]
        if lazy:
            raise ValueError(f"run one forward pass before gs.watch (lazy modules: {', '.join(lazy)})")
        aliases: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
        layering = _Layering(model)
        params = []
        for pos, (name, p) in enumerate(model.named_parameters()):
            params.append(ParamInfo(name, p, layering.layer(name), [a for a in aliases[id(p)] if a != name], pos))
        watched = [pi for pi in params if pi.trainable]
        layers = list(dict.fromkeys(pi.layer for pi in watched))
        frozen = [ln for ln in dict.fromkeys(pi.layer for pi in params) if ln not in layers]
        types = {ln: layering.layer_type(ln) for ln in layers + frozen}
        return cls(params, watched, layers, types, frozen)

    def all_layers(self) -> list[str]:
        """The layers of every parameter, frozen ones included, in order of their first parameter."""
        return list(dict.fromkeys(pi.layer for pi in self.params))

    def join(self, pi: ParamInfo) -> bool:
        """Record ``pi`` (frozen at watch, unfrozen since) from now on; True when its layer is new."""
        self.watched.append(pi)
        if pi.layer in self.layers:
            return False
        self.layers.append(pi.layer)
        if pi.layer in self.frozen_layers:
            self.frozen_layers.remove(pi.layer)
        return True

    def layer_numel(self) -> dict[str, int]:
        """Trainable elements per layer."""
        out: dict[str, int] = {}
        for pi in self.watched:
            out[pi.layer] = out.get(pi.layer, 0) + pi.param.numel()
        return out

    def layer_params(self) -> dict[str, list[Tensor]]:
        """Every layer's parameters, frozen layers included (what :class:`ForwardOrder` places)."""
        out: dict[str, list[Tensor]] = {}
        for pi in self.params:
            out.setdefault(pi.layer, []).append(pi.param)
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

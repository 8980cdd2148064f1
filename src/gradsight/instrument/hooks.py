"""One owner for every hook handle gradsight adds.

Module and optimizer hooks are registered through :meth:`HookRegistry.attach`, which
wraps the function in an :class:`OwnHook`: it runs only when called on the object it
was registered on. A module that holds such a hook reduces (for ``pickle``, ``torch.save``,
``copy.deepcopy`` and with it ``torch.optim.swa_utils.AveragedModel``, ``copy.copy``) to
its state without gradsight's entries in its hook dictionaries: a copy of a watched model
never touches the original's statistics, and its pickle is the one of an unwatched model
(no gradsight name in it; it loads where gradsight is not installed). Elsewhere an
:class:`OwnHook` that is copied or pickled becomes an :class:`InertHook`, which does nothing.
"""

from __future__ import annotations

import copy
import functools
import weakref
from collections.abc import Callable
from typing import Any, Protocol


class _Handle(Protocol):
    def remove(self) -> None: ...


class InertHook:
    """What a gradsight hook becomes on a copy: does nothing, pickles and deep-copies."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __repr__(self) -> str:
        return "InertHook()"


class OwnHook:
    """Calls ``fn`` only when the hook is called on ``owner`` (a module or an optimizer).

    PyTorch passes the object that holds the hook as the first argument; on a shallow
    copy (which shares the hook dictionaries) that object is the copy, and the call does
    nothing. Deep copies and pickles get an :class:`InertHook` instead of this object
    (``fn`` is usually a closure, which cannot be pickled). Only a weak reference to the
    owner is kept.
    """

    __slots__ = ("_owner", "fn", "__weakref__")

    def __init__(self, owner: Any, fn: Callable[..., Any]) -> None:
        self._owner = weakref.ref(owner)
        self.fn = fn

    def __call__(self, owner: Any, *args: Any, **kwargs: Any) -> Any:
        if owner is not self._owner():
            return None
        return self.fn(owner, *args, **kwargs)

    def __deepcopy__(self, memo: dict) -> InertHook:
        return InertHook()

    def __copy__(self) -> InertHook:
        return InertHook()

    def __reduce__(self) -> tuple:
        return (InertHook, ())


_REDUCE = "__reduce_ex__"


def _unwatched_state(state: Any) -> Any:
    """``state`` (a module's ``__getstate__``) without gradsight's hooks: the
    :class:`OwnHook` entries of its hook dictionaries, their ids in the companion
    dictionaries (``_forward_hooks_with_kwargs``, ...), and the reducer itself."""
    if not isinstance(state, dict):
        return state
    state = {k: v for k, v in state.items() if k != _REDUCE}
    ids = {k for v in state.values() if isinstance(v, dict) for k, h in v.items() if isinstance(h, OwnHook)}
    for key, value in state.items():
        if ids and isinstance(value, dict) and key.startswith("_") and "hooks" in key and not ids.isdisjoint(value):
            kept = copy.copy(value)
            for k in ids:
                kept.pop(k, None)
            state[key] = kept
    return state


def _reduce_unwatched(ref: weakref.ref, protocol: int) -> Any:
    """A module's ``__reduce_ex__`` while gradsight hooks it: the default reduction
    with :func:`_unwatched_state` as the state."""
    rv = object.__reduce_ex__(ref(), protocol)
    if not isinstance(rv, tuple) or len(rv) < 3:
        return rv
    return (rv[0], rv[1], _unwatched_state(rv[2]), *rv[3:])


def _reduce_without_hooks(owner: Any) -> bool:
    """Make ``owner`` (a module) pickle and copy without gradsight's hooks: an instance
    ``__reduce_ex__`` (pickle and ``copy`` look it up on the instance), left out of
    the state it reduces to. True when this call installed it."""
    d = getattr(owner, "__dict__", None)
    if isinstance(d, dict) and "_forward_hooks" in d and _REDUCE not in d:
        object.__setattr__(owner, _REDUCE, functools.partial(_reduce_unwatched, weakref.ref(owner)))
        return True
    return False


def _restore_reduce(owner: Any) -> None:
    """Take back the instance ``__reduce_ex__`` of :func:`_reduce_without_hooks` once no
    gradsight hook is left on ``owner`` (another monitor's may be), so a closed monitor
    leaves the module as it found it."""
    d = getattr(owner, "__dict__", None)
    reducer = d.get(_REDUCE) if isinstance(d, dict) else None
    if not (isinstance(reducer, functools.partial) and reducer.func is _reduce_unwatched):
        return
    if any(isinstance(h, OwnHook) for v in d.values() if isinstance(v, dict) for h in v.values()):
        return
    del d[_REDUCE]


class HookRegistry:
    """Collects removable handles (module, tensor and optimizer hooks).

    ``remove_all`` removes each handle once; calling it again does nothing.
    Handles can be grouped by a tag so one kind of hook can be removed early.
    """

    def __init__(self) -> None:
        self._handles: list[tuple[str, _Handle]] = []
        self._owners: list[weakref.ref] = []  #: objects given an instance reducer by attach

    def add(self, handle: Any, tag: str = "default") -> Any:
        self._handles.append((tag, handle))
        return handle

    def attach(self, owner: Any, register: str, fn: Callable[..., Any], tag: str = "default", **kwargs: Any) -> Any:
        """Register ``fn`` on ``owner`` with its method ``register`` (e.g.
        ``"register_forward_hook"``, ``"register_step_pre_hook"``) as an :class:`OwnHook`,
        so that copies of ``owner`` do not run it; ``kwargs`` go to that method.

        Returns:
            The handle, owned by this registry.
        """
        _reduce_without_hooks(owner)
        if _REDUCE in getattr(owner, "__dict__", {}) and not any(r() is owner for r in self._owners[-1:]):
            self._owners.append(weakref.ref(owner))  # (another monitor's reducer too: the last to close takes it)
        return self.add(getattr(owner, register)(OwnHook(owner, fn), **kwargs), tag)

    def _restore_owners(self) -> None:
        alive = [r for r in self._owners if r() is not None]
        for r in alive:
            _restore_reduce(r())
        self._owners = [r for r in alive if _REDUCE in getattr(r(), "__dict__", {})]

    def remove(self, tag: str) -> None:
        keep = []
        for t, h in self._handles:
            if t == tag:
                h.remove()
            else:
                keep.append((t, h))
        self._handles = keep  # (reducers are taken back at remove_all: this runs at every step)

    def remove_all(self) -> None:
        handles, self._handles = self._handles, []
        for _, h in handles:
            h.remove()
        self._restore_owners()

    def __len__(self) -> int:
        return len(self._handles)

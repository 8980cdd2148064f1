"""One owner for every hook handle gradsight adds.

Module and optimizer hooks are registered through :meth:`HookRegistry.attach`, which
wraps the function in an :class:`OwnHook`: it runs only when called on the object it
was registered on. ``copy.deepcopy`` (and with it ``torch.optim.swa_utils.AveragedModel``)
and pickling copy a module's hook dictionaries; there an :class:`OwnHook` becomes an
:class:`InertHook`, which does nothing and pickles, so a copy of a watched model never
touches the original's statistics and can be saved with ``torch.save``.
"""

from __future__ import annotations

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


class HookRegistry:
    """Collects removable handles (module, tensor and optimizer hooks).

    ``remove_all`` removes each handle once; calling it again does nothing.
    Handles can be grouped by a tag so one kind of hook can be removed early.
    """

    def __init__(self) -> None:
        self._handles: list[tuple[str, _Handle]] = []

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
        return self.add(getattr(owner, register)(OwnHook(owner, fn), **kwargs), tag)

    def remove(self, tag: str) -> None:
        keep = []
        for t, h in self._handles:
            if t == tag:
                h.remove()
            else:
                keep.append((t, h))
        self._handles = keep

    def remove_all(self) -> None:
        handles, self._handles = self._handles, []
        for _, h in handles:
            h.remove()

    def __len__(self) -> int:
        return len(self._handles)

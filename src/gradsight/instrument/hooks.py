"""One owner for every hook handle gradsight adds."""

from __future__ import annotations

from typing import Any, Protocol


class _Handle(Protocol):
    def remove(self) -> None: ...


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

"""The zoo's residual block: ``ResidualBlock``, and ``residual_blocks`` to list a zoo model's blocks.

Every block in the zoo subclasses ``ResidualBlock`` and exposes:

- ``branch``: an ``nn.Module`` computing the residual branch ``F(x)``;
- ``shortcut``: the module computing the skip path (``nn.Identity``, ``PadShortcut`` or a
  projection), or ``None`` when the skip connection is off;
- ``skip``: whether the skip connection is active;
- ``post_act``: the activation applied after the addition, or ``None``.

Its forward is ``post_act(branch(x) + shortcut(x))`` when ``skip`` and ``post_act(branch(x))``
otherwise, with the addition out of place, so forward hooks on ``branch`` and ``shortcut`` see
exactly the two terms of the sum, and ``register_full_backward_hook`` works.

This structure is for building the zoo (Fixup initialization needs each branch's layers).
Measuring does not rely on it: the monitor, ``gs.path_lengths``, ``gs.probe`` and the graph find
residual blocks of any model in the autograd graph
(:func:`gradsight.instrument.residual.find_residual_additions`), and find exactly the zoo's blocks.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """``out = post_act(branch(x) + shortcut(x))`` if ``skip``, else ``post_act(branch(x))``.

    Subclasses build ``branch`` and ``shortcut`` and say what they compute; this class owns the
    forward, so every block in the zoo adds the same way. ``shortcut`` is dropped (set to
    ``None``) when ``skip`` is off, so a plain block has no unused parameters.
    """

    def __init__(
        self,
        branch: nn.Module,
        shortcut: nn.Module | None,
        *,
        skip: bool,
        post_act: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if skip and shortcut is None:
            raise ValueError("skip=True needs a shortcut module (nn.Identity for the identity)")
        self.branch = branch
        self.skip = skip
        self.shortcut = shortcut if skip else None
        self.post_act = post_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x) + self.shortcut(x) if self.skip else self.branch(x)
        return out if self.post_act is None else self.post_act(out)

    def extra_repr(self) -> str:
        return f"skip={self.skip}"


def residual_blocks(model: nn.Module, *, active_only: bool = True) -> list[nn.Module]:
    """The ``ResidualBlock`` modules of a zoo model, in registration (= forward) order.

    For any other model, find its blocks in the autograd graph with
    :func:`gradsight.probes.paths.find_residual_blocks`.

    Args:
        model: any network.
        active_only: keep only blocks whose skip connection is on; pass ``False`` to also get the
            blocks of a plain network (``skip=False``), e.g. to compare branch norms.
    """
    return [
        module
        for module in model.modules()
        if isinstance(module, ResidualBlock) and (module.skip or not active_only)
    ]

"""The ``layers`` table: every layer, residual block and tracked module, in forward order."""

from __future__ import annotations

from collections.abc import Callable

from gradsight.instrument.activations import ActivationRecorder
from gradsight.instrument.layers import ForwardOrder, Inventory
from gradsight.store.roles import row_roles
from gradsight.store.schema import RowKind
from gradsight.store.writer import Writer

#: ``(name, depth, module_type, kind, role, tied)``
LayerRow = tuple[str, int, str, str, str, int]


def layer_rows(
    layers: list[str], module_kinds: dict[str, str], types: dict[str, str], rank: Callable[[list[str]], list[str]],
    numel: dict[str, int] | None = None, aliased: set[str] | frozenset[str] = frozenset(),
    frozen: list[tuple[str, str, int]] | tuple[()] = (), unplaced: list[str] | tuple[()] = (),
) -> list[LayerRow]:
    """Rows of the ``layers`` table.

    Args:
        layers: names of the layers (what owns watched parameters).
        module_kinds: ``name -> 'block' | 'module'`` of residual additions (in the
            forward order of the additions) and other tracked modules (activation statistics).
        types: ``name -> module type`` shown in the table.
        rank: orders names by forward execution.
        numel: trainable elements per layer (for the ``scalar`` role).
        aliased: layers with a tied parameter.
        frozen: :func:`frozen_places`: the layers of frozen parameters only have no
            rows, but the roles are decided over every layer in forward order (a
            frozen output layer is the head, so no recorded layer is).
        unplaced: layers the observed forward pass did not run (never the head).

    Returns:
        A ``layer`` row for every layer, a ``block`` row for every residual addition
        (named after the module that owns it, ``module[branch]`` when it owns several;
        a name can have both: a block that owns parameters itself) and a
        ``module`` row for every other tracked module. ``depth`` ranks layers among
        layers, blocks among blocks and modules among modules and layers; ``role``
        and ``tied`` are :func:`gradsight.store.roles.row_roles`. A module called
        several times in one forward (a shared block) has one row, at the depth of its
        first call; its statistics are pooled over the calls.
    """
    blocks = [n for n, k in module_kinds.items() if k == RowKind.BLOCK]
    taken = set(layers) | set(blocks)
    modules = [n for n, k in module_kinds.items() if k == RowKind.MODULE and n not in taken]
    module_set = set(modules)
    rows = [(n, d, types.get(n, "?"), RowKind.LAYER) for d, n in enumerate(rank(list(layers)))]
    rows += [(n, d, types.get(n, "?"), RowKind.BLOCK) for d, n in enumerate(blocks)]
    rows += [(n, d, types.get(n, "?"), RowKind.MODULE) for d, n in enumerate(rank(modules + list(layers))) if n in module_set]
    roles = row_roles(rows, numel or {}, aliased, frozen, unplaced)
    return [row + extra for row, extra in zip(rows, roles)]


def frozen_places(layers: list[str], frozen: list[str] | tuple[str, ...], types: dict[str, str],
                  rank: Callable[[list[str]], list[str]]) -> list[tuple[str, str, int]]:
    """``(name, module_type, before)`` of every layer of frozen parameters only, in forward
    order: ``before`` counts the (recorded) ``layers`` that run before it
    (``meta.frozen_layers``, what :func:`gradsight.store.roles.row_roles` places them by)."""
    trainable = set(layers)
    out, before = [], 0
    for name in rank(list(layers) + [n for n in frozen if n not in trainable]):
        if name in trainable:
            before += 1
        else:
            out.append((name, types.get(name, "?"), before))
    return out


def depth_source(order: ForwardOrder, layers: list[str]) -> tuple[str, list[str]]:
    """Where the layers' depths come from, and the layers placed by registration order.

    Returns:
        ``("forward", [])`` when the observed forward pass ran (or used) every
        layer; ``("forward+registration", names)`` when it did not run or use the
        layers ``names`` (placed after the others, in registration order);
        ``("registration", layers)`` before a forward pass was observed.
    """
    if not order.done:
        return "registration", list(layers)
    unplaced = order.unseen(layers)
    return ("forward+registration" if unplaced else "forward"), unplaced


class LayerTable:
    """Writes the ``layers`` table when the forward order (or the residual blocks) become known.

    Until a forward pass was observed the order is registration order and
    ``meta.depth_source`` says ``registration`` (see :func:`depth_source`). Once the order and the blocks are
    final, the forward-order hooks are removed and :meth:`sync` returns at once.
    """

    def __init__(self, inventory: Inventory, order: ForwardOrder, activations: ActivationRecorder | None,
                 writer: Writer) -> None:
        self._inventory = inventory
        self._order = order
        self._activations = activations
        self._writer = writer
        self._written: tuple | None = None  #: what the table last written was made from
        self.final = False

    def changed(self) -> None:
        """Layers joined the run (parameters frozen at watch, unfrozen since): the next
        :meth:`sync` writes the table again."""
        self.final = False
        self._written = None

    def sync(self) -> None:
        """Write the table if what it is made from changed since it was last written."""
        if self.final:
            return
        source, unplaced = depth_source(self._order, self._inventory.layers)
        module_kinds = self._activations.module_kinds() if self._activations is not None else {}
        links = self._activations.saturation_links() if self._activations is not None else {}
        signature = (source, tuple(sorted(module_kinds.items())), repr(sorted(links.items())))
        if signature != self._written:
            types = dict(self._inventory.layer_types)
            if self._activations is not None:
                types.update(self._activations.types)
            inv = self._inventory
            frozen = frozen_places(inv.layers, inv.frozen_layers, types, self._order.rank)
            self._writer.write_layers(layer_rows(inv.layers, module_kinds, types, self._order.rank,
                                                 inv.layer_numel(), inv.tied_layers(), frozen, unplaced))
            self._writer.set_meta(depth_source=source, depth_unplaced=unplaced, frozen_layers=frozen,
                                  **({"saturation_links": links} if links else {}))
            self._written = signature
        if self._order.done and (self._activations is None or self._activations.blocks_known):
            self._order.remove()
            self.final = True

"""Layer roles: what a layer does in the network, from its module type and its place.

One pure function, used where the ``layers`` rows are written (``instrument``) and
where they are read (stores written before roles were recorded derive them here,
from the same rows), so a role never depends on who asks.

Roles (:class:`Role`):

- ``embedding``: the input side. ``nn.Embedding``/``EmbeddingBag`` and any type whose
  name ends in ``Embedding``/``Embeddings``; and a parameter owned by a container
  (``module_type`` ``Parameter``, e.g. a ViT's ``class_token`` or ``pos_embedding``)
  that the forward pass uses before any layer except embeddings and at most one
  weighted layer (a patch or stem projection).
- ``norm``: any type whose name ends in ``Norm`` or ``Norm1d``/``2d``/``3d``
  (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm, ``LlamaRMSNorm``,
  ``LayerNorm2d`` ...), ``Norm1`` (timm's ``GroupNorm1``), the same with ``Act`` (timm's
  norm-and-activation layers: ``BatchNormAct2d``, ``GroupNormAct``, ``LayerNormAct2d``), or
  in ``Normalization``.
- ``weighted``: convolutions and linear maps (type names ending in ``Linear`` or
  ``Conv``/``Conv1d``..``Conv3d``/``ConvTranspose2d``/``Conv2dSame``, Hugging Face's
  ``Conv1D``), recurrent layers (type names ending in ``RNN``, ``LSTM``, ``GRU``, with or
  without ``Cell``: each stacked layer and direction of an ``nn.LSTM`` is a layer of its
  own, :mod:`gradsight.instrument.recurrent`), and the in-projection weight of ``nn.MultiheadAttention``
  (a container-owned ``in_proj_weight``/``q_proj_weight``/``k_proj_weight``/``v_proj_weight``).
- ``head``: the layer producing the output: the last layer in forward order, when it
  is weighted. A head whose weight is tied to the input embedding has no row of its
  own (a tied parameter is recorded once, under its first name): the embedding's row
  is marked ``tied`` and there is no head. The order is that of every layer, frozen or
  not (what owns parameters, decided by the module structure,
  :mod:`gradsight.instrument.layers`): a frozen output layer (LoRA fine-tuning with a
  frozen ``lm_head``) is the head, so no recorded layer is; its ``module`` row
  (activation statistics) has the role ``head``.
- ``scalar``: a layer of at most :data:`SCALAR_MAX_NUMEL` elements that is none of the
  above (a temperature, a ReZero ``alpha``, a PReLU slope).
- ``other``: everything else (e.g. a per-channel layer scale, ``in_proj_bias``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence

from gradsight.store.schema import RowKind

#: ``module_type`` of a layer that is a single parameter owned by a container.
PARAMETER_LAYER_TYPE = "Parameter"

#: A layer that is none of embedding, norm or weighted and has at most this many
#: trainable elements is a ``scalar``.
SCALAR_MAX_NUMEL = 16


class Role:
    """The roles of the ``layers`` table's ``role`` column."""

    EMBEDDING = "embedding"
    NORM = "norm"
    WEIGHTED = "weighted"
    HEAD = "head"
    SCALAR = "scalar"
    OTHER = "other"

    ALL = (EMBEDDING, NORM, WEIGHTED, HEAD, SCALAR, OTHER)
    #: What depth views (flow, heatmap, comparisons, ``info``) show by default: the
    #: weighted layers and the head, no norm layers.
    DEPTH = (WEIGHTED, HEAD)
    #: What the first/last-layer ratio runs over: weighted layers only.
    RATIO = (WEIGHTED,)


_NORM = re.compile(r"(Norm(Act)?([123][dD]?)?|Normalization)$")
_RECURRENT = re.compile(r"(RNN|LSTM|GRU)(Cell)?$")
_WEIGHTED = re.compile(rf"(Linear|Conv(Transpose)?([123][dD])?(Same)?|{_RECURRENT.pattern[:-1]})$")
_EMBEDDING = re.compile(r"Embedding(Bag|s)?$")
#: Container-owned parameters of ``nn.MultiheadAttention`` that are its in-projection.
_IN_PROJECTION = frozenset({"in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"})
#: ... and its biases (of the in-projection; the learned key/value biases): never embeddings.
_IN_PROJECTION_BIAS = frozenset({"in_proj_bias", "bias_k", "bias_v"})


def is_recurrent_type(module_type: str) -> bool:
    """Whether a layer's ``module_type`` is a recurrent layer's (``LSTM``, ``GRUCell``, ``RNN`` ...),
    a ``weighted`` layer whose gates saturate (the diagnosis speaks of gates, not units)."""
    return bool(_RECURRENT.search(module_type))


def role_of(module_type: str, *, name: str = "", numel: int | None = None) -> str:
    """The role of a layer by its type alone (no ``head``, no place in the graph).

    Args:
        module_type: the layer's ``module_type`` (the module's class name, or
            ``Parameter`` for a parameter owned by a container).
        name: the layer's name (for a ``Parameter`` layer, the parameter's qualified name).
        numel: the layer's trainable elements, if known.

    Returns:
        ``embedding``, ``norm``, ``weighted``, ``scalar`` or ``other``; a container-owned
        parameter of more than :data:`SCALAR_MAX_NUMEL` elements is ``other`` here and
        may be an ``embedding`` by its place (:func:`layer_roles`).
    """
    if module_type == PARAMETER_LAYER_TYPE:
        if name.rsplit(".", 1)[-1] in _IN_PROJECTION:
            return Role.WEIGHTED
    elif _EMBEDDING.search(module_type):
        return Role.EMBEDDING
    elif _NORM.search(module_type):
        return Role.NORM
    elif _WEIGHTED.search(module_type):
        return Role.WEIGHTED
    if numel is not None and 0 < numel <= SCALAR_MAX_NUMEL:
        return Role.SCALAR
    return Role.OTHER


def layer_roles(layers: Sequence[tuple[str, str, int | None]], unplaced: Collection[str] = ()) -> list[str]:
    """The role of every layer of a network.

    Args:
        layers: ``(name, module_type, numel)`` of every layer (what owns trainable
            parameters), in forward order.
        unplaced: layers the observed forward pass did not run (``meta.depth_unplaced``),
            placed after the others: never the head, unless no layer ran.

    Returns:
        One role per layer (see the module docstring): :func:`role_of`, a
        container-owned parameter on the input side becomes an ``embedding``, and the
        last layer that is no embedding, when weighted, the ``head``.
    """
    roles = [role_of(t, name=n, numel=k) for n, t, k in layers]
    weighted_before = 0
    input_side = True
    for i, (name, module_type, _) in enumerate(layers):
        role = roles[i]
        if module_type == PARAMETER_LAYER_TYPE and role == Role.OTHER and input_side \
                and name.rsplit(".", 1)[-1] not in _IN_PROJECTION_BIAS:
            roles[i] = role = Role.EMBEDDING
        if role == Role.WEIGHTED:
            weighted_before += 1
            input_side = input_side and weighted_before <= 1
        elif role != Role.EMBEDDING:
            input_side = False
    # the last layer that is no embedding: an embedding whose weight another module calls
    # (tied or shared, as in BART's ``model.shared``) is never called itself, so its place in
    # forward order is unknown and it sits at the end
    # ... and a layer the forward pass did not run (a module built and never called, as
    # wav2vec2-Conformer's positional convolution) has no place there either
    unplaced = set(unplaced)
    if len(unplaced) >= len(layers):  # no forward pass observed yet: registration order, as before
        unplaced = set()
    last = next((i for i in range(len(roles) - 1, -1, -1)
                 if roles[i] != Role.EMBEDDING and layers[i][0] not in unplaced), None)
    if last is not None and roles[last] == Role.WEIGHTED:
        roles[last] = Role.HEAD
    return roles


def as_roles(role: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """A role filter as a tuple of roles (``None`` or ``'all'``: no filter).

    Raises:
        ValueError: an unknown role.
    """
    if role is None:
        return None
    roles = (role,) if isinstance(role, str) else tuple(role)
    if "all" in roles:
        return None
    unknown = [r for r in roles if r not in Role.ALL]
    if unknown:
        raise ValueError(f"unknown role {unknown[0]!r}; roles: {', '.join(Role.ALL)} (or 'all')")
    return roles


def role_label(roles: str | Iterable[str] | None) -> str:
    """How a figure names the layers it shows: ``'weighted layers and head'``, ``'all layers'`` ..."""
    roles = as_roles(roles)
    if roles is None:
        return "all layers"
    if tuple(roles) == Role.DEPTH:
        return "weighted layers and head"
    return " + ".join(roles) + " layers"


def row_roles(rows: Sequence[tuple[str, int | None, str, str]], numel: Mapping[str, int],
              aliased: Collection[str], frozen: Sequence[tuple[str, str, int]] = (),
              unplaced: Collection[str] = ()) -> list[tuple[str, int]]:
    """``(role, tied)`` of every row of the ``layers`` table.

    Args:
        rows: ``(name, depth, module_type, kind)`` rows, any order.
        numel: trainable elements per layer name.
        aliased: names of the layers with a parameter that has other names (tied).
        frozen: ``(name, module_type, before)`` of the layers of frozen parameters
            only, which have no row: ``before`` is how many ``layer`` rows come before
            it in forward order (``meta.frozen_layers``).
        unplaced: layers the observed forward pass did not run (``meta.depth_unplaced``).

    Returns:
        For each row, in the order given: a ``layer`` row's role from
        :func:`layer_roles` over every layer, the rows' in depth order and the frozen
        ones at their places; a ``module`` row takes the role of the layer of the same
        name (a frozen one's too), else :func:`role_of` its type; a ``block`` row
        :func:`role_of` its type. ``tied`` is 1 for a tied layer's rows.
    """
    layer_idx = [i for i, r in enumerate(rows) if r[3] == RowKind.LAYER]
    layer_idx.sort(key=lambda i: (rows[i][1] is None, rows[i][1] if rows[i][1] is not None else 0, i))
    placed = [((k, 1, 0), (rows[i][0], rows[i][2])) for k, i in enumerate(layer_idx)]
    placed += [((before, 0, j), (name, module_type)) for j, (name, module_type, before) in enumerate(frozen)]
    every = [layer for _, layer in sorted(placed)]
    ranked = layer_roles([(name, module_type, numel.get(name)) for name, module_type in every], unplaced)
    of_layer = {name: role for (name, _), role in zip(every, ranked)}
    out = []
    for name, _, module_type, kind in rows:
        if kind == RowKind.LAYER or (kind == RowKind.MODULE and name in of_layer):
            role = of_layer[name]
        else:
            role = role_of(module_type, name=name)
        out.append((role, int(name in aliased)))
    return out

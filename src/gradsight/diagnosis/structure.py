"""Like with like: which recorded names hold the same structural position.

A depth profile that compares the first weighted layer with the last compares unlike
layers: an attention query with a pooler, a 16x16 stem with a 1x1 last convolution, the
last block of one stage with the first, downsampling, block of the next. The rules compare
a layer only with itself in the other instances of a repeated module: the blocks of one
stage, the layers of a transformer, the hidden layers of a plain stack.

Repeats are found from the module tree, not from digits in names: a module (a dotted
prefix of the recorded names) is an *instance* when a sibling (same parent) has the same
*signature*, the relative names, types and parameter shapes of every layer under it. A
stage's first block, which downsamples and widens, differs from the rest and is left out;
blocks at one width in one stage have one resolution. Each name belongs to the outermost
repeated module above it (or itself), at its relative path there: ``encoder.layer.3.
attention.self.query`` is ``attention.self.query`` of the 4th instance of
``encoder.layer.*``, never compared with ``key`` or ``value``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gradsight.store.view import RunView


@dataclass(frozen=True)
class Chain:
    """Sibling instances of one repeated module, in forward order.

    Attributes:
        parent: the container (``layer2``, ``encoder.layer``, ``""`` for the model).
        instances: the instances' names (dotted prefixes), in forward order.
    """

    parent: str
    instances: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.instances)


def _within(name: str, prefix: str) -> str | None:
    """``name``'s path relative to ``prefix`` (``""`` for the prefix itself), or None."""
    if name == prefix:
        return ""
    if name.startswith(prefix) and name[len(prefix)] in ".[":
        return name[len(prefix):]
    return None


def _prefixes(name: str) -> list[str]:
    """The dotted prefixes of a name, outermost first, the name itself last
    (``h.0[attn]`` -> ``h``, ``h.0``, ``h.0[attn]``)."""
    base = name.split("[", 1)[0]
    parts = base.split(".")
    out = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    if base != name:
        out.append(name)
    return out


def _parent(prefix: str) -> str:
    if prefix.endswith("]"):
        return prefix[:prefix.rindex("[")]
    return prefix.rpartition(".")[0]


def _spatial(prefix: str, mtype: dict[str, str]) -> bool:
    """A layer type over feature maps of some resolution (``Conv2d``, ``BatchNorm2d``, ...)."""
    t = mtype.get(prefix, "")
    return t[-2:] in ("1d", "2d", "3d") and not t.startswith(("Linear", "LayerNorm"))


def _repeatable(prefix: str, n_layers: int, mtype: dict[str, str] | None = None) -> bool:
    """Whether ``prefix`` is named as one of a run of repeated modules: a child of a
    ``Sequential``/``ModuleList`` (PyTorch names those by index, ``layers.3``; a lone
    convolution or batch norm there only compares with its siblings when in a block), or a module
    holding several layers named by a stem and a number (``s1.b2``). Two attributes of one
    block with the same shape (``conv1``, ``conv2``; ``bn1``, ``bn2``) hold different places
    in it and are not instances of one another."""
    last = prefix.rsplit(".", 1)[-1]
    if prefix.endswith("]"):
        return False
    if last.isdigit():
        # a lone convolution or batch norm among a Sequential's children may sit after a pooling
        # layer (VGG): its per-element statistics are at another resolution than its sibling's
        return not (n_layers == 1 and _spatial(prefix, mtype or {}))
    stem = last.rstrip("0123456789")
    return n_layers >= 2 and stem != last and stem.isidentifier()


def chains_of(view: RunView) -> dict[str, tuple[Chain, int, str]]:
    """``name -> (chain, instance index, relative path)`` for every recorded name (layers,
    modules, blocks) that sits in a repeated module; memoized on the view."""
    memo = view._memo
    if "structure" not in memo:
        memo["structure"] = _positions(view)
    return memo["structure"]


def _positions(view: RunView) -> dict[str, tuple[Chain, int, str]]:
    rows = view.rows
    names = list(dict.fromkeys(rows["name"]))
    mtype = view.module_type
    params = view.params
    shapes: dict[str, list] = {}
    for layer, shape in zip(params["layer"], params["shape"]):
        shapes.setdefault(layer, []).append(tuple(shape))
    layers = [n for n in view.layer_order]
    order = {n: float(d) for n, d in zip(rows["name"], rows["depth"])}
    for i, n in enumerate(view.layer_order):  # layers' forward rank anchors the order
        order[n] = float(i)
    # every prefix of every name, with its signature: (relative path, type, shapes) of the layers
    # under it, and the first forward rank under it; one pass over each name's prefixes
    prefixes = {p for n in names for p in _prefixes(n)}
    under: dict[str, list] = {p: [] for p in prefixes}
    for layer in layers:
        for p in _prefixes(layer):
            under.setdefault(p, []).append((layer[len(p):], mtype.get(layer, ""), tuple(shapes.get(layer, ()))))
    first: dict[str, float] = {}
    for n in names:
        rank = order.get(n, math.inf)
        for p in _prefixes(n):
            first[p] = min(first.get(p, math.inf), rank)
    signature: dict[str, tuple] = {}
    for p in prefixes:
        # a module without parameters: its type alone (activations, blocks of additions)
        signature[p] = tuple(sorted(under[p])) if under[p] else (
            ("", mtype.get(p, p.rsplit(".", 1)[-1] if p.endswith("]") else ""), ()),)
    groups: dict[tuple[str, tuple], list[str]] = {}
    for p in prefixes:
        groups.setdefault((_parent(p), signature[p]), []).append(p)

    chains: dict[str, Chain] = {}
    for (parent, sig), members in groups.items():
        if len(members) >= 2 and all(_repeatable(m, len(sig), mtype) for m in members):
            ordered = tuple(sorted(members, key=lambda m: (first.get(m, math.inf), m)))
            chain = Chain(parent, ordered)
            for m in ordered:
                chains[m] = chain
    out: dict[str, tuple[Chain, int, str]] = {}
    for n in names:
        for p in _prefixes(n):
            if p in chains:
                chain = chains[p]
                out[n] = (chain, chain.instances.index(p), _within(n, p) or "")
                break
    return out


def alike_pairs(view: RunView, names: Iterable[str]) -> list[tuple[Chain, str, list[tuple[int, str]]]]:
    """The like-with-like groups among ``names``: ``(chain, relative path, [(instance index,
    name), ...])`` for each position held by at least two instances."""
    where = chains_of(view)
    groups: dict[tuple[Chain, str], list[tuple[int, str]]] = {}
    for n in names:
        if n in where:
            chain, idx, rel = where[n]
            groups.setdefault((chain, rel), []).append((idx, n))
    return [(chain, rel, sorted(members)) for (chain, rel), members in groups.items() if len(members) >= 2]


def alike_log_ratio(view: RunView, table: pd.DataFrame) -> tuple[pd.Series, int]:
    """Per step, ``log10`` of how much larger a statistic is at the first instance of each
    repeated module than at the last, summed over the chains (stages in series) and judged
    like with like: each chain's value is the median over its positions of the position's
    per-instance log ratio times the chain's span. With the number of instances spanned
    (0 and an empty series when nothing repeats).

    ``table``: steps x names of a positive statistic (e.g. ``grad_rms``)."""
    if table.empty:
        return pd.Series(dtype=float), 0
    pairs = alike_pairs(view, table.columns)
    if not pairs:
        return pd.Series(dtype=float), 0
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(table.to_numpy(dtype=float))
    logs[~np.isfinite(logs)] = np.nan
    col = {n: i for i, n in enumerate(table.columns)}
    per_chain: dict[Chain, list[np.ndarray]] = {}
    for chain, _rel, members in pairs:
        (i0, first), (i1, last) = members[0], members[-1]
        per_instance = (logs[:, col[first]] - logs[:, col[last]]) / (i1 - i0)
        per_chain.setdefault(chain, []).append(per_instance * (len(chain) - 1))
    total = np.zeros(len(table))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN step stays NaN
        for values in per_chain.values():
            total = total + np.nanmedian(np.stack(values, axis=1), axis=1)
    span = sum(len(c) - 1 for c in per_chain)
    return pd.Series(total, index=table.index), span


def block_chains(view: RunView, names: Sequence[str]) -> list[list[str]]:
    """The residual blocks among ``names`` grouped by chain (blocks of one stage, of one
    stack), each in forward order; only chains of at least two."""
    return [[n for _, n in members] for _chain, _rel, members in alike_pairs(view, names)]

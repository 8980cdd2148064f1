"""Where a monitor's numbers come from: one process, or DDP and FSDP2 (``fully_shard``).

:func:`resolve` gives the monitor a :class:`Local` (one process records what it
sees and writes its own store) or a :class:`Distributed`; both answer the same
calls, so the monitor never asks which one it has.

``gs.watch(model, run_dir, distributed="auto")`` (the default) turns this on when a
process group with more than one process is initialized. Every rank must then
create its monitor the same way and call ``monitor.step()`` at the same calls (the
schedule is evaluated on each rank, so it agrees). What is recorded equals what a
single process would record for the same global batch:

``replicated`` (DDP, or any data parallelism whose gradients are all-reduced)
    After ``backward()`` every rank holds the same averaged gradient and the same
    weights, so rank 0's statistics already describe the global batch; nothing is
    communicated.

``sharded`` (FSDP2, any parameter a ``DTensor``)
    Each rank holds a shard of every parameter and of its gradient. Each rank
    reduces its local shards to raw sums (:func:`gradsight.stats.grad.raw_sums`),
    the rows of all ranks are gathered in one collective and combined (sums add,
    ``maxabs`` takes the max), then the statistics are derived as usual. A shard is
    counted by the one rank whose mesh coordinate is 0 along every ``Replicate``
    mesh dimension (so HSDP's replicas count once); a plain tensor in a sharded
    model is taken as replicated and counted by rank 0. ``update_ratio`` sums the
    squared update norms the same way; NaN/Inf counts are summed over ranks.

In both modes only rank 0 writes the store (the other ranks get a
:class:`~gradsight.store.writer.NullWriter`);
there is one run directory and nothing to merge. The legacy
``FullyShardedDataParallel`` wrapper (FSDP1) is not supported: with
``use_orig_params=True`` a rank whose flat shard misses a parameter has no gradient
for it, so the set of missing gradients differs across ranks. Use
``torch.distributed.fsdp.fully_shard``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradsight.instrument.layers import Inventory
from gradsight.stats.histogram import log2_counts
from gradsight.stats.grad import MAXABS, RAW_FIELDS, W_SUMSQ, count_nonfinite, raw_sums, sumsq_fp32, sumsq_fp64
from gradsight.store.writer import NullWriter, StoreWriter, Writer

log = logging.getLogger(__name__)

MODES = ("auto", "replicated", "sharded")


def _dist():
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with more than one process is up."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _is_dtensor(t: Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return isinstance(t, DTensor)


def local_shard(t: Tensor) -> Tensor:
    """The local shard of a ``DTensor``; any other tensor as it is."""
    return t.to_local() if _is_dtensor(t) else t


def resolve(distributed: str | bool | None, model: nn.Module) -> Local | Distributed:
    """The source of a monitor's numbers for ``gs.watch(..., distributed=...)``.

    Args:
        distributed: ``"auto"`` (on when more than one process is initialized:
            ``"sharded"`` if a trainable parameter is a ``DTensor``, otherwise
            ``"replicated"``), ``"replicated"``, ``"sharded"``, or ``None``/``False``
            (off: each process records as if it were alone, into its own run dir).
        model: the watched model.

    Returns:
        A :class:`Local` when off (or a single process), else a :class:`Distributed`.
    """
    if distributed is None or distributed is False:
        return Local()
    if distributed is True:
        distributed = "auto"
    if distributed not in MODES:
        raise ValueError(f"distributed must be one of {', '.join(map(repr, MODES))} or None, got {distributed!r}")
    if not is_distributed():
        if distributed != "auto":
            raise RuntimeError(f"distributed={distributed!r} needs an initialized torch.distributed process group")
        return Local()
    return Distributed(model, distributed)


class Local:
    """One process records what it sees and writes its own store.

    The methods are those of :class:`Distributed`, without communication.
    """

    mode = "local"
    writes_store = True

    def __repr__(self) -> str:
        return "Local()"

    def writer(self, run_dir: str | Path, overwrite: bool = False, resume: bool = False) -> Writer:
        """A :class:`~gradsight.store.writer.StoreWriter` for ``run_dir``."""
        return StoreWriter(run_dir, overwrite=overwrite, resume=resume)

    def agree(self, value: Any) -> Any:
        """``value`` as rank 0 has it (one process: itself)."""
        return value

    def raw_sums(
        self, grads: Sequence[Tensor], weights: Sequence[Tensor], backend: str = "auto", with_weights: bool = True
    ) -> Tensor:
        """Raw sums ``[len(grads), 7]`` (:func:`gradsight.stats.grad.raw_sums`)."""
        return raw_sums(grads, weights, backend, with_weights)

    def count_nonfinite(self, grads: Sequence[Tensor], rows: Sequence[int]) -> list[float]:
        """Exact NaN/Inf counts of ``grads[k]`` for ``k`` in ``rows``."""
        return [count_nonfinite(grads[k]) for k in rows]

    def sumsq_fp64(self, grads: Sequence[Tensor], rows: Sequence[int]) -> list[float]:
        """Sums of squares of ``grads[k]`` for ``k`` in ``rows``, squared in float64."""
        return [sumsq_fp64(grads[k]) for k in rows]

    def log2_counts(self, grads: Sequence[Tensor], scale: Tensor | None, lo: int, hi: int) -> Tensor:
        """Log2 bucket counts of the gradients (:func:`gradsight.stats.histogram.log2_counts`)."""
        return log2_counts(grads, scale, lo, hi)

    def sumsq(self, tensors: Sequence[Tensor]) -> Tensor:
        """``[len(tensors)]`` float32 sums of squares."""
        return sumsq_fp32(tensors)

    def all_sum(self, values: Tensor) -> Tensor:
        """``values`` summed over the ranks (one process: themselves)."""
        return values

    def sum_rows(self, rows: Tensor, tensors: Sequence[Tensor]) -> Tensor:
        """``rows[i]``, taken on this process's part of ``tensors[i]``, summed over the ranks
        (one process: the rows themselves)."""
        return rows


class Distributed:
    """Makes a monitor's numbers describe the global batch (see the module docstring).

    The monitor calls :meth:`writer` once, :meth:`raw_sums` at each recorded step,
    :meth:`count_nonfinite` on the rare steps with a non-finite norm, and
    :meth:`sumsq` after a recorded optimizer step. In ``sharded`` mode each of these
    is a collective: every rank must reach it, which holds when every rank calls
    ``monitor.step()`` at the same calls.
    """

    def __init__(self, model: nn.Module, mode: str = "auto") -> None:
        dist = _dist()
        fsdp1 = any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()) or any(
            getattr(p, "_fsdp_flattened", False) for p in model.parameters()
        )
        if fsdp1:
            raise NotImplementedError(
                "gradsight does not support FullyShardedDataParallel (FSDP1): shard the model with "
                "torch.distributed.fsdp.fully_shard (FSDP2) instead"
            )
        params = _watched_params(model)
        if mode == "auto":
            mode = "sharded" if any(_is_dtensor(p) for p in params) else "replicated"
        self.mode = mode
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.writes_store = self.rank == 0
        self._index = {id(p): i for i, p in enumerate(params)}
        self._num_params = len(params)
        self._warned_presence = False

    def __repr__(self) -> str:
        return f"Distributed(mode={self.mode!r}, rank={self.rank}, world_size={self.world_size})"

    # -- the store ------------------------------------------------------------------
    def writer(self, run_dir: str | Path, overwrite: bool = False, resume: bool = False) -> Writer:
        """The store writer on rank 0, a :class:`~gradsight.store.writer.NullWriter` elsewhere."""
        if not self.writes_store:
            return NullWriter(run_dir)
        writer = StoreWriter(run_dir, overwrite=overwrite, resume=resume)
        writer.set_meta(distributed={"mode": self.mode, "world_size": self.world_size,
                                     "backend": str(_dist().get_backend())})
        return writer

    def agree(self, value: Any) -> Any:
        """``value`` (picklable) as rank 0 has it, on every rank (one broadcast: where a resumed
        run goes on, which only rank 0 reads from the store, so that every rank's schedule agrees)."""
        box = [value]
        _dist().broadcast_object_list(box, src=0)
        return box[0]

    # -- statistics -----------------------------------------------------------------
    def raw_sums(
        self, grads: Sequence[Tensor], weights: Sequence[Tensor], backend: str = "auto", with_weights: bool = True
    ) -> Tensor:
        """Raw sums ``[len(grads), 7]`` of the global gradients (as :func:`raw_sums`).

        ``replicated``: the local gradients are the global ones. ``sharded``: the
        local shards' raw sums of all ranks combined (one ``all_gather``).
        """
        if self.mode == "replicated":
            return raw_sums(grads, weights, backend, with_weights)
        dist = _dist()
        local_g = [local_shard(g) for g in grads]
        local_w = [local_shard(w.detach()) for w in weights]
        device = local_g[0].device if local_g else torch.device("cpu")
        rows = torch.zeros((len(grads), len(RAW_FIELDS)), dtype=torch.float32, device=device)
        nonempty = [k for k, g in enumerate(local_g) if g.numel() > 0]
        if nonempty:
            local_rows = raw_sums([local_g[k] for k in nonempty], [local_w[k] for k in nonempty], backend, with_weights)
            rows[nonempty] = local_rows.to(device)
        grad_mask = torch.tensor([self._counts(g) for g in grads], dtype=torch.bool, device=device)
        weight_mask = torch.tensor([self._counts(w) for w in weights], dtype=torch.bool, device=device)
        w_sumsq = torch.where(weight_mask, rows[:, W_SUMSQ], torch.zeros_like(rows[:, W_SUMSQ]))
        rows = torch.where(grad_mask[:, None], rows, torch.zeros_like(rows))
        rows[:, W_SUMSQ] = w_sumsq

        index = torch.tensor([self._param_index(w) for w in weights], dtype=torch.long, device=device)
        full = torch.zeros((self._num_params, len(RAW_FIELDS) + 1), dtype=torch.float32, device=device)
        full[index, : len(RAW_FIELDS)] = rows
        full[index, len(RAW_FIELDS)] = 1.0  # this rank has a gradient for the parameter
        gathered = [torch.empty_like(full) for _ in range(self.world_size)]
        dist.all_gather(gathered, full)
        stacked = torch.stack(gathered)  # [world, P, 8]
        combined = stacked[..., : len(RAW_FIELDS)].sum(0)
        combined[:, MAXABS] = stacked[..., MAXABS].amax(0)
        self._check_presence(stacked[..., len(RAW_FIELDS)])
        return combined[index]

    def count_nonfinite(self, grads: Sequence[Tensor], rows: Sequence[int]) -> list[float]:
        """Exact NaN/Inf counts of ``grads[k]`` for ``k`` in ``rows``, over all ranks."""
        return self._global_sums(count_nonfinite, grads, rows)

    def sumsq_fp64(self, grads: Sequence[Tensor], rows: Sequence[int]) -> list[float]:
        """Sums of squares of the global ``grads[k]`` for ``k`` in ``rows``, squared in float64."""
        return self._global_sums(sumsq_fp64, grads, rows)

    def _global_sums(self, of: Callable[[Tensor], float], grads: Sequence[Tensor], rows: Sequence[int]) -> list[float]:
        """``of(grads[k])`` for ``k`` in ``rows``, a sum over elements taken on the global tensors:
        ``sharded`` adds the counted shards of all ranks (one ``all_reduce``, in float64)."""
        if self.mode == "replicated":
            return [of(grads[k]) for k in rows]
        local = [of(local_shard(grads[k])) if self._counts(grads[k]) else 0.0 for k in rows]
        sums = torch.tensor(local, dtype=torch.float64, device=_device(grads))
        _dist().all_reduce(sums)
        return sums.tolist()

    def log2_counts(self, grads: Sequence[Tensor], scale: Tensor | None, lo: int, hi: int) -> Tensor:
        """Log2 bucket counts of the global gradients: ``sharded`` sums the counted
        shards of all ranks (one ``all_reduce``)."""
        if self.mode == "replicated":
            return log2_counts(grads, scale, lo, hi)
        return self._sum_counted(log2_counts([local_shard(g) for g in grads], scale, lo, hi), grads)

    def sumsq(self, tensors: Sequence[Tensor]) -> Tensor:
        """``[len(tensors)]`` float32 sums of squares of the global tensors."""
        if not tensors:
            return torch.zeros(0)
        sq = sumsq_fp32([local_shard(t) for t in tensors])
        if self.mode == "replicated":
            return sq
        return self._sum_counted(sq, tensors)

    def all_sum(self, values: Tensor) -> Tensor:
        """``values`` (this rank's own numbers, not parts of a global tensor) summed over
        the ranks: one ``all_reduce``."""
        values = values.clone()
        _dist().all_reduce(values)
        return values

    def sum_rows(self, rows: Tensor, tensors: Sequence[Tensor]) -> Tensor:
        """``rows[i]``, taken on this rank's part of ``tensors[i]``, summed over the ranks:
        ``replicated`` the rows themselves (every rank holds the whole tensor), ``sharded``
        summed over the ranks whose shard is counted (one ``all_reduce``)."""
        if self.mode == "replicated":
            return rows
        return self._sum_counted(rows, tensors)

    # -- helpers --------------------------------------------------------------------
    def _sum_counted(self, rows: Tensor, tensors: Sequence[Tensor]) -> Tensor:
        """``rows[i]`` (computed on this rank's part of ``tensors[i]``) summed over the ranks
        whose part is counted (:meth:`_counts`); one ``all_reduce``."""
        mask = torch.tensor([self._counts(t) for t in tensors], dtype=torch.bool, device=rows.device)
        rows = torch.where(mask.reshape(-1, *[1] * (rows.dim() - 1)), rows, torch.zeros_like(rows))
        _dist().all_reduce(rows)
        return rows

    def _counts(self, t: Tensor) -> bool:
        """Whether this rank's local part of ``t`` is counted in a global sum."""
        if not _is_dtensor(t):
            return self.rank == 0  # a plain tensor in a sharded model: replicated
        coord = t.device_mesh.get_coordinate()
        if coord is None:
            return False
        return all(c == 0 for c, p in zip(coord, t.placements) if p.is_replicate())

    def _param_index(self, w: Tensor) -> int:
        try:
            return self._index[id(w)]
        except KeyError:
            raise RuntimeError(
                "a parameter of the model was replaced after gs.watch(): create the monitor after "
                "sharding the model (fully_shard)"
            ) from None

    def _check_presence(self, present: Tensor) -> None:
        """Warn once when some ranks have a gradient for a parameter and others do not."""
        counts = present.sum(0)
        if self._warned_presence or not bool(((counts > 0) & (counts < self.world_size)).any()):
            return
        self._warned_presence = True
        log.warning(
            "gradsight: some parameters have a gradient on some ranks only; their statistics combine the "
            "ranks that have one, and rank 0 records them as missing where it has none"
        )


def _watched_params(model: nn.Module) -> list[nn.Parameter]:
    return [pi.param for pi in Inventory.of(model).params]  # frozen ones too: they join when unfrozen


def _device(tensors: Sequence[Tensor]) -> torch.device:
    return local_shard(tensors[0]).device if tensors else torch.device("cpu")


__all__ = ["MODES", "Distributed", "Local", "is_distributed", "resolve"]

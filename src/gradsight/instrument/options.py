"""``gs.watch``'s options: declared once, checked and resolved once.

:func:`watch_options` is the one declaration of the keywords ``gs.watch`` takes and of their
defaults (``gs.watch`` and :class:`~gradsight.instrument.monitor.Monitor` show its
signature); it checks them and resolves them into one frozen :class:`WatchOptions`, which is
all the monitor reads. Code that starts a monitor for its user (the training runner,
``compare``, the model check, the Lightning and Hugging Face callbacks) takes the user's
options as one mapping and passes it through with :func:`watch_arguments`, adding only what
it sets itself (the optimizer, the schedule, its part of the config).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradsight.schedules as schedules

if TYPE_CHECKING:
    import torch

BACKENDS = ("auto", "eager", "fused")
#: ``update_ratio=`` for every layer at every recorded step (what the model check records).
UPDATE_RATIO_WHOLE = "whole"


@dataclass(frozen=True, eq=False)
class WatchOptions:
    """``gs.watch``'s keyword arguments, checked and resolved (:func:`gradsight.watch` documents each)."""

    schedule: schedules.Schedule  #: from ``every=``: which ``step()`` calls are recorded
    #: as given: one optimizer, several (a list or tuple becomes a tuple, each once), or None
    optimizer: torch.optim.Optimizer | tuple[torch.optim.Optimizer, ...] | None
    scaler: Any | None  #: None also for a disabled GradScaler (enabled=False): no loss scaling
    config: dict | None
    name: str | None
    backend: str
    overwrite: bool
    resume: bool | int  #: False, True (after the last recorded step) or the step to continue at
    distributed: str | bool | None
    activations: bool | str | Sequence[str]
    residual_blocks: Sequence[str] | None
    weights: bool
    histograms_every: int  #: from ``histograms=``: every k-th recorded step, 0: never
    update_ratio_every: int  #: from ``update_ratio=``: every k-th recorded step, 0: never
    #: ``update_ratio="whole"``: every layer at each measured step (a snapshot of all the weights)
    update_ratio_whole: bool = False
    through_time: bool = False  #: ``‖∂L/∂h_t‖`` per time step of recurrent layers
    #: from ``noise_scale=``: 0 off, else the samples of one micro-batch (-1: not given, micro-batches)
    noise_scale: int = 0

    @property
    def micro_batch_size(self) -> int | None:
        """``noise_scale=``'s samples per micro-batch; None when not given (or off)."""
        return self.noise_scale if self.noise_scale > 0 else None

    @property
    def optimizers(self) -> tuple[torch.optim.Optimizer, ...]:
        """The watched optimizers, in the order given (empty without ``optimizer=``)."""
        if self.optimizer is None:
            return ()
        return self.optimizer if isinstance(self.optimizer, tuple) else (self.optimizer,)


def watch_options(
    *,
    every: int | schedules.Schedule = 1,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    scaler: Any | None = None,
    config: dict | None = None,
    name: str | None = None,
    backend: str = "auto",
    overwrite: bool = False,
    resume: bool | int = False,
    distributed: str | None = "auto",
    activations: bool | str | Sequence[str] = False,
    residual_blocks: Sequence[str] | None = None,
    weights: bool = True,
    histograms: bool | int = False,
    update_ratio: bool | int | str = 10,
    through_time: bool = False,
    noise_scale: bool | int = False,
) -> WatchOptions:
    """Check ``gs.watch``'s keyword arguments and resolve them (raises ``TypeError`` or
    ``ValueError`` for a bad one; creates nothing)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'eager' or 'fused', got {backend!r}")
    optimizer = _optimizers(optimizer)
    if scaler is not None and not callable(getattr(scaler, "scale", None)):
        raise TypeError(f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__} {scaler!r:.60}")
    if scaler is not None and not getattr(scaler, "is_enabled", lambda: True)():
        scaler = None  # GradScaler(enabled=False) (fp32/bf16 runs, CPU): no loss scaling, exactly as no scaler
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a dict or None, got {type(config).__name__}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string or None, got {type(name).__name__}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r:.60}")
    whole = isinstance(update_ratio, str) and update_ratio == UPDATE_RATIO_WHOLE
    if whole:
        update_ratio = True
    elif isinstance(update_ratio, str):
        raise ValueError(f"update_ratio must be True, False, a positive int (every k-th recorded step) or "
                         f"{UPDATE_RATIO_WHOLE!r}, got {update_ratio!r:.60}")
    if not isinstance(through_time, bool):
        raise TypeError(f"through_time must be True or False, got {through_time!r:.60}")
    if isinstance(noise_scale, bool):
        noise_scale = -1 if noise_scale else 0
    elif not isinstance(noise_scale, int) or noise_scale < 1:
        raise TypeError(f"noise_scale must be True, False or the samples of one micro-batch (an int >= 1), got "
                        f"{noise_scale!r:.60}")
    if not isinstance(resume, int) or (not isinstance(resume, bool) and resume < 0):
        raise TypeError(f"resume must be True, False or a step (an int >= 0), got {resume!r:.60}")
    if overwrite and resume is not False:
        raise ValueError(f"overwrite=True replaces the run in run_dir and resume={resume!r} continues it; pass one "
                         "of them")
    patterns_ok = isinstance(activations, (bool, str)) or (
        isinstance(activations, Sequence) and all(isinstance(a, str) for a in activations))
    if not patterns_ok:
        raise TypeError(f"activations must be True, False, a pattern or a list of patterns, got {activations!r:.60}")
    if residual_blocks is not None and (isinstance(residual_blocks, str) or not isinstance(residual_blocks, Sequence)
                                        or not all(isinstance(b, str) for b in residual_blocks)):
        raise TypeError(f"residual_blocks must be a list of module names or None, got {residual_blocks!r:.60}")
    return WatchOptions(
        schedule=schedules.resolve(every), optimizer=optimizer, scaler=scaler, config=config, name=name,
        backend=backend, overwrite=overwrite, resume=resume, distributed=distributed, activations=activations,
        residual_blocks=residual_blocks, weights=weights, histograms_every=schedules.resolve_every(histograms),
        update_ratio_every=schedules.resolve_every(update_ratio, "update_ratio"), update_ratio_whole=whole,
        through_time=through_time, noise_scale=noise_scale,
    )


def _is_optimizer(obj: Any) -> bool:
    return all(callable(getattr(obj, m, None)) for m in ("register_step_pre_hook", "register_step_post_hook"))


def _optimizers(optimizer: Any) -> torch.optim.Optimizer | tuple[torch.optim.Optimizer, ...] | None:
    """``optimizer=`` checked: one optimizer as it is; a list or tuple of them as a tuple,
    each once (an empty one is None)."""
    if optimizer is None or _is_optimizer(optimizer):
        return optimizer
    if isinstance(optimizer, (list, tuple)) and all(_is_optimizer(o) for o in optimizer):
        unique = tuple({id(o): o for o in optimizer}.values())
        return unique or None
    raise TypeError(f"optimizer must be a torch.optim.Optimizer, a list of them or None, got "
                    f"{type(optimizer).__name__} {optimizer!r:.60}")


#: The keyword arguments of ``gs.watch``, in order.
WATCH_KEYWORDS: tuple[str, ...] = tuple(inspect.signature(watch_options).parameters)


def with_options(fn: Callable) -> inspect.Signature:
    """The signature of ``fn(..., **options)`` with ``**options`` spelled out as the keywords of
    :func:`watch_options`, their defaults and types (what ``help(gs.watch)`` shows)."""
    sig = inspect.signature(fn)
    leading = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return sig.replace(parameters=[*leading, *inspect.signature(watch_options).parameters.values()])


def resolve(options: Mapping[str, Any], owner: str = "gs.watch") -> WatchOptions:
    """:func:`watch_options` of a mapping of keywords; a key that is not one is a ``TypeError``
    naming ``owner``."""
    unknown = [k for k in options if k not in WATCH_KEYWORDS]
    if unknown:
        raise TypeError(f"{owner} got an unexpected keyword argument {unknown[0]!r}; gs.watch takes "
                        f"{', '.join(WATCH_KEYWORDS)}")
    return watch_options(**options)


def check_options(options: Mapping[str, Any] | None, owner: str, taken: Sequence[str] = (),
                  source: str = "itself") -> dict[str, Any]:
    """The user's ``gs.watch`` options for ``owner`` (a dict; None is empty), checked before
    anything starts: every key a keyword of ``gs.watch`` with a valid value, none of those
    that ``owner`` sets itself (``taken``; the error says where it takes them: ``source``)."""
    options = dict(options or {})
    for key in taken:
        if key in options:
            raise TypeError(f"{owner} takes {key} {source}; do not pass {key}=")
    resolve(options, owner)
    return options


def watch_arguments(options: Mapping[str, Any] | None, owner: str, *, defaults: Mapping[str, Any] | None = None,
                    **own: Any) -> dict[str, Any]:
    """Keyword arguments for ``gs.watch`` from code that starts a monitor for its user.

    Args:
        options: the user's ``gs.watch`` options, or None.
        owner: the caller, named in errors (``"gs.train.train"``).
        defaults: the caller's own defaults; ``options`` overrides them.
        **own: what the caller sets itself; ``options`` may not name these, except
            ``config``: the user's entries are added to the caller's (the user's win).

    Raises:
        TypeError, ValueError: as :func:`check_options`.
    """
    options = check_options(options, owner, [k for k in own if k != "config"])
    if "config" in own and options.get("config"):
        own = {**own, "config": {**(own["config"] or {}), **options["config"]}}
    return {**(defaults or {}), **options, **own}

"""What a run stores about itself: its default directory, metadata and parameter table."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradsight._version import __version__
from gradsight.instrument.layers import Inventory, ParamInfo
from gradsight.instrument.options import WatchOptions
from gradsight.stats.noise_scale import EMA_BETA


def default_run_dir(model: nn.Module) -> Path:
    """``runs/<YYYYmmdd-HHMMSS>-<ModelClass>``, with ``-2``, ``-3``, ... if taken."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{type(model).__name__}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = Path(f"{base}-{k}")
    return path


def run_meta(model: nn.Module, inventory: Inventory, options: WatchOptions, name: str) -> dict[str, Any]:
    """The metadata written when a run starts (JSON-serializable values; see docs/design.md)."""
    device = next((pi.param.device for pi in inventory.watched or inventory.params), torch.device("cpu"))
    return dict(
        name=name,
        status="running",
        start_time=time.time(),
        model_class=f"{type(model).__module__}.{type(model).__qualname__}",
        torch_version=torch.__version__,
        gradsight_version=__version__,
        config=options.config or {},
        schedule=getattr(options.schedule, "__name__", repr(options.schedule)),
        backend=options.backend,
        weight_stats=options.weights,
        device=str(device),
        **sizes(inventory),
        optimizer=", ".join(type(o).__name__ for o in options.optimizers) or None,
        adam_eps=adam_eps(options.optimizers),
        amp=options.scaler is not None,
        update_ratio_every=options.update_ratio_every if options.optimizer is not None else 0,
        histograms_every=options.histograms_every,
        noise_scale=({"micro_batch_size": options.micro_batch_size, "ema_beta": EMA_BETA}
                     if options.noise_scale else None),
        mode_modules=mode_modules(model),
        depth_source="pending",
        host=socket.gethostname(),
        pid=os.getpid(),
        argv=sys.argv,
    )


#: The model-level statistic: 1.0 where ``model.training`` was False at a recorded step.
EVAL_MODE_STAT = "eval_mode"


def mode_modules(model: nn.Module) -> dict[str, int]:
    """How many modules of ``model`` compute differently in training and in eval mode, by kind:
    ``batchnorm`` (batch statistics or running ones) and ``dropout`` (with ``p > 0``). Modules
    that read ``self.training`` in their own code (a functional dropout) are not counted."""
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd

    kinds = {"batchnorm": 0, "dropout": 0}
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            kinds["batchnorm"] += 1
        elif isinstance(m, _DropoutNd) and m.p > 0:
            kinds["dropout"] += 1
    return kinds


def adam_eps(optimizers) -> float | None:
    """The largest ``eps`` of the Adam/AdamW optimizers' parameter groups (what
    ``adam_eps_frac`` compares ``sqrt(v_hat)`` with), or None without one."""
    from gradsight.instrument.optimizer_state import is_adam

    values = [float(g["eps"]) for o in optimizers if is_adam(o) for g in o.param_groups if "eps" in g]
    return max(values) if values else None


def sizes(inventory: Inventory) -> dict[str, int]:
    """``num_params`` (elements of every parameter) and ``num_trainable`` (of the recorded
    ones), as the parameters are now."""
    return dict(num_params=sum(pi.param.numel() for pi in inventory.params),
                num_trainable=sum(pi.param.numel() for pi in inventory.watched))


def param_rows(inventory: Inventory, params: list[ParamInfo] | None = None) -> list[tuple]:
    """Rows of the ``params`` table: name, layer, shape, numel, dtype, trainable, aliases, position,
    of ``params`` (default: every parameter) as they are now; ``trainable`` is 1 for a recorded
    parameter (:attr:`Inventory.watched`: trainable at watch, or unfrozen and recorded since)."""
    recorded = {id(pi) for pi in inventory.watched}
    return [
        (pi.name, pi.layer, json.dumps(list(pi.param.shape)), pi.param.numel(),
         str(pi.param.dtype).replace("torch.", ""), int(id(pi) in recorded), json.dumps(list(pi.aliases)),
         pi.position)
        for pi in (inventory.params if params is None else params)
    ]

"""``gs.probe``: statistics of one forward and one backward pass, no training.

The model sees one batch (the given inputs, or a unit-Gaussian batch) and one
backward pass from a unit-Gaussian output gradient. Each tracked module reports
the activation and output-gradient statistics of
:mod:`gradsight.instrument.activations`; each residual block also its skip/branch
split. This is what Signal Propagation Plots (Brock, De & Smith 2021) show.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from gradsight.instrument.activations import ACT_STATS, BLOCK_STATS, ActivationRecorder
from gradsight.instrument.hooks import HookRegistry
from gradsight.instrument.layers import ForwardOrder
from gradsight.instrument.outputs import main_output
from gradsight.models.info import sample_input
from gradsight.probes._state import state_restored

PROBE_COLUMNS = (("name", "kind", "depth", "module_type") + ACT_STATS + ("act_saturated",)
                 + tuple(s for s in BLOCK_STATS if s != "act_rms") + ("stream_rms",))


def probe(
    model: nn.Module,
    inputs: torch.Tensor | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    batch_size: int = 128,
    seed: int = 0,
    modules: bool | str | Sequence[str] = True,
    residual_blocks: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One forward and one backward pass; statistics per module in depth order.

    Args:
        model: any ``nn.Module`` (its train/eval mode is used as it is).
        inputs: a batch; default :func:`~gradsight.models.sample_input` of the model: a
            unit-Gaussian batch of ``input_shape`` (token ids for a registered token model).
        input_shape: shape of one sample when ``inputs`` is not given; default the registered
            model's (``model.model_info``); a model from elsewhere needs it.
        batch_size: size of the Gaussian batch.
        seed: seed of the Gaussian input and output gradient.
        modules: which modules to track (as ``gs.watch(activations=...)``).
        residual_blocks: modules expected to own residual additions; a warning names those that own none.

    Returns:
        One row per module (``kind`` = ``layer`` for leaf modules with
        parameters, ``block`` for residual blocks, ``module`` otherwise) with
        columns ``name, kind, depth, module_type`` and the statistics
        ``act_rms, act_mean_sq, act_var, out_grad_norm, out_grad_rms,
        out_grad_nonfinite``, ``act_saturated`` on a layer whose output a tanh, sigmoid or other
        bounded activation module takes (the share of its outputs where its slope is under 2 %
        of its largest; NaN elsewhere) and, for blocks (one row per residual addition, named as
        in ``gs.watch``), ``skip_grad_norm, branch_grad_norm, skip_branch_cos,
        branch_var`` and ``stream_rms`` (``act_rms`` of the stream before the
        addition; the ``act_*`` columns of a block row describe the owning module's
        output and are empty for a module with several additions); ``depth`` ranks
        rows of one kind in forward-execution order (blocks: of their additions). Parameter gradients, training flags and BatchNorm buffers
        (running mean and variance, batch count) are left as they were.
    """
    gen = torch.Generator().manual_seed(seed)
    x = inputs if inputs is not None else sample_input(model, batch_size, input_shape=input_shape, generator=gen)
    saved_grads = {p: p.grad for p in model.parameters()}
    for p in saved_grads:
        p.grad = None  # backward would accumulate into the user's gradients in place
    hooks = HookRegistry()
    try:
        order = ForwardOrder(model, hooks)
        recorder = ActivationRecorder(model, modules, residual_blocks, hooks, is_active=lambda: True)
        with torch.enable_grad(), state_restored(model):
            if not x.requires_grad and x.is_floating_point():
                x = x.detach().requires_grad_(True)  # so the first block's input has a gradient edge
            out = main_output(model(x))
            if out is None:
                raise ValueError("the model's output holds no floating-point tensor")
            grad = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
            out.backward(grad)
        kinds = recorder.module_kinds()
        blocks = list(recorder.blocks)
        keys, values = recorder.collect()
        types = recorder.types
    finally:
        hooks.remove_all()
        for p, g in saved_grads.items():
            p.grad = g
    table: dict[str, dict[str, float]] = {}
    for (level, name, stat), value in zip(keys, torch.stack(values).tolist() if values else []):
        if level == "block" and stat == "act_rms":
            stat = "stream_rms"  # the stream before the addition; a block's own act_rms is its output's
        table.setdefault(name, {})[stat] = value
    has_params = {n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    rows = []
    for kind in ("layer", "block", "module"):
        names = [n for n, k in kinds.items() if k == kind and (kind != "layer")] if kind != "layer" else []
        if kind == "layer":
            names = [n for n, k in kinds.items() if k == "module" and n in has_params]
        elif kind == "module":
            names = [n for n, k in kinds.items() if k == "module" and n not in has_params]
        for depth, name in enumerate(blocks if kind == "block" else order.rank(names)):
            rows.append({"name": name, "kind": kind, "depth": depth, "module_type": types.get(name, "?"),
                         **table.get(name, {})})
    df = pd.DataFrame(rows)
    for col in PROBE_COLUMNS:
        if col not in df:
            df[col] = float("nan")
    return df[list(PROBE_COLUMNS)]

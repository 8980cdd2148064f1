"""Short monitored check-ups of a model: ``gradsight doctor MODEL_SPEC`` and ``gs.assert_healthy``."""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradsight.diagnosis.findings import Finding, Severity, format_findings
from gradsight.instrument.outputs import main_output


class UnhealthyGradientsError(AssertionError):
    """Raised by :func:`assert_healthy`; ``.findings`` holds what was found."""

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        super().__init__("unhealthy gradients:\n" + format_findings(findings))


def _default_loss(output: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    if targets is not None:
        if output.dim() >= 2 and not targets.is_floating_point() and targets.shape == output.shape[:-1]:
            return nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]).float(), targets.reshape(-1))
        return nn.functional.mse_loss(output, targets)
    return output.float().pow(2).mean()


def checkup(
    model: nn.Module,
    *,
    inputs: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    input_shape: Sequence[int] | None = None,
    loss_fn: Callable | None = None,
    steps: int = 20,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    thresholds=None,
    train_copy: bool = True,
    progress: bool = False,
    watch: Mapping[str, Any] | None = None,
) -> list[Finding]:
    """Train (a copy of) ``model`` for a few steps with everything recorded, then diagnose.

    What ``gradsight doctor MODEL`` does, from Python::

        findings = gs.checkup(model, inputs=x, targets=y, loss_fn=F.cross_entropy, steps=20)
        print(gs.format_findings(findings))

    Args:
        model: any module.
        inputs, targets: a batch to use at every step; default fresh random batches
            (:func:`~gradsight.models.sample_input`: unit-Gaussian samples of
            ``input_shape``, token ids for a registered token model) with random class
            targets (cross-entropy) when the output is ``[N, C]``; an ``[N, T, C]``
            output (a language model's logits) gets random targets per position; else
            the mean squared output is the loss. A tuple, mapping or Hugging Face
            output counts by its main tensor (:func:`~gradsight.instrument.outputs.main_output`:
            its ``logits``, else its first floating-point tensor).
        input_shape: one sample, without the batch dimension, when ``inputs`` is not
            given; default the registered model's (``model.model_info``), and a model
            from elsewhere needs it.
        loss_fn: ``loss_fn(output, targets)`` (or ``loss_fn(output)`` without targets).
        steps: optimizer steps (Adam, ``lr``); with ``steps=1`` only one backward
            pass and no update.
        run_dir: keep the recorded run here (default: a temporary directory, removed);
            ``gs.diagnose(run_dir, until=k)`` judges its first ``k`` steps again.
        overwrite: replace a run already in ``run_dir`` (otherwise that raises ``RunError``).
        train_copy: train a deep copy so the caller's model is not changed.
        watch: more :func:`gradsight.watch` options (``histograms``, ``weights``, ...), or
            others than the check-up's ``activations=True``, ``update_ratio="whole"`` (every
            layer's update ratio at every step, whatever the model's size) and
            ``through_time=True`` (the gradient through time of every ``nn.LSTM``/``nn.GRU``/
            ``nn.RNN``; nothing in a model without them).

    Returns:
        The findings, worst first (:func:`gradsight.diagnose`).
    """
    from gradsight.diagnosis import diagnose
    from gradsight.instrument import monitor
    from gradsight.instrument.options import watch_arguments
    from gradsight.models.info import input_spec

    sample = None if inputs is not None else input_spec(model, input_shape=input_shape)
    net = copy.deepcopy(model) if train_copy else model
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    temp = run_dir is None
    path = Path(tempfile.mkdtemp(prefix="gradsight-doctor-")) / "run" if temp else Path(run_dir)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr) if steps > 1 else None
    num_classes = None
    try:
        # few steps: an update ratio of every layer at each of them (gs.watch's default measures every
        # 10th, a chunk of layers at a time), as the doctor's thresholds were calibrated on
        with monitor.watch(net, path, **watch_arguments(
                watch, "checkup", defaults={"activations": True, "update_ratio": "whole", "through_time": True,
                                                   "name": "doctor"},
                optimizer=optimizer, overwrite=overwrite or temp, config={"steps": steps, "lr": lr, "seed": seed})) as mon:
            iterator = range(steps)
            if progress:
                from tqdm.auto import tqdm

                iterator = tqdm(iterator, desc="check-up", unit="step")
            for _ in iterator:
                x = inputs if inputs is not None else sample.batch(batch_size, generator=gen, device=device)
                output = net(x)
                out = main_output(output)
                if out is None:
                    raise TypeError(f"the model returned {type(output).__name__}, which holds no floating-point tensor")
                y = targets
                if y is None and out.dim() >= 2 and out.shape[-1] > 1 and (inputs is None or out.dim() == 3):
                    # random classes: per sample ([N, C] from generated inputs), or per position
                    # ([N, T, C], a language model's logits)
                    num_classes = out.shape[-1]
                    y = torch.randint(0, num_classes, tuple(out.shape[:-1]), generator=gen).to(device)
                if loss_fn is not None:
                    loss = loss_fn(out, y) if y is not None else loss_fn(out)
                else:
                    loss = _default_loss(out, y)
                loss.backward()
                mon.step(loss)
                if optimizer is not None:
                    optimizer.step()
                net.zero_grad(set_to_none=True)
        findings = diagnose(path, thresholds)
    finally:
        if not train_copy:
            model.zero_grad(set_to_none=True)
        if temp:
            shutil.rmtree(path.parent, ignore_errors=True)
    return findings


def assert_healthy(
    model: nn.Module,
    inputs: torch.Tensor,
    loss_fn: Callable | None = None,
    targets: torch.Tensor | None = None,
    *,
    steps: int = 1,
    fail_on: str | Severity = "error",
    thresholds=None,
) -> list[Finding]:
    """Assert that gradients through ``model`` look healthy; for users' own tests.

    Runs :func:`checkup` on a copy of the model with the given batch (one backward
    pass by default; ``steps > 1`` also trains the copy with Adam) and raises
    :class:`UnhealthyGradientsError` listing the findings when any has severity
    ``fail_on`` (``"error"`` or ``"warning"``) or worse.

    Returns:
        All findings (when none is bad enough to raise).
    """
    try:
        threshold = Severity(fail_on)
    except ValueError:
        raise ValueError(f"fail_on must be one of {[str(s) for s in Severity]}, got {fail_on!r}") from None
    findings = checkup(model, inputs=inputs, targets=targets, loss_fn=loss_fn, steps=steps, thresholds=thresholds)
    bad = [f for f in findings if f.severity >= threshold]
    if bad:
        raise UnhealthyGradientsError(findings)
    return findings

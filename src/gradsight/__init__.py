"""gradsight: see how gradients flow through a PyTorch network.

Quick start::

    import gradsight as gs
    monitor = gs.watch(model, run_dir="runs/exp1", optimizer=optimizer)
    ...  # loss.backward(); monitor.step(loss); optimizer.step()
    monitor.close()
    df = gs.open_run("runs/exp1").frame()

Names are loaded on first use, so ``import gradsight`` stays light: torch is imported
by ``gs.watch`` and the models, matplotlib only by the plots, the report, the graph
and the training runner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradsight import display as _display
from gradsight._errors import GradsightError, RunError
from gradsight._version import __version__

#: Public name -> (module, attribute); attribute None means the module itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    "watch": ("gradsight.instrument.monitor", "watch"),
    "Monitor": ("gradsight.instrument.monitor", "Monitor"),
    "GRAD_STATS": ("gradsight.stats.grad", "GRAD_STATS"),
    "open_run": ("gradsight.store.reader", "open_run"),
    "list_runs": ("gradsight.store.reader", "list_runs"),
    "Run": ("gradsight.store.reader", "Run"),
    "RunView": ("gradsight.store.view", "RunView"),
    "probe": ("gradsight.probes.probe", "probe"),
    "path_lengths": ("gradsight.probes", "path_lengths"),
    "shattering": ("gradsight.probes", "shattering"),
    "graph": ("gradsight.compgraph", "graph"),
    "diagnose": ("gradsight.diagnosis", "diagnose"),
    "show": ("gradsight.report.notebook", "show"),
    "assert_healthy": ("gradsight.diagnosis", "assert_healthy"),
    "checkup": ("gradsight.diagnosis", "checkup"),
    "format_findings": ("gradsight.diagnosis", "format_findings"),
    "Finding": ("gradsight.diagnosis", "Finding"),
    "Severity": ("gradsight.diagnosis", "Severity"),
    "Thresholds": ("gradsight.diagnosis", "Thresholds"),
    "data": ("gradsight.data", None),
    "models": ("gradsight.models", None),
    "plots": ("gradsight.plots", None),
    "schedules": ("gradsight.schedules", None),
    "train": ("gradsight.train", None),
}

__all__ = sorted(["GradsightError", "RunError", "__version__", *_LAZY])


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'gradsight' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def _card_html(obj: Any) -> str:
    from gradsight.report.notebook import card_html

    return card_html(obj)


# a Run and a Monitor draw themselves in notebooks through gradsight.display.card_html; the
# card (the doctor's findings, the report's escaping) lives in the report layer, above both
_display.set_card_html(_card_html)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # what static tools and IDEs see
    from gradsight import data, models, plots, schedules, train
    from gradsight.compgraph import graph
    from gradsight.diagnosis import (Finding, Severity, Thresholds, assert_healthy, checkup, diagnose,
                                     format_findings)
    from gradsight.instrument.monitor import Monitor, watch
    from gradsight.probes import path_lengths, shattering
    from gradsight.probes.probe import probe
    from gradsight.report.notebook import show
    from gradsight.stats.grad import GRAD_STATS
    from gradsight.store.reader import Run, list_runs, open_run
    from gradsight.store.view import RunView

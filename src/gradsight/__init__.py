"""gradsight: see how gradients flow through a PyTorch network.

Quick start::

    import gradsight as gs
    monitor = gs.watch(model, run_dir="runs/exp1")
    ...  # loss.backward(); monitor.step(); optimizer.step()
    monitor.close()
    df = gs.open_run("runs/exp1").frame()
"""

__version__ = "0.1.0"

from gradsight import data, models, schedules
from gradsight import train
from gradsight._errors import GradsightError, RunError
from gradsight.diagnosis import Finding, Thresholds, assert_healthy, diagnose, format_findings
from gradsight.instrument.monitor import Monitor, watch
from gradsight.probes.probe import probe
from gradsight.stats.grad import GRAD_STATS
from gradsight.store.reader import Run, list_runs, open_run
from gradsight.compgraph import graph  # noqa: E402  (gs.graph(model, inputs, run=None))
from gradsight import plots  # noqa: E402
from gradsight.probes import path_lengths, shattering

__all__ = [
    "GRAD_STATS",
    "Finding",
    "GradsightError",
    "Monitor",
    "Run",
    "RunError",
    "Thresholds",
    "assert_healthy",
    "data",
    "diagnose",
    "format_findings",
    "graph",
    "list_runs",
    "models",
    "open_run",
    "path_lengths",
    "plots",
    "probe",
    "schedules",
    "shattering",
    "watch",
]

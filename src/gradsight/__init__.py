"""gradsight: see how gradients flow through a PyTorch network.

Quick start::

    import gradsight as gs
    monitor = gs.watch(model, run_dir="runs/exp1")
    ...  # loss.backward(); monitor.step(); optimizer.step()
    monitor.close()
    df = gs.open_run("runs/exp1").frame()
"""

__version__ = "0.1.0"

from gradsight import schedules
from gradsight._errors import GradsightError, RunError
from gradsight.instrument.monitor import Monitor, watch
from gradsight.stats.grad import GRAD_STATS
from gradsight.store.reader import Run, list_runs, open_run

__all__ = [
    "GRAD_STATS",
    "GradsightError",
    "Monitor",
    "Run",
    "RunError",
    "list_runs",
    "open_run",
    "schedules",
    "watch",
]

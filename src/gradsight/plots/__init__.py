"""Figures of recorded runs (matplotlib).

Each function takes run data (a ``Run``, a run directory or a long frame from
``Run.frame()``) and an optional ``ax``, and returns the
:class:`matplotlib.figure.Figure`; none calls ``plt.show()``. Values are drawn on
log scales, layers in forward order under their names; long runs are shown
through evenly spaced steps (the store is never changed). The figures read runs
through :mod:`gradsight.store.query`; ``layer_matrix``, ``layer_profile``,
``first_last_ratio`` and ``nonfinite_events`` are re-exported from there. Figures of
training runs (``grad_flow``, ``grad_flow_overlay``, ``training_curves``), the gradient noise scale
(``noise_scale``), of the gradient
through time of recurrent layers (``through_time``) and of probes
(``plot_path_lengths``, ``plot_shattering``, ``plot_signal_propagation``) live here too.

    >>> from gradsight import plots
    >>> plots.flow("runs/exp1").savefig("flow.png")
    >>> plots.depth_overlay(["runs/plain20", "runs/resnet20"]).savefig("compare.svg")
"""

from gradsight.plots.compare import compare, depth_overlay, depth_sweep
from gradsight.plots.distribution import UPDATE_RATIO_REFERENCE, nonfinite, quantile_bands, update_ratio
from gradsight.plots.flow import flow
from gradsight.plots.heatmap import heatmap
from gradsight.plots.histograms import log2_histogram, log2_histograms
from gradsight.plots.noise_scale import noise_scale
from gradsight.plots.probes import plot_path_lengths, plot_shattering, plot_signal_propagation
from gradsight.plots.recurrent import through_time, through_time_matrix
from gradsight.plots.training import grad_flow, grad_flow_overlay, training_curves
from gradsight.store.query import first_last_ratio, layer_matrix, layer_profile, nonfinite_events

#: Plot kinds by name, as ``gradsight plot --kind`` offers them. Single-run kinds take
#: one run; ``compare`` and ``sweep`` take several.
KINDS = {
    "flow": flow,
    "heatmap": heatmap,
    "bands": quantile_bands,
    "update": update_ratio,
    "nonfinite": nonfinite,
    "noise": noise_scale,
    "compare": depth_overlay,
    "sweep": depth_sweep,
}
MULTI_RUN_KINDS = ("compare", "sweep")

__all__ = [
    "KINDS",
    "MULTI_RUN_KINDS",
    "UPDATE_RATIO_REFERENCE",
    "compare",
    "depth_overlay",
    "depth_sweep",
    "first_last_ratio",
    "flow",
    "grad_flow",
    "grad_flow_overlay",
    "heatmap",
    "layer_matrix",
    "log2_histogram",
    "log2_histograms",
    "layer_profile",
    "noise_scale",
    "nonfinite",
    "nonfinite_events",
    "plot_path_lengths",
    "plot_shattering",
    "plot_signal_propagation",
    "quantile_bands",
    "through_time",
    "through_time_matrix",
    "training_curves",
    "update_ratio",
]

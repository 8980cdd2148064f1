"""Thresholds of the diagnosis rules, with the reasoning behind each default.

See docs/diagnosis.md for references.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Thresholds:
    #: Vanishing: the gradient per element at the first weighted layer (or block) is
    #: this many times smaller than at the last (three orders of magnitude: Glorot &
    #: Bengio 2010 show saturating deep nets losing several orders within ~5 layers).
    #: Judged on the weighted layers' parameter gradients (``grad_rms``: conv/linear
    #: layers, no norm layers, embeddings or head), and with activation statistics on
    #: the output gradients too.
    vanish_ratio: float = 1e3
    #: ... and an error beyond this (no useful learning signal reaches the input).
    vanish_ratio_error: float = 1e6
    #: Vanishing: geometric-mean backward gain per layer/block of the output
    #: gradient below this (0.71 = the ReLU net with N(0, 1/fan_in) weights, which
    #: loses half the squared norm per layer; He et al. 2015 derive the gain of 1).
    gain_low: float = 0.8
    #: Gain rules need at least this many layers/blocks.
    min_depth: int = 6
    #: Exploding: the gradient per element at the first weighted layer is this many
    #: times larger than at the last (Yang et al. 2019: batch-normed plain nets grow
    #: gradients toward the input at initialization, geometrically in depth; Balduzzi
    #: et al. 2017: their gradients shatter).
    explode_ratio: float = 1e3
    explode_ratio_error: float = 1e6
    #: Exploding: the model gradient norm grows by this factor from its early median.
    global_growth: float = 1e2
    #: Forward signal without residual blocks: RMS of the last weighted layer's output
    #: over the first's (He et al. 2015: with the right init it stays about constant).
    forward_explode: float = 10.0
    #: Forward signal along a residual stream (block outputs): blocks that add a branch
    #: of about constant variance (pre-LN transformers, batch-normed ResNets) make the
    #: stream's RMS grow up to ``sqrt(blocks)`` times; growth beyond this factor times
    #: ``sqrt(blocks)`` is geometric (unnormalized ResNets double the variance per block:
    #: De & Smith 2020, Brock et al. 2021).
    stream_growth: float = 3.0
    forward_explode_error: float = 1e3
    forward_vanish: float = 1e-2
    #: Dead units: a layer with at least this fraction of its rows (output channels or
    #: units) exactly zero at every step of the window.
    dead_frac: float = 0.05
    #: Update ratio ||dw||/||w|| per step: about 1e-3 is customary (Karpathy, CS231n
    #: "ratio of updates to weights"); flag layers a factor 100 away.
    update_low: float = 1e-5
    update_high: float = 1e-1
    #: A residual branch carrying under this share of the gradient at its input does
    #: little; a skip carrying under it no longer helps the gradient through.
    branch_share_low: float = 0.01
    #: Mixed precision (``histograms=``): the model's gradient elements that become 0 in
    #: the training format (fp16 with a GradScaler or fp16 weights, bf16 weights), median
    #: over the steps with a histogram. A few tiny elements are harmless (they would be
    #: rounded away by the update anyway); a percent of them is lost signal.
    underflow_frac: float = 0.01
    #: ... or of one weighted layer's elements (a layer whose gradient is mostly lost).
    underflow_layer_frac: float = 0.1
    #: The scaled gradient's largest element within this factor of the format's largest
    #: value leaves no room to raise the loss scale.
    headroom_factor: float = 4.0

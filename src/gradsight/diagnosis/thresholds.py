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
    #: Vanishing: the gradient's gain per repeated block or layer going back (like with
    #: like) below this, over at least ``min_depth`` of them (0.71 = the ReLU net with
    #: N(0, 1/fan_in) weights, which loses half the squared norm per layer; He et al. 2015
    #: derive the gain of 1).
    gain_low: float = 0.8
    min_depth: int = 6
    #: Exploding: the gradient per element at the first weighted layer is this many
    #: times larger than at the last (Yang et al. 2019: batch-normed plain nets grow
    #: gradients toward the input at initialization, geometrically in depth; Balduzzi
    #: et al. 2017: their gradients shatter).
    explode_ratio: float = 1e3
    explode_ratio_error: float = 1e6
    #: Absolute size: the whole model's ``||g|| / ||w||`` (median over steps) above this, or
    #: below ``grad_size_low``, when the depth profiles look flat.
    grad_size_high: float = 1e2
    grad_size_low: float = 1e-7
    #: A layer whose gradient RMS is below this is not judged for small updates (Adam's
    #: update of an element whose gradient is under its ``eps`` = 1e-8 is small by design:
    #: a branch behind a LayerScale of 1e-6).
    grad_floor: float = 1e-7
    #: A parameter initialized with an RMS at most this is a small-initialized scale by
    #: design (LayerScale 1e-6..1e-5, zero-init last BN, a class token of std 1e-6): its
    #: first updates are not judged too high, and a branch holding it may start idle.
    small_init: float = 1e-3
    #: Exploding: the model gradient norm grows by this factor from its early median.
    global_growth: float = 1e2
    #: Forward signal without residual blocks: RMS of the last weighted layer's output
    #: over the first's (He et al. 2015: with the right init it stays about constant).
    forward_explode: float = 10.0
    forward_explode_error: float = 1e3
    forward_vanish: float = 1e-2
    #: Dead units: a layer with at least this fraction of its rows (output channels or
    #: units) exactly zero at every step of the window.
    dead_frac: float = 0.05
    #: ... judged on at least this many steps (a whole layer without gradient: any).
    dead_min_steps: int = 2
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

"""Thresholds of the diagnosis rules, with the reasoning behind each default.

See docs/diagnosis.md for references.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Thresholds:
    #: Vanishing: like with like (each layer against itself in the other instances of a
    #: repeated block, :mod:`gradsight.diagnosis.structure`), the first instance's gradient
    #: per element this many times smaller than the last's, summed over the chains of
    #: blocks (Glorot & Bengio 2010: saturating deep nets lose several orders within ~5
    #: layers). Judged on parameter gradients (``grad_rms``) and, with activation
    #: statistics, on every module's output gradient and the residual stream's.
    vanish_ratio: float = 1e3
    #: ... and an error beyond this (no useful learning signal reaches the input).
    vanish_ratio_error: float = 1e6
    #: Vanishing: the gradient's gain per repeated block or layer going back (like with
    #: like) below this, over at least ``min_depth`` of them, where the total has not
    #: reached ``vanish_ratio`` yet. The population's healthy networks go down to 0.77 (the
    #: output gradients of SK-ResNet-18's selective-kernel blocks), the networks kept out of
    #: it to 0.725 (timm ResNet-51Q: a SiLU after each addition, with the branches starting
    #: at zero, multiplies the stream's gradient by its slope near 0, about 0.5, at every
    #: block; 13x over 8 blocks, and the network trains to its published accuracy); a ReLU
    #: net with N(0, 1/fan_in) weights keeps 0.71 (He et al. 2015), which the total catches
    #: where it matters (1e3 after 20 layers). No fault of any set is caught by the gain
    #: alone (their gains: 0.17-0.30): beyond the lowest healthy gain by a margin of 1.1.
    gain_low: float = 0.65
    min_depth: int = 6
    #: ... or below this over any number of repeated blocks or layers (half the lowest
    #: healthy gain in the population, 0.22, a VGG's batch-normed convolutions).
    gain_floor: float = 0.11
    #: Vanishing in a plain chain of convolutions and linear maps without normalization,
    #: where no layer has a like to be compared with (:func:`~gradsight.diagnosis.rules.plain_chain_fade`):
    #: the first weighted layer's ``||g|| / ||w||`` over the last's below this (the
    #: population's healthy plain CNNs and MLPs: 0.14 at the lowest; sigmoids in a 4-layer
    #: CNN or every weight x0.1: 2.5e-3..3e-3).
    plain_vanish: float = 1e-2
    #: Exploding: like with like, the first instance's gradient this many times the last's
    #: (Yang et al. 2019: batch-normed plain nets grow gradients toward the input at
    #: initialization, geometrically in depth; Balduzzi et al. 2017: their gradients
    #: shatter). The population's healthy maximum is 4.3e3, timm's MobileOne-S0 (a
    #: batch-normed plain network of 53 blocks in training form, 1.17 per block: it trains
    #: well; kept out of the first population, it was reported at the threshold of 1e3 set
    #: from a maximum of 37, XCiT's), and this threshold sits half a decade beyond it. A
    #: plain-56 reaches 25 at the batch-scaled learning rate and 1.2e3 under Adam; He et
    #: al. 2016 (sec. 4.1) found such batch-normed plain networks' gradient norms healthy.
    explode_ratio: float = 1.4e4
    explode_ratio_error: float = 1e6
    #: Absolute size: the whole model's ``||g|| / ||w||`` (median over steps) above this, or
    #: below ``grad_size_low``, when the depth profiles look flat (the population's healthy
    #: networks span 1.1e-3..17: MnasNet's small depthwise weights; every weight x10 in a
    #: ReLU MLP or CNN: 86-264).
    grad_size_high: float = 50.0
    grad_size_low: float = 1e-5
    #: Through time (recurrent modules, :func:`~gradsight.diagnosis.rules.through_time`): the
    #: gradient's gain per time step going back from the last step to the initial state
    #: (Bengio et al. 1994, Pascanu et al. 2013: it is the norm of the recurrent Jacobian, and
    #: the gradient over k steps goes as its k-th power). Below ``time_gain_low`` it vanishes:
    #: the population's healthy LSTMs, GRUs and tanh/ReLU RNNs keep 0.38..0.76 per step (a
    #: ReLU ``nn.RNN`` at PyTorch's default init the lowest; a gated cell's forget or update
    #: gate at sigmoid(0) = 0.5 holds LSTMs and GRUs near 0.5-0.7), so half the lowest; a tanh
    #: RNN with every weight x0.1: 0.07. Healthy networks shrink it at every step (over their
    #: 12-64 steps by 1e-4..1e-12), so vanishing is judged per step, not over the sequence.
    time_gain_low: float = 0.19
    #: ... and it explodes when it grows more than this many times over the sequence (no
    #: healthy network's grows at all; every weight x10 in an LSTM, a GRU or a tanh RNN puts
    #: the gain per step at 1.1-1.6, 45-2e3 times over 16-32 steps).
    time_explode: float = 10.0
    #: Saturation (:func:`~gradsight.diagnosis.rules.saturation`): a hidden tanh, sigmoid,
    #: softsign, hardtanh or hardsigmoid module with more than this share of its outputs where
    #: its slope is under 2 % of its largest, at the first recorded step and over the window.
    #: Glorot & Bengio 2010 (sec. 3) saw deep sigmoid networks fail by saturation. The
    #: population's healthy hidden bounded activations (tanh MLPs at PyTorch's default and
    #: Xavier init, CleanRL's PPO actor, the makemore MLP, LeNet-5, a sigmoid MLP on digits,
    #: MaxViT's head) reach 0.052 at most; every weight x10 in a tanh MLP gives 0.65, a
    #: chaotic phase whose gradient depth profile grows toward the input. The healthy
    #: maximum plus 0.2 (a share: as a factor, a half of the families whose networks never
    #: saturate would set it at 0).
    saturated: float = 0.25
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
    #: Forward signal along a residual stream: growth beyond the ``sqrt(blocks)`` that blocks
    #: adding branches of constant mean square allow (pre-LN transformers, batch-normed
    #: ResNets), summed over the chains of blocks; unnormalized ResNets double the variance
    #: per block (De & Smith 2020, Brock et al. 2021).
    stream_explode: float = 5e3
    forward_vanish: float = 1e-2
    #: Dead units: a layer with at least this fraction of its rows (output channels or
    #: units) exactly zero at every step of the window.
    dead_frac: float = 0.05
    #: ... judged on at least this many steps (a whole layer without gradient: any).
    dead_min_steps: int = 2
    #: A layer none of whose rows gets a gradient is stuck (a warning) when its output's
    #: ``|mean| / std`` exceeds this (bias -100: 1.5e3..6.5e3 in the fault matrix; stock
    #: squeeze-excite layers on random data: up to 56 in the population).
    dead_saturation: float = 300.0
    #: Unused outputs of the last layer are judged on at least this many steps, and not when
    #: the last layer's output RMS is above ``logit_saturation`` (a softmax over logits that
    #: large flushes some probabilities to exactly 0 in float32: the first population's
    #: diverging SGD runs of RegNet and TResNet reached 74..3e3; healthy runs stay below 10).
    #: At initialization a head output RMS above it is ``exploding_forward`` (the healthy
    #: population starts at 7.5 at most; every weight x10 in a ReLU MLP or CNN: 390..6.5e3).
    dead_output_steps: int = 5
    logit_saturation: float = 50.0
    #: Update ratio ||dw||/||w|| per step: about 1e-3 is customary (Karpathy, CS231n
    #: "ratio of updates to weights"). Too high: a layer above ``update_high`` (the
    #: population's healthy layers stay below 0.18 from the 20th step on); too low: the
    #: median weighted layer below ``update_low`` (healthy medians go down to 6.5e-5; lr /
    #: 1e4 puts them at 1.9e-7..1.4e-6; over all layers, norm gains and activation scalars
    #: included, healthy medians went down to 2.4e-5 and CAFormer's to 7e-6).
    update_low: float = 8e-6
    update_high: float = 0.5
    #: A layer whose weight norm grows faster than this many times per 20 updates (not a
    #: shift, small-initialized, embedding or scale-invariant tensor) has had updates of the
    #: order of its weights: the learning rate is too high (the population's healthy runs
    #: stay within 1.8; a learning rate x100, Adam or SGD: 4.3-31).
    weight_growth: float = 3.0
    #: ... judged once the window holds at least this many updates (the first updates of
    #: a run with momentum or a warm optimizer state are not its learning rate's verdict).
    min_updates: int = 5
    #: A residual branch carrying under this share of the gradient at its input does
    #: nothing; a skip carrying under ``1 - branch_share_high`` no longer helps the gradient
    #: through. Stock tiny transformers (std-0.02 init at width 32) go down to 3e-5.
    branch_share_low: float = 1e-6
    branch_share_high: float = 1 - 1e-6
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

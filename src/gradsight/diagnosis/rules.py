"""Diagnosis rules: each reads a run and returns findings. Pure functions of the view."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import astuple, dataclass

import numpy as np
import pandas as pd

from gradsight._text import few
from gradsight.diagnosis.findings import Finding
from gradsight.diagnosis.structure import alike_log_ratio, alike_pairs, block_chains, chains_of
from gradsight.diagnosis.thresholds import Thresholds
from gradsight.display import display_name
from gradsight.instrument.meta import EVAL_MODE_STAT
from gradsight.instrument.recurrent import (
    TIME_GAIN_REVERSE_STAT,
    TIME_GAIN_STAT,
    TIME_STEPS_STAT,
)
from gradsight.instrument.zeroing import STAT as ZEROING_STAT
from gradsight.stats.formats import FORMAT_RANGES
from gradsight.store.roles import Role, is_recurrent_type
from gradsight.store.schema import Level
from gradsight.store.view import RunSource, RunView, view_of


def _grad_clip(view: RunView) -> dict:
    """The recorded clipping (``grad_clip`` in the run's meta or config) when the recorded
    gradients are after it (``post_clip``), else empty."""
    clip = view.meta.get("grad_clip") or view.config.get("grad_clip")
    return clip if isinstance(clip, dict) and clip.get("post_clip") else {}


def _table(view: RunView, level: str, stat: str) -> pd.DataFrame:
    """The steps x names table a rule judges: per-module statistics at the view's sample
    (the steps the plots and the report show), whole-model series, missing-gradient
    counts and update ratios over every recorded step (update ratios are at some steps
    only, each layer at its own under rotating snapshots: a sample of all steps could miss
    whole layers). Block statistics leave out the additions of a recurrence
    (:func:`recurrence_additions`)."""
    every = level in Level.TOTALS or stat in ("grad_missing", "update_ratio")
    table = view.matrix(level, stat, steps="all" if every else "sample")
    if level == Level.BLOCK:
        table = table.drop(columns=[c for c in table.columns if c in recurrence_additions(view)])
    return table


#: A module holding more residual additions than this computes a recurrence or a series step
#: by step in Python (RWKV's attention: 32 a block, over its time loop; Mamba's, Jamba's and
#: RecurrentGemma's scans without their kernels: 16-17), not a stack of residual blocks: the
#: modules of the population and of the networks kept out hold at most 4 (a Conformer layer,
#: a MobileOne stage, SqueezeBERT's encoder).
MAX_ADDITIONS_PER_MODULE = 8


def recurrence_additions(view: RunView) -> set[str]:
    """The block rows (additions inside a module, ``module[k]``) of modules holding more than
    :data:`MAX_ADDITIONS_PER_MODULE` of them: a recurrence's arithmetic (``num = e1 * num + e2
    * v`` at every time step, which passes nothing through its "branch" at the first step, the
    state being zero), judged by no block rule."""
    def find() -> set[str]:
        counts = Counter(b.split("[", 1)[0] for b in view.blocks if "[" in b)
        return {b for b in view.blocks if "[" in b and counts[b.split("[", 1)[0]] > MAX_ADDITIONS_PER_MODULE}

    return _memo(view, ("recurrence_additions",), find)


#: The per-module tables the rules read at the view's sample, and over every step.
_SAMPLE_KEYS = [*((Level.LAYER, s) for s in ("grad_dead_rows", "grad_norm", "grad_rms", "weight_norm",
                                               "grad_nonfinite", "fp16_underflow", "bf16_underflow")),
                (Level.PARAM, "weight_norm"), (Level.MODULE, "act_rms"), (Level.MODULE, "out_grad_rms"),
                (Level.MODULE, "out_grad_nonfinite"), (Level.BLOCK, "act_rms"), (Level.BLOCK, "skip_grad_norm"),
                (Level.BLOCK, "branch_grad_norm"),
                *((Level.MODULE, s) for s in (TIME_GAIN_STAT, TIME_GAIN_REVERSE_STAT, TIME_STEPS_STAT))]
_ALL_KEYS = [(Level.PARAM, "grad_missing"), (Level.LAYER, "update_ratio")]


def _needed(view: RunView) -> list[tuple[str, list[tuple[str, str]]]]:
    if len(view.sample) == len(view.steps):
        return [("all", _SAMPLE_KEYS + _ALL_KEYS)]
    return [("sample", _SAMPLE_KEYS), ("all", _ALL_KEYS)]


def want(view: RunView) -> None:
    """Tell the view which tables the rules will read (:meth:`RunView.want`), so that a
    reader before them (the report's charts) reads them along."""
    for steps, keys in _needed(view):
        view.want(keys, steps=steps)


def prefetch(view: RunView) -> None:
    """Read every table the rules need in one pass (one read of each group of values)."""
    for steps, keys in _needed(view):
        view.matrices(keys, steps=steps)


def _normalized(view: RunView) -> set[str]:
    """Weighted layers whose next layer in forward order is a norm layer (a convolution
    followed by BatchNorm): the loss does not change when their weights are scaled."""
    order = view.layer_order
    return {a for a, b in zip(order, order[1:]) if view.role(a) == Role.WEIGHTED and view.role(b) == Role.NORM}


def _normalized_gains(view: RunView) -> set[str]:
    """Norm layers followed in forward order by a weighted layer and then a norm layer (a
    BatchNorm, its ReLU, the next convolution and its BatchNorm): the next normalization
    removes their scale (exactly through a ReLU, which is positively homogeneous; nearly
    through other activations), so the loss does not change when their gains grow."""
    order = view.layer_order
    return {a for a, b, c in zip(order, order[1:], order[2:])
            if view.role(a) == Role.NORM and view.role(b) == Role.WEIGHTED and view.role(c) == Role.NORM}


def _weighted_or_head(view: RunView, names) -> list[str]:
    """The weighted layers and the head among ``names``, in their order."""
    return [n for n in names if view.role(n) in (Role.WEIGHTED, Role.HEAD)]



def _fmt(x: float) -> str:
    """A number for a message: 3 significant digits; ``inf``/``-inf`` as such; a missing
    (NaN) value in words, so that "nan" never reaches a message."""
    if math.isnan(x):
        return "an unknown value"
    return f"{x:.3g}" if math.isfinite(x) else str(x)



def nonfinite(view: RunView, th: Thresholds) -> list[Finding]:
    model_nf = _table(view, Level.MODEL, "grad_nonfinite")
    act = _table(view, Level.MODULE, "act_rms")
    bad_steps: set[int] = set()
    if not model_nf.empty:
        bad_steps |= set(model_nf.index[(model_nf.fillna(0).to_numpy() > 0).any(axis=1)])
        norm = _table(view, Level.MODEL, "grad_norm")
        bad_steps |= set(norm.index[~np.isfinite(norm.to_numpy(dtype=float)).all(axis=1)])
    if not act.empty:
        # a missing value (a module that did not run at that step: LayerDrop, an early exit,
        # an expert not routed to) is not a non-finite one
        written = view.written(Level.MODULE, "act_rms").to_numpy()
        bad_steps |= set(act.index[(~np.isfinite(act.to_numpy(dtype=float)) & written).any(axis=1)])
    if not bad_steps:
        return []
    skipped = _table(view, Level.MODEL, "skipped")
    skipped_steps = set(skipped.index[skipped.iloc[:, 0] > 0]) if not skipped.empty else set()
    if skipped_steps and bad_steps <= skipped_steps:
        n_rec = len(view.steps)
        sev = "warning" if len(bad_steps) > max(3, 0.05 * n_rec) else "info"
        return [Finding("amp_skipped_steps", sev,
                        f"The loss scaler skipped {len(bad_steps)} of {n_rec} recorded steps for non-finite gradients; "
                        "a few while the scale settles are normal, many mean the loss or a layer overflows in low "
                        "precision.", steps=sorted(bad_steps), measured={"skipped_steps": float(len(bad_steps))})]
    step = min(bad_steps - skipped_steps) if bad_steps - skipped_steps else min(bad_steps)
    forward_origin = backward_origin = None
    details = []
    row = view.at_step(Level.MODULE, "act_rms", step)
    if row is not None:
        written = view.written(Level.MODULE, "act_rms", steps=[step]).loc[step]
        nonblock = [c for c in row.index if c not in view.blocks and written[c]]
        bad = [c for c in nonblock if not math.isfinite(row[c])]
        if bad:
            forward_origin = min(bad, key=lambda c: view.depth.get(c, 0))
            details.append(f"in the forward pass they first appear at the output of '{display_name(forward_origin)}'")
    row = view.at_step(Level.MODULE, "out_grad_nonfinite", step)
    if row is not None:
        cols = [c for c in row.index if c not in view.blocks and not math.isnan(row[c])]
        cols.sort(key=lambda c: view.depth.get(c, 0))
        bad = [c for c in cols if not (row[c] == 0)]
        if bad:
            deepest = max(bad, key=lambda c: view.depth.get(c, 0))
            after = [c for c in cols if view.depth.get(c, 0) > view.depth.get(deepest, 0)]
            if after:
                backward_origin = after[0]
                details.append(f"in the backward pass they first appear in '{display_name(backward_origin)}' "
                               "(its output gradient was finite, the gradient it passed back was not)")
            elif forward_origin is None:
                backward_origin = deepest
                details.append(f"the gradient arriving at the last module '{display_name(deepest)}' was already "
                               "non-finite (the loss or its gradient)")
    if not details:
        row = view.at_step(Level.LAYER, "grad_nonfinite", step)
        if row is not None:
            names = list(row.index)
            bad = [c for c in names if row[c] > 0]
            if bad and len(bad) < len(names):
                deepest = bad[-1]
                after = names[names.index(deepest) + 1:]
                backward_origin = after[0] if after else deepest
                details.append(f"layers up to '{display_name(deepest)}' have non-finite gradients and later ones do "
                               f"not, so the backward pass turned non-finite in or just after "
                               f"'{display_name(backward_origin)}'")
            elif bad:
                details.append("every layer's gradient is non-finite, so the loss (or the forward pass) was "
                               "non-finite; record with activations=True to find the module")
    layers = [x for x in (forward_origin, backward_origin) if x is not None]
    return [Finding(
        "nonfinite", "error",
        f"Non-finite values first at step {step}: " + "; ".join(details or ["origin unknown"])
        + ". Look for log/sqrt/division of zero or negative values, lower the learning rate, or clip gradients.",
        layers=layers, steps=sorted(bad_steps)[:50],
        measured={"first_step": float(step), "nonfinite_steps": float(len(bad_steps))})]


def gradients_not_zeroed(view: RunView, th: Thresholds) -> list[Finding]:
    """``gradients_not_zeroed`` (error): recorded steps whose backward pass added into the
    previous step's gradient, still in ``.grad`` after the optimizer had stepped (the
    monitor's exact check, :mod:`gradsight.instrument.zeroing`; runs recorded before it have
    no verdict and get none)."""
    judged = _model_series(view, ZEROING_STAT)
    stale = judged[judged > 0]
    if stale.empty:
        return []
    norm = _model_series(view, "grad_norm")
    grew = ""
    if len(norm) > 1 and norm.iloc[0] > 0:
        grew = (f"; the model's gradient norm went from {_fmt(float(norm.iloc[0]))} at step {int(norm.index[0])} to "
                f"{_fmt(float(norm.iloc[-1]))} at step {int(norm.index[-1])}")
    return [Finding(
        "gradients_not_zeroed", "error",
        f"The gradients are not zeroed between optimizer steps: at {len(stale)} of the {len(judged)} recorded steps "
        f"checked ({_when(stale.index)}) the backward pass added into the previous step's gradient, still in .grad "
        f"after the optimizer had stepped, so each step applies the sum of all the gradients before it{grew}. Call "
        "optimizer.zero_grad() once per optimizer step (after optimizer.step(), or before loss.backward()).",
        steps=[int(s) for s in stale.index][:50],
        measured={"not_zeroed_steps": float(len(stale)), "judged_steps": float(len(judged))})]


def trained_in_eval_mode(view: RunView, th: Thresholds) -> list[Finding]:
    """``trained_in_eval_mode``: recorded steps at which ``model.training`` was False (a
    ``model.eval()`` left on after an evaluation). A warning where the model has modules
    that compute differently in eval mode (BatchNorm, dropout: ``meta.mode_modules``), an info
    where none was counted (a module reading ``self.training`` in its own code would)."""
    flags = _model_series(view, EVAL_MODE_STAT)
    evaluated = flags[flags > 0]
    if evaluated.empty:
        return []
    kinds = view.meta.get("mode_modules") or {}
    bn, dropout = int(kinds.get("batchnorm", 0)), int(kinds.get("dropout", 0))
    effects = ([f"its {bn} BatchNorm layer(s) normalized with their running statistics, not the batch's, and "
                "passed no gradient through the batch's mean and variance"] if bn else []) + (
        [f"its {dropout} dropout layer(s) were off"] if dropout else [])
    what = ("; ".join(effects) if effects else
            "no BatchNorm or dropout module was found in it, so this matters only where a module reads "
            "self.training in its own code")
    return [Finding(
        "trained_in_eval_mode", "warning" if effects else "info",
        f"The model was in eval mode (model.training was False) at {len(evaluated)} of the {len(flags)} recorded "
        f"steps ({_when(evaluated.index)}): {what}. Call model.train() before the training steps (after each "
        "evaluation); to keep BatchNorm statistics frozen on purpose, put those layers alone in eval mode.",
        steps=[int(s) for s in evaluated.index][:50],
        measured={"eval_steps": float(len(evaluated)), "recorded_steps": float(len(flags)),
                  "batchnorm_layers": float(bn), "dropout_layers": float(dropout)})]


#: Recorded steps over which a parameter's weight norm must stay the same value for
#: :func:`not_updated` to call it untrained.
MIN_UNCHANGED_STEPS = 3


def not_updated(view: RunView, th: Thresholds) -> list[Finding]:
    """``not_updated``: parameters that had a gradient but are in none of the optimizers passed
    to ``gs.watch`` (``meta.outside_optimizers``). A warning for those whose weights never
    changed over at least ``MIN_UNCHANGED_STEPS`` recorded steps (their norm the same float32
    value at each: nothing trains them, as a layer replaced after the optimizer was built); an
    info for those that moved (another optimizer steps them: passing it records their updates)."""
    names = view.meta.get("outside_optimizers") or []
    wn = _table(view, Level.PARAM, "weight_norm")
    names = [n for n in names if n in wn.columns]
    if not names:
        return []
    still, moved = [], []
    for name in names:
        norms = wn[name].to_numpy(dtype=float)
        norms = norms[np.isfinite(norms)]
        if len(norms) >= MIN_UNCHANGED_STEPS and (norms == norms[0]).all():
            still.append(name)
        elif len(norms) >= 2:
            moved.append(name)
    params = view.params.set_index("name")["layer"]
    findings = []
    if still:
        layers = list(dict.fromkeys(params.get(n, n) for n in still))
        shown = few([f"'{display_name(x)}'" for x in layers], 5)
        findings.append(Finding(
            "not_updated", "warning",
            f"{len(still)} parameter(s) of {len(layers)} layer(s) ({shown}) got a gradient but are in none of the "
            f"optimizers passed to gs.watch, and their weights never changed over the {len(view.steps)} recorded "
            "steps: nothing trains them. A layer replaced or added after the optimizer was built is the usual cause: "
            "build the optimizer over the final model (or optimizer.add_param_group). If they are meant to stay "
            "fixed, freeze them (requires_grad_(False)): their gradients cost a backward pass for nothing.",
            layers=layers, measured={"parameters": float(len(still)), "layers": float(len(layers))}))
    if moved:
        findings.append(Finding(
            "not_updated", "info",
            f"{len(moved)} parameter(s) got a gradient and changed but are in none of the optimizers passed to "
            "gs.watch (another optimizer steps them): their update ratios are not recorded; pass every optimizer "
            "(optimizer=[opt_a, opt_b]).",
            layers=list(dict.fromkeys(params.get(n, n) for n in moved)), measured={"parameters": float(len(moved))}))
    return findings


def _memo(view: RunView, key: tuple, compute):
    """``compute()`` once per view and key: what several rules (and :func:`measure`) share."""
    if key not in view._memo:
        view._memo[key] = compute()
    return view._memo[key]


def _window(view: RunView, table: pd.DataFrame) -> pd.DataFrame:
    """The last half of a table's steps (at least one): where a condition must still hold to
    be more than the initialization's."""
    return table.iloc[len(table) // 2:] if len(table) > 1 else table


def _when(steps) -> str:
    """Words for the steps a finding holds at: "at initialization (step 0)", "at step 7",
    "at steps 3-19"."""
    steps = sorted(int(s) for s in steps)
    if not steps:
        return ""
    if len(steps) == 1:
        return "at initialization (step 0)" if steps[0] == 0 else f"at step {steps[0]}"
    return f"at steps {steps[0]}-{steps[-1]}"


def _initial_rms(view: RunView, level: str = Level.LAYER) -> pd.Series:
    """The weight RMS of each layer (or parameter) at the first recorded step: how it was
    initialized (``weight_norm / sqrt(numel)``)."""
    wn = _table(view, level, "weight_norm")
    if wn.empty:
        return pd.Series(dtype=float)
    params = view.params
    key = "layer" if level == Level.LAYER else "name"
    numel = params.groupby(key)["numel"].sum()
    first = wn.iloc[0]
    return (first / np.sqrt(numel.reindex(first.index).astype(float))).dropna()


#: A norm layer with a zero-initialized parameter is a small scale only if its output RMS at the
#: first recorded step is at most this (Gemma's offset gains: about 1; zero-init BatchNorm: 0).
SMALL_OUTPUT_RMS = 0.1


def small_initialized(view: RunView, th: Thresholds) -> set[str]:
    """Layers with a parameter initialized at or near zero (RMS at most ``small_init``) by
    design: a zero-initialized last BatchNorm scale (timm's ``zero_init_last``), LayerScale
    (1e-6..1e-5), GRN's gamma, NF-Net and SkipInit gains, a class token of std 1e-6, a
    zero-initialized head or LoRA ``B``. Recognized from the parameters themselves."""
    rms = _initial_rms(view, Level.PARAM)
    if rms.empty:
        return set()
    layer_of = dict(zip(view.params["name"], view.params["layer"]))
    small = {layer_of[n] for n, v in rms.items() if v <= th.small_init and n in layer_of and not _is_shift(n)}
    # a norm layer whose gain is stored as an offset (Gemma's RMSNorm computes x * (1 + w), w
    # starting at 0) outputs its input's scale: a parameter at zero is a small scale only where
    # the layer's output is small (a zero-initialized BatchNorm outputs its shift, 0)
    acts = _table(view, Level.MODULE, "act_rms")
    if not acts.empty:
        first = acts.iloc[0]
        small = {n for n in small if not (view.role(n) == Role.NORM and n in first.index
                                          and first[n] > SMALL_OUTPUT_RMS)}
    return small


def _is_shift(param: str) -> bool:
    """A bias (``bias``, ``beta``, ``b``): zero-initialized everywhere, it shifts rather than
    scales, so starting at zero makes nothing small."""
    last = param.rsplit(".", 1)[-1].lower()
    return "bias" in last or last in ("beta", "b", "shift")


def _scaled_by_small(view: RunView, th: Thresholds) -> set[str]:
    """Layers that share a residual block (or, without block rows, a parent module) with a
    small-initialized parameter (a LayerScale, a zero-initialized last BN): the gradient of
    the branch's layers passes through that small scale, so it is small by design at first."""
    small = small_initialized(view, th)
    if not small:
        return set()
    bases = {b.split("[", 1)[0] for b in view.blocks}
    scopes = set()
    for s in small:
        parts = s.split(".")
        around = [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
        block = next((a for a in around if a in bases), None)
        scopes.add(block if block is not None else (around[0] if around else s))
    return {layer for layer in view.layer_order
            if any(layer == sc or layer.startswith(sc + ".") for sc in scopes)}


@dataclass
class _Depth:
    """What one like-with-like profile says about a statistic along depth (see
    :func:`depth_profiles`)."""

    key: str  #: names its number in ``Finding.measured``
    what: str  #: e.g. "parameter gradient per element"
    log10: pd.Series  #: per step: log10 of first instance / last instance, summed over chains
    span: int  #: the repeated instances spanned
    ends: tuple[str, str]  #: the first and last instance of the longest chain

    @property
    def median(self) -> float:
        """log10 of the median over steps of the per-step ratio (the median of the ratios,
        as :func:`gradsight.store.query.first_last_ratio` takes it)."""
        values = self.log10.dropna()
        return float(np.log10((10.0 ** values).median())) if len(values) else math.nan

    @property
    def gain(self) -> float:
        """The median gain per repeated instance going back (``(last / first)`` to the
        ``1/span``): below 1 the gradient shrinks toward the input at every block."""
        return 10 ** (self.median / self.span) if self.span else math.nan


def _depth(view: RunView, key: str, what: str, table: pd.DataFrame) -> _Depth | None:
    log10, span = alike_log_ratio(view, table)
    if span == 0 or log10.dropna().empty:
        return None
    chain, _rel, members = max(alike_pairs(view, table.columns), key=lambda pair: len(pair[0]))
    return _Depth(key, what, log10, span, (chain.instances[members[0][0]], chain.instances[members[-1][0]]))


def depth_profiles(view: RunView) -> list[_Depth]:
    """The like-with-like gradient profiles along depth: parameter gradients per element
    (every run has them), and with activation statistics the output gradients per element
    of every module and the residual stream's gradient (the skip's share at each block,
    the gradient at the block's output). Computed once per view (the vanishing rules, the
    plain-chain rule and :func:`measure` all read them)."""
    return _memo(view, ("depth_profiles",), lambda: _depth_profiles(view))


def _depth_profiles(view: RunView) -> list[_Depth]:
    found = [_depth(view, "param", "parameter gradient per element", _table(view, Level.LAYER, "grad_rms"))]
    found.append(_depth(view, "output", "output gradient per element", _table(view, Level.MODULE, "out_grad_rms")))
    found.append(_depth(view, "stream", "gradient along the residual stream",
                        _table(view, Level.BLOCK, "skip_grad_norm")))
    return [d for d in found if d is not None]


def _model_series(view: RunView, stat: str, level: str = Level.MODEL) -> pd.Series:
    table = _table(view, level, stat)
    if table.empty:
        return pd.Series(dtype=float)
    values = table.iloc[:, 0].astype(float)
    return values[np.isfinite(values)]


def gradient_size(view: RunView) -> float:
    """The model's gradient per element over its weights per element
    (``grad_weight_ratio`` at the model level, ``||g|| / ||w||``), median over the steps:
    how large the gradient is on the weights' own scale. Depth profiles compare layers
    with each other, and when the forward and backward signals grow together (every
    weight 10x too large in a ReLU network) the parameter gradients look flat along depth
    although the gradient is 1e10 times too large; this catches that, and the opposite."""
    ratio = _model_series(view, "grad_weight_ratio")
    ratio = ratio[ratio > 0]
    return float(ratio.median()) if len(ratio) else math.nan


def plain_chain_fade(view: RunView) -> tuple[float, tuple[str, str], int, pd.Series] | None:
    """Where no like-with-like profile exists (:func:`depth_profiles`: a small CNN whose
    convolutions all differ in shape), a network that is one plain chain of convolutions and
    linear maps (every layer weighted or the head, no normalization, at least 3 weighted
    layers besides the head) still has a measure of vanishing: the first weighted layer's
    gradient on its weights' own scale (``grad_weight_ratio``, ``||g|| / ||w||``) over the
    last's. With an initialization that keeps the forward and backward signals (He et al.
    2015) the two stay within a decade (healthy plain CNNs and MLPs of the population:
    0.14..2.1); a saturating activation or weights shrunk in every layer leave the first
    layers learning 300x slower or worse.

    Returns ``(log10 of the median ratio over the window, (first, last), layers, per-step
    log10)``, or None where the network is not such a chain or the ratio is missing."""
    if depth_profiles(view):
        return None
    order = [n for n in view.layer_order if view.role(n) != Role.HEAD]
    types = view.module_type
    if len(order) < 3 or any(view.role(n) != Role.WEIGHTED or is_recurrent_type(types.get(n, "")) for n in order) \
            or any("Norm" in t for t in types.values()):
        return None
    ratio = _table(view, Level.LAYER, "grad_weight_ratio")
    first, last = order[0], order[-1]
    if ratio.empty or first not in ratio.columns or last not in ratio.columns:
        return None
    per_step = (ratio[first] / ratio[last]).astype(float)
    per_step = per_step[np.isfinite(per_step) & (per_step > 0)]
    window = _window(view, per_step.to_frame())
    if window.empty:
        return None
    return float(np.log10(window.iloc[:, 0].median())), (first, last), len(order), np.log10(per_step)


def gradient_scale(view: RunView, th: Thresholds) -> list[Finding]:
    """``vanishing_gradients`` / ``exploding_gradients``: along depth like with like
    (:func:`depth_profiles`), or in absolute size (:func:`gradient_size`); and
    ``growing_gradient_norm`` over time (not judged on post-clip values)."""
    findings = []
    profiles = depth_profiles(view)
    measured_all = {f"{d.key}_log10_first_over_last": d.median for d in profiles}
    low = min(profiles, key=lambda d: d.median, default=None)
    high = max(profiles, key=lambda d: d.median, default=None)
    vanish, explode = math.log10(th.vanish_ratio), math.log10(th.explode_ratio)
    # a gain per block below gain_low over at least min_depth blocks vanishes geometrically
    # even where the total has not reached vanish_ratio yet (He et al. 2015: 1/sqrt(2) per ReLU layer)
    fading = [d for d in profiles if (d.span >= th.min_depth and d.gain < th.gain_low) or d.gain < th.gain_floor]
    if fading and (low is None or low.median >= -vanish):
        low = min(fading, key=lambda d: d.gain)
        vanish = -low.median - 1e-12
    if low is not None and low.median < -vanish:
        sev = "error" if low.median < -math.log10(th.vanish_ratio_error) else "warning"
        bad = low.log10.index[low.log10 < -vanish]
        findings.append(Finding(
            "vanishing_gradients", sev,
            f"Gradients vanish toward the input: the {low.what} shrinks {_fmt(10 ** -low.median)} times going back "
            f"through {low.span} repeated blocks or layers, each compared with itself in the next one "
            f"({_fmt(low.gain)} per block or layer; the longest run of them: '{display_name(low.ends[0])}' to "
            f"'{display_name(low.ends[1])}'; median {_when(low.log10.index)}). "
            "Use residual connections, normalization, ReLU-family activations with He initialization, or a "
            "shallower network.",
            layers=list(low.ends), steps=[int(s) for s in bad][:50],
            measured={"first_over_last": 10 ** low.median, "gain_per_step_back": low.gain, "depth": float(low.span),
                      **measured_all}))
    elif high is not None and high.median > explode:
        sev = "error" if high.median > math.log10(th.explode_ratio_error) else "warning"
        bad = high.log10.index[high.log10 > explode]
        findings.append(Finding(
            "exploding_gradients", sev,
            f"Gradients grow toward the input: the {high.what} grows {_fmt(10 ** high.median)} times going back "
            f"through {high.span} repeated blocks or layers, each compared with itself in the next one "
            f"(the longest run of them: '{display_name(high.ends[0])}' to '{display_name(high.ends[1])}'; median "
            f"{_when(high.log10.index)}), as in deep batch-normed plain networks at initialization (Yang et al. "
            "2019). Use residual connections, a smaller learning rate or gradient clipping.",
            layers=list(high.ends), steps=[int(s) for s in bad][:50],
            measured={"first_over_last": 10 ** high.median, "depth": float(high.span), **measured_all}))
    fade = None if findings else plain_chain_fade(view)
    if fade is not None and fade[0] < math.log10(th.plain_vanish):
        log10, (first, last), n, per_step = fade
        bad = per_step.index[per_step < math.log10(th.plain_vanish)]
        findings.append(Finding(
            "vanishing_gradients", "error" if log10 < -math.log10(th.vanish_ratio_error) else "warning",
            f"Gradients vanish toward the input: in this chain of {n} convolutions or linear maps without "
            f"normalization or residual connections, the first layer's gradient on its weights' scale "
            f"(||g|| / ||w||) is {_fmt(10 ** -log10)} times smaller than the last's ('{display_name(first)}' against "
            f"'{display_name(last)}'; median {_when(_window(view, per_step.to_frame()).index)}; healthy plain "
            f"networks stay within {_fmt(1 / th.plain_vanish)}x), so the first layers learn that much more slowly. "
            "Use ReLU-family activations with He initialization (no layer's weights scaled down), normalization "
            "or residual connections.",
            layers=[first, last], steps=[int(s) for s in bad][:50],
            measured={"first_over_last": 10 ** log10, "depth": float(n)}))
    size = gradient_size(view)
    if size < th.grad_size_low and precision_headroom(view, th):
        size = math.nan  # a gradient flushed toward zero by a low-precision format: amp_underflow says so
    if not findings and math.isfinite(size) and (size > th.grad_size_high or size < th.grad_size_low):
        steps = [int(s) for s in _model_series(view, "grad_weight_ratio").index]
        if size > th.grad_size_high and high is not None and high.median >= 1.0:
            # the gradient grows along depth too (below explode_ratio): the early layers' gradients make it large
            findings.append(Finding(
                "exploding_gradients", "error" if size > th.grad_size_high * 1e3 else "warning",
                f"The gradient is {_fmt(size)} times the size of the weights (||g||/||w|| of the whole model, median "
                f"{_when(steps)}; healthy networks stay below {_fmt(th.grad_size_high)}), and the {high.what} grows "
                f"{_fmt(10 ** high.median)} times going back through {high.span} repeated blocks or layers (from "
                f"'{display_name(high.ends[1])}' to '{display_name(high.ends[0])}'): the first layers' gradients make "
                "it that large, as in deep batch-normed plain networks (Yang et al. 2019). Use residual connections, "
                "a smaller learning rate or gradient clipping.",
                layers=list(high.ends), steps=steps[:50],
                measured={"grad_over_weight": size, "first_over_last": 10 ** high.median, "depth": float(high.span),
                          **measured_all}))
        elif size > th.grad_size_high:
            findings.append(Finding(
                "exploding_gradients", "error" if size > th.grad_size_high * 1e3 else "warning",
                f"The gradient is {_fmt(size)} times the size of the weights (||g||/||w|| of the whole model, median "
                f"{_when(steps)}; healthy networks stay below {_fmt(th.grad_size_high)}), although no layer's "
                "gradient grows relative to the next by more than 10x: the forward and backward signals grow "
                "together, as when every weight is initialized too large. Check the initialization (He for ReLU, "
                "1/sqrt(fan_in) otherwise) or add normalization.",
                steps=steps[:50], measured={"grad_over_weight": size, **measured_all}))
        else:
            findings.append(Finding(
                "vanishing_gradients", "warning",
                f"The gradient is only {_fmt(size)} of the size of the weights (||g||/||w|| of the whole model, "
                f"median {_when(steps)}; healthy networks stay above {_fmt(th.grad_size_low)}): the signal fades in "
                "the forward and the backward pass together, as when every weight is initialized too small. "
                "Check the initialization (He for ReLU, 1/sqrt(fan_in) otherwise) or add normalization.",
                steps=steps[:50], measured={"grad_over_weight": size, **measured_all}))
    if _grad_clip(view):
        return findings  # post-clip norms cannot grow past the clipping threshold
    growth = norm_growth(view)
    if growth is not None and growth[0] > th.global_growth:
        ratio, early, late, steps = growth
        findings.append(Finding(
            "growing_gradient_norm", "warning",
            f"The model's gradient norm grew {_fmt(ratio)} times during training (median of the first quarter "
            f"{_fmt(early)}, last quarter {_fmt(late)}, {_when(steps)}): training is diverging; lower the learning "
            "rate or clip gradients.", steps=[int(steps[0]), int(steps[-1])],
            measured={"early_median": early, "late_median": late}))
    return findings


@dataclass
class _TimeGain:
    """The gradient through time of one recurrent module in one direction (see :func:`time_gains`)."""

    module: str
    reverse: bool  #: the reverse direction of a bidirectional module
    gain: float  #: the gain per time step going back, median over the window
    steps: int  #: the sequence length it spans (median over the window)
    per_step: pd.Series  #: the gain at each recorded step

    @property
    def log10_total(self) -> float:
        """log10 of how many times the gradient grows over the whole sequence (negative: shrinks)."""
        return self.steps * math.log10(self.gain) if self.gain > 0 else -math.inf


def time_gains(view: RunView) -> list[_TimeGain]:
    """The gain per time step of the gradient through time of every recurrent module
    (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) and direction, in runs recorded with
    ``through_time=True`` (the check-up records it): the gradient of a fixed projection of
    the last step's output, taken back through all ``T`` steps to the initial state, over
    the projection, to the ``1/T`` (:func:`gradsight.instrument.recurrent.time_gains`).
    Where the loss reads the outputs does not enter: a language model's loss at every step
    and a classifier's at the last state get the same measure (the output gradient
    ``out_grad_norm_t<t>`` holds the loss's direct term at each step, not what crosses
    time). Median over the window; modules whose gain is missing there are left out."""
    lengths = _table(view, Level.MODULE, TIME_STEPS_STAT)
    # a module with fp16 weights runs the probe in fp16, where a gradient crossing many steps
    # can flush to exactly 0: a zero gain there is unknown, not vanishing
    zero_unknown = training_format(view) == "fp16"
    found = []
    for stat, reverse in ((TIME_GAIN_STAT, False), (TIME_GAIN_REVERSE_STAT, True)):
        table = _table(view, Level.MODULE, stat)
        for module in table.columns:
            series = table[module].astype(float)
            series = series[np.isfinite(series) & ~(zero_unknown & (series == 0))]
            window = _window(view, series.to_frame()).iloc[:, 0]
            steps = _window(view, lengths[[module]]).iloc[:, 0] if module in lengths.columns else pd.Series(dtype=float)
            if window.empty or steps.dropna().empty:
                continue
            found.append(_TimeGain(module, reverse, float(window.median()), int(steps.median()), series))
    return found


def _saturation_shares(view: RunView) -> tuple[pd.Series, pd.Series, list[int], int] | None:
    """``act_saturated`` of the hidden bounded activations (``meta.saturation_links`` with a
    ``feeds``): per layer before one, its first recorded value and its median over the window,
    the window's steps and the first step that holds the statistic; None where the run holds none."""
    def compute() -> tuple[pd.Series, pd.Series, list[int], int] | None:
        links = view.meta.get("saturation_links") or {}
        table = _table(view, Level.MODULE, "act_saturated")
        cols = [c for c in table.columns if (links.get(c) or {}).get("feeds")]
        if not cols:
            return None
        table = table[cols].dropna(how="all")
        window = _window(view, table)
        return table.bfill().iloc[0], window.median(), [int(s) for s in window.index], int(table.index[0])
    return _memo(view, ("saturation_shares",), compute)


def saturated_layers(view: RunView) -> tuple[dict[str, float], list[int]]:
    """Hidden bounded activations saturated from the start: for every layer whose output a tanh,
    sigmoid, softsign, hardtanh or hardsigmoid module takes as it is, where that activation's
    output is in turn a layer's input (``meta.saturation_links``: not an output activation, not
    a gate that multiplies), the share of the activation's outputs where its slope is under 2 %
    of its largest (``act_saturated``), the smaller of its value at the first recorded step and
    its median over the window; and the window's steps. Saturation that training brings about
    later is not counted here (:func:`_late_saturation` tells it): a generator's output tanh
    watched together with its discriminator saturates where its data sit at -1 and 1, by
    design. Runs recorded without activations, or before the statistic existed, give nothing."""
    shares = _saturation_shares(view)
    if shares is None:
        return {}, []
    first, medians, steps, _start = shares
    judged = {c: min(float(first[c]), float(medians[c])) for c in first.index}
    return {c: v for c, v in judged.items() if math.isfinite(v)}, steps


def _late_saturation(view: RunView, th: Thresholds) -> list[Finding]:
    """``saturated_units`` (info): hidden bounded activations not saturated at the first recorded
    step whose window median is above ``saturated``: training drove them there."""
    shares = _saturation_shares(view)
    if shares is None:
        return []
    first, medians, steps, start = shares
    late = {c: float(medians[c]) for c in first.index if medians[c] > th.saturated and first[c] <= th.saturated}
    if not late:
        return []
    links = view.meta["saturation_links"]
    worst = max(late, key=late.__getitem__)
    return [Finding(
        "saturated_units", "info",
        f"{late[worst]:.0%} of the outputs of the {links[worst]['type']} '{display_name(links[worst]['activation'])}' "
        f"(after '{display_name(worst)}') sit where its slope is under 2 % of its largest {_when(steps)} "
        f"(median; {float(first[worst]):.0%} at step {start}; {len(late)} hidden bounded activation(s) "
        "saturated by training). Those units pass almost no gradient back. Where the targets sit at the "
        "activation's bounds (a generator's output) that is by design; otherwise a learning rate too high may be "
        "driving their inputs far from 0.",
        layers=[links[c]["activation"] for c in late] + list(late), steps=steps[:50],
        measured={"saturated_frac": late[worst], "saturated_frac_first": float(first[worst])})]


def saturation(view: RunView, th: Thresholds) -> list[Finding]:
    """``vanishing_gradients`` through saturated units: a hidden bounded activation with more
    than ``saturated`` of its outputs where its slope is under 2 % of its largest, from the
    first recorded step on (:func:`saturated_layers`). Glorot & Bengio (2010) trace the failure
    of deep tanh and sigmoid networks to such saturation; in the chaotic phase (weights far too
    large, Poole et al. 2016) the depth profile of the gradient can look flat or even grow while
    most units pass nothing back, so no depth ratio shows it."""
    shares, steps = saturated_layers(view)
    sick = {layer: v for layer, v in shares.items() if v > th.saturated}
    if not sick:
        return _late_saturation(view, th)
    links = view.meta.get("saturation_links") or {}
    order = {n: i for i, n in enumerate(view.layer_order)}
    layers = sorted(sick, key=lambda n: order.get(n, len(order)))
    worst = max(layers, key=sick.__getitem__)
    link = links[worst]
    shown = few([f"'{display_name(links[n]['activation'])}' {sick[n]:.0%}" for n in layers], 4)
    first = _saturation_shares(view)[3]
    return [Finding(
        "vanishing_gradients", "warning",
        f"Saturated activations: {sick[worst]:.0%} of the outputs of the {link['type']} "
        f"'{display_name(link['activation'])}' (after '{display_name(worst)}') sit where its slope is under 2 % of "
        f"its largest (|y| > 0.99 for a tanh), from step {first} and still {_when(steps)} (median); "
        f"{len(layers)} of the network's {len(shares)} hidden bounded activations are above {th.saturated:.0%} "
        f"({shown}). Those units pass almost no gradient back, so the layers before them learn only through the "
        "few left, however the layers' total gradients compare. Their inputs are far from 0: initialize the "
        "weights smaller (Xavier/Glorot, gain 5/3 for tanh), normalize the inputs, or put a normalization layer "
        "before the activation.",
        layers=[links[n]["activation"] for n in layers] + layers, steps=steps[:50],
        measured={"saturated_frac": sick[worst], "saturated_activations": float(len(layers))})]


def through_time(view: RunView, th: Thresholds) -> list[Finding]:
    """``vanishing_gradients`` / ``exploding_gradients`` through time in recurrent modules:
    the gain per step (:func:`time_gains`) below ``time_gain_low``, or a growth over the
    sequence above ``time_explode``. A recurrent module's weights are shared across time, so
    its parameter gradients have no depth profile to compare; the gradient through time
    is its depth (Bengio et al. 1994; Pascanu et al. 2013)."""
    findings = []
    for low in sorted((g for g in time_gains(view) if g.gain < th.time_gain_low), key=lambda g: g.gain)[:1]:
        where, back = _time_words(low)
        findings.append(Finding(
            "vanishing_gradients", "warning",
            f"The gradient through time vanishes in '{display_name(low.module)}'{where}: going back from "
            f"{back} it shrinks to {_fmt(low.gain)} of itself at every step, {_fmt(10 ** low.log10_total)} over "
            f"the {low.steps} steps (median {_when(_window(view, low.per_step.to_frame()).index)}; healthy LSTMs, "
            f"GRUs and RNNs keep at least {_fmt(th.time_gain_low)} per step), so nothing learned depends on more "
            "than a few steps back. Initialize the recurrent weights orthogonally or at the default scale, use "
            "an LSTM or GRU instead of a plain tanh RNN, or shorten the sequences (truncated backpropagation).",
            layers=[low.module], steps=[int(s) for s in _window(view, low.per_step.to_frame()).index][:50],
            measured={"gain_per_step": low.gain, "time_steps": float(low.steps),
                      "log10_over_sequence": low.log10_total}))
    explode = math.log10(th.time_explode)
    for high in sorted((g for g in time_gains(view) if g.log10_total > explode),
                       key=lambda g: g.log10_total, reverse=True)[:1]:
        where, back = _time_words(high)
        findings.append(Finding(
            "exploding_gradients", "error" if high.log10_total > math.log10(th.explode_ratio_error) else "warning",
            f"The gradient through time explodes in '{display_name(high.module)}'{where}: going back from "
            f"{back} it grows {_fmt(high.gain)} times at every step, {_fmt(10 ** high.log10_total)} times over the "
            f"{high.steps} steps (median {_when(_window(view, high.per_step.to_frame()).index)}; healthy recurrent "
            "networks shrink it at every step), as when the recurrent weights' largest singular value is well "
            "above 1 (Pascanu et al. 2013). Clip the gradient norm (torch.nn.utils.clip_grad_norm_), initialize "
            "the recurrent weights orthogonally or smaller, or shorten the truncation.",
            layers=[high.module], steps=[int(s) for s in _window(view, high.per_step.to_frame()).index][:50],
            measured={"gain_per_step": high.gain, "time_steps": float(high.steps),
                      "log10_over_sequence": high.log10_total}))
    return findings


def _time_words(g: _TimeGain) -> tuple[str, str]:
    """("(reverse direction)" or "", where the gradient starts) for a message."""
    if g.reverse:
        return " (reverse direction)", "its first output to its initial state at the sequence's end"
    return "", "its last output to its initial state"


#: A gradient element at most this large squares to 0 in float32 (the square root of its
#: smallest normal number, 1.18e-38): Adam's second moment of it stays 0, and no optimizer
#: step built from it moves a weight of ordinary size. A layer whose every element is this
#: small gets no gradient it can use, exactly zero or not.
FLOAT32_SQUARE_FLOOR = math.sqrt(float(np.finfo(np.float32).tiny))


def cut_prefix(view: RunView) -> tuple[list[str], str | None]:
    """The layers at the start of the network (in forward order) whose gradient was exactly
    zero, or no element above :data:`FLOAT32_SQUARE_FLOOR`, at every step of the window,
    with the first layer after them; ``([], None)`` when the first layer gets a gradient,
    or when no later layer does (the whole model's gradient is zero: judged as underflow or
    a cut-off loss elsewhere)."""
    gn = _table(view, Level.LAYER, "grad_abs_max")
    if gn.empty:  # a store without the largest element: exactly zero norms only
        gn = _table(view, Level.LAYER, "grad_norm")
    if gn.empty or len(gn) < 2:
        return [], None
    window = _window(view, gn)
    window = window.loc[~window.index.isin(list(_zero_gradient_steps(view)))]
    if window.empty:
        return [], None
    order = [n for n in view.layer_order if n in window.columns and view.role(n) != Role.EMBEDDING]
    prefix = []
    for layer in order:
        values = window[layer].to_numpy(dtype=float)
        if not (np.isfinite(values).all() and (values <= FLOAT32_SQUARE_FLOOR).all()):
            return (prefix, layer) if len(prefix) >= 2 else ([], None)
        prefix.append(layer)
    return [], None


def gradient_cut(view: RunView, th: Thresholds) -> list[Finding]:
    """``vanishing_gradients`` (error) when the gradient stops dead: the first layers of the
    network got exactly zero gradient at every step of the window while later layers got
    one (:func:`cut_prefix`). Not when the layer at the cut is stuck (``dead_units`` names
    that), nor in a low-precision run that underflows (``amp_underflow``)."""
    prefix, live = cut_prefix(view)
    if not prefix or precision_headroom(view, th):
        return []
    wn = _window(view, _table(view, Level.LAYER, "weight_norm"))
    stuck_zero = [c for c in prefix if c in wn.columns and (wn[c] == 0).all()]
    largest_of = _window(view, _table(view, Level.LAYER, "grad_abs_max")).reindex(columns=prefix).max()
    # a layer stuck far from zero with exactly zero gradient cuts the path: dead_units says so
    # (one with a gradient too small to use is no dead unit: its output barely varies because
    # its input carries almost nothing, and the cause lies before it)
    if not stuck_zero and any(_saturation(view, layer) > th.dead_saturation and not largest_of.get(layer, 0) > 0
                              for layer in prefix[-2:]):
        return []
    steps = [int(s) for s in _window(view, _table(view, Level.LAYER, "grad_norm")).index]
    largest = float(largest_of.max()) if largest_of.notna().any() else 0.0
    got = ("exactly zero gradient" if largest == 0 else
           f"no gradient an optimizer can use (no element above {_fmt(largest)}, whose square float32 "
           "holds as 0: Adam's second moment stays 0, and no step moves a weight)")
    others = f" (and {len(stuck_zero) - 1} layer(s) before it)" if len(stuck_zero) > 1 else ""
    why = (f"'{display_name(stuck_zero[-1])}'{others} still holds exactly zero weights: a scale initialized at zero "
           "that no gradient reaches, because nothing is added around it and its block passes nothing back. "
           if stuck_zero else "")
    return [Finding(
        "vanishing_gradients", "error",
        f"Gradients vanish completely toward the input: the first {len(prefix)} of {len(view.layer_order)} layers "
        f"(from '{display_name(prefix[0])}' to '{display_name(prefix[-1])}') got {got} "
        f"{_when(steps)}, while '{display_name(live)}' and the layers after it got one. {why}"
        "Something between them multiplies the backward signal by zero or by a factor so small it underflows: "
        "a block without its skip connection around a zero- or near-zero-initialized scale (zero-init BatchNorm, "
        "LayerScale), or a constant output. Check that each residual block adds its input back.",
        layers=[prefix[-1], live, *stuck_zero[-3:]], steps=steps[:50],
        measured={"layers_without_gradient": float(len(prefix)), "layers": float(len(view.layer_order)),
                  "largest_element": largest})]


#: The number of updates :func:`weight_growth` scales a growth to.
GROWTH_SPAN = 20


def weight_growth(view: RunView, th: Thresholds) -> pd.Series:
    """Per layer, ``log10`` of how many times the norm of its weights grew from the view's
    first step to its last, scaled to :data:`GROWTH_SPAN` updates (a growth of ``g`` over
    ``n`` updates counts as ``g ** (20 / n)``): how fast the updates carry the weights away
    from their initialization. The largest of the layer's tensors, leaving out shifts
    (biases, betas: they start at zero), small-initialized tensors (any update is large
    next to them), embeddings, and scale-invariant layers (a layer feeding a norm layer:
    its norm grows under Adam without changing the function; a norm layer's gain that the
    next norm layer normalizes away, :func:`_normalized_gains`: DLA-60's and Inception-v3's
    BatchNorm scales grow 8.5x and 3.2x in their first 20 updates, from a loss that starts
    at 17 and 6.3, while their weighted layers stay within 1.0x; every learning rate x100
    fault grows a weighted layer 4.3-35x)."""
    wn = _table(view, Level.PARAM, "weight_norm")
    if wn.empty or len(wn) < 2:
        return pd.Series(dtype=float)
    updates = int(wn.index[-1]) - int(wn.index[0])
    if updates <= 0:
        return pd.Series(dtype=float)
    params = view.params.set_index("name")
    rms = _initial_rms(view, Level.PARAM)
    small = set(rms.index[rms <= th.small_init])
    skip_layers = _normalized(view) | _normalized_gains(view)
    growth: dict[str, float] = {}
    for name in wn.columns:
        layer = params["layer"].get(name)
        if (layer is None or name in small or _is_shift(name) or layer in skip_layers
                or view.role(layer) == Role.EMBEDDING):
            continue
        first, last = float(wn[name].iloc[0]), float(wn[name].iloc[-1])
        if first > 0 and last > 0 and math.isfinite(first) and math.isfinite(last):
            g = math.log10(last / first) * GROWTH_SPAN / updates
            growth[layer] = max(growth.get(layer, -math.inf), g)
    return pd.Series(growth, dtype=float)


def norm_growth(view: RunView) -> tuple[float, float, float, list[int]] | None:
    """The model's gradient norm, median of the last quarter of the steps over the first
    quarter's (with both medians and the steps); None with fewer than 8 steps."""
    total = _model_series(view, "grad_norm")
    if len(total) < 8:
        return None
    q = max(len(total) // 4, 2)
    early, late = float(total.iloc[:q].median()), float(total.iloc[-q:].median())
    if not early > 0 or not math.isfinite(late):
        return None
    return late / early, early, late, [int(s) for s in total.index]


def clipped_gradients(view: RunView, th: Thresholds) -> list[Finding]:
    """``clipped_gradients`` (info): the run recorded gradients after clipping."""
    if not _grad_clip(view):
        return []
    max_norm = _grad_clip(view).get("max_norm")
    try:
        max_norm = float(max_norm)
    except (TypeError, ValueError):
        max_norm = math.nan
    at = f" at max_norm={_fmt(max_norm)}" if math.isfinite(max_norm) else ""
    return [Finding(
        "clipped_gradients", "info",
        f"The recorded gradients are after clipping{at}: the growth of the gradient "
        "norm over time cannot be judged (growing_gradient_norm was not checked); ratios between layers are "
        "unaffected (clipping scales every layer by one factor). Record before clipping to see the raw norms.",
        measured={"max_norm": max_norm} if math.isfinite(max_norm) else {})]



def _stream_allowance(stream_rms: pd.DataFrame, branch_sq: pd.DataFrame, chain: list[str]) -> pd.Series | float:
    """``log10`` of the growth of the residual stream's RMS along ``chain`` that blocks adding
    branches of constant scale allow: ``sqrt(blocks)``, or, where the blocks' branch second
    moments (:func:`_branch_second_moment`) are recorded, what ``blocks - 1`` more branches of
    the first block's add to the first block's stream (``sqrt(1 + (n - 1) b_1 / s_1^2)``), if
    that is more. A stream that starts far below its branches' scale (a pre-LN transformer
    after small convolutions: MobileViT's stream starts at an RMS of 8e-4 and its branches
    add 5e-3 of variance each) grows by hundreds without anything multiplying it; weights too
    large multiply the branches block after block, and the first branch's scale does not
    allow for that."""
    base = 0.5 * math.log10(len(chain))
    if len(chain) < 2 or chain[0] not in branch_sq.columns:
        return base
    first_sq = stream_rms[chain[0]].astype(float) ** 2
    b1 = branch_sq[chain[0]].reindex(first_sq.index).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        allowed = 0.5 * np.log10(1 + (len(chain) - 1) * b1 / first_sq)
    return allowed.where(allowed > base, base).fillna(base)


def _branch_second_moment(view: RunView) -> pd.DataFrame:
    """Per step and block, the mean square of the branch's output, as the stream's
    ``act_rms`` squared counts it: ``branch_var + branch_mean_sq`` (the variance within each
    channel and the channels' squared means). Runs recorded before ``branch_mean_sq`` give
    the variance alone, which leaves out what a branch's per-channel mean adds (the biases
    of MobileViTV2's last convolutions: its stream grew 2.9e5x "beyond" the variance)."""
    var = _table(view, Level.BLOCK, "branch_var")
    mean_sq = _table(view, Level.BLOCK, "branch_mean_sq")
    return var if mean_sq.empty else var + mean_sq.reindex_like(var).fillna(0.0)


#: A norm layer whose output RMS is below this fraction of its gain's RMS (and of its peers' in
#: the other instances) normalizes an input whose variance is below a third of its eps:
#: ``g * sqrt(v / (v + eps)) < g / 2`` exactly when ``v < eps / 3``.
EPS_BOUND_OUTPUT = 0.5


def eps_bound_instances(view: RunView, acts: pd.DataFrame) -> set[str]:
    """Instances of repeated blocks whose norm layer's output is held down by the layer's
    eps, not set by its input (median over the recorded steps): a stream that starts far
    below 1 (MobileViT's first transformer layer after its convolutions: RMS 8e-4, a
    LayerNorm output of 0.12-0.41 where its gain and its peers in the next layers give 1).
    Everything after such a norm in its block runs at a scale that eps sets, so comparing
    the block with the next ones measures eps, not growth; the forward profile leaves these
    instances out. Norm layers whose peers are held down alike (padding zeros in every
    window, TinyViT's 0.286) compare like with like and are kept."""
    if acts.empty:
        return set()
    norms = [c for c in acts.columns if view.role(c) == Role.NORM]
    if not norms:
        return set()
    gains = _initial_rms(view, Level.PARAM)
    gain_of: dict[str, float] = {}
    for layer, name in zip(view.params["layer"], view.params["name"]):
        if name.rsplit(".", 1)[-1] == "weight" and name in gains.index:
            gain_of.setdefault(layer, float(gains[name]))
    medians = acts[norms].median()
    bound = set()
    for chain, _rel, members in alike_pairs(view, norms):
        peers = float(medians[[n for _, n in members]].median())
        for idx, n in members:
            out, gain = float(medians[n]), gain_of.get(n, math.nan)
            if out < EPS_BOUND_OUTPUT * gain and out < EPS_BOUND_OUTPUT * peers:
                bound.add(chain.instances[idx])
    return bound


def _outside(view: RunView, names, instances: set[str]) -> list[str]:
    """``names`` less those inside one of these ``instances`` of repeated blocks."""
    if not instances:
        return list(names)
    where = chains_of(view)
    return [n for n in names if n not in where or where[n][0].instances[where[n][1]] not in instances]


def forward_growth(view: RunView) -> tuple[float, float, tuple[str, str], list[int]]:
    """How the forward signal changes along depth, like with like, as ``log10`` (median
    over the steps): (growth of each module's output RMS toward the output, compared with
    itself in the next repeated block; growth of the residual stream beyond what blocks
    adding branches of constant mean square allow (:func:`_stream_allowance`), summed over the
    chains of blocks), the instances at the ends, and the steps. NaN where nothing
    repeats."""
    acts = _table(view, Level.MODULE, "act_rms")
    steps: list[int] = [int(s) for s in acts.index] if not acts.empty else []
    layer = math.nan
    ends: tuple[str, str] = ("", "")
    bound = eps_bound_instances(view, acts)
    if not acts.empty:
        modules = acts[_outside(view, [c for c in acts.columns if c not in view.blocks], bound)]
        found = _depth(view, "forward", "output RMS", modules)
        if found is not None:
            layer, ends = -found.median, found.ends
    stream = math.nan
    blocks = _table(view, Level.BLOCK, "act_rms")
    if not blocks.empty:
        branch_sq = _branch_second_moment(view)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log10(blocks.where(blocks > 0))
        excess = []
        for chain in block_chains(view, _outside(view, blocks.columns, bound)):
            excess.append(logs[chain[-1]] - logs[chain[0]] - _stream_allowance(blocks, branch_sq, chain))
            if not ends[0]:
                ends = (chain[0], chain[-1])
        if excess:
            total = pd.concat(excess, axis=1).sum(axis=1, min_count=1).dropna()
            stream = float(total.median()) if len(total) else math.nan
            steps = steps or [int(s) for s in blocks.index]
    return layer, stream, ends, steps


def initial_logits(view: RunView, th: Thresholds) -> tuple[str, float] | None:
    """The last layer (the head) and the RMS of its output at the first recorded step: the
    scale of the logits at initialization; None without activation statistics, or when the
    head was initialized small (a zero-initialized head starts at 0 by design)."""
    acts = _table(view, Level.MODULE, "act_rms")
    heads = [n for n in view.layer_order if view.role(n) == Role.HEAD]
    if acts.empty or not heads or heads[-1] not in acts.columns or heads[-1] in small_initialized(view, th):
        return None
    first = acts[heads[-1]].dropna()
    return (heads[-1], float(first.iloc[0])) if len(first) else None


def forward_signal(view: RunView, th: Thresholds) -> list[Finding]:
    """``exploding_forward`` / ``vanishing_forward``: the output RMS along depth, like with
    like (:func:`forward_growth`); and the logits' scale at initialization
    (:func:`initial_logits`) above ``logit_saturation``, which depth ratios miss when the
    network has no repeated layers to compare."""
    findings = _forward_along_depth(view, th)
    logits = initial_logits(view, th)
    if not findings and logits is not None and logits[1] > th.logit_saturation:
        head, rms = logits
        findings.append(Finding(
            "exploding_forward", "warning",
            f"The network's outputs are far too large at initialization: '{display_name(head)}' returns values of "
            f"RMS {_fmt(rms)} at step {int(view.steps[0])} (healthy networks start below 10; above "
            f"{_fmt(th.logit_saturation)} a softmax is saturated, the loss far above chance, and the gradient of most "
            "outputs exactly zero). The weights are initialized too large for the depth: use He (ReLU) or "
            "1/sqrt(fan_in) initialization, normalization, or scale the last layer down.",
            layers=[head], steps=[int(view.steps[0])], measured={"initial_output_rms": rms}))
    return findings


def _forward_along_depth(view: RunView, th: Thresholds) -> list[Finding]:
    layer, stream, ends, steps = forward_growth(view)
    # the stream is judged against its own allowance: as a log10 beyond log10(stream_explode)
    stream_over = stream - math.log10(th.stream_explode) + math.log10(th.forward_explode)
    worst = max((v for v in (layer, stream_over) if math.isfinite(v)), default=math.nan)
    if not math.isfinite(worst) and not math.isfinite(layer):
        return []
    first, last = (display_name(n) for n in ends)
    measured = {"layer_log10_growth": layer, "stream_log10_excess": stream}
    if math.isfinite(worst) and worst > math.log10(th.forward_explode):
        # the stream's excess rests on a model of growth by additions (branches of the first
        # block's variance) that a branch's per-channel mean escapes (MobileViTV2's biases: 2.9e5x
        # "beyond" it at 50-100 steps); it caught no fault alone: a warning at most
        sev = "error" if layer > math.log10(th.forward_explode_error) else "warning"
        what = ("the RMS of each module's output grows" if worst == layer else
                "the residual stream's RMS grows, beyond what blocks adding branches of constant variance "
                "allow,")
        worst = layer if worst == layer else stream
        return [Finding(
            "exploding_forward", sev,
            f"The forward signal explodes: {what} {_fmt(10 ** worst)} times from '{first}' to '{last}' (each module "
            f"compared with itself in the next repeated block; median {_when(steps)}). Unnormalized residual "
            "networks add a branch's variance at every block, and weights initialized too large multiply the "
            "signal at every layer; use normalization, He/1/sqrt(fan_in) initialization, or scale the branches "
            "down (Fixup, SkipInit, zero-initialize each branch's last layer).",
            layers=list(ends), steps=steps[:50], measured={"last_over_first_rms": 10 ** worst, **measured})]
    if math.isfinite(layer) and layer < -math.log10(1 / th.forward_vanish):
        return [Finding(
            "vanishing_forward", "warning",
            f"The forward signal fades: the RMS of each module's output shrinks {_fmt(10 ** -layer)} times from "
            f"'{first}' to '{last}' (each module compared with itself in the next repeated block; median "
            f"{_when(steps)}). Check the initialization (He for ReLU) or add normalization.",
            layers=list(ends), steps=steps[:50], measured={"last_over_first_rms": 10 ** layer, **measured})]
    return []


def _layer_rows(view: RunView) -> dict[str, int]:
    """Rows per layer: the sum of dim 0 over its trainable tensors of >= 2 dims."""
    params = view.params
    rows: dict[str, int] = {}
    for layer, shape, trainable in zip(params["layer"], params["shape"], params["trainable"]):
        if trainable and len(shape) >= 2:
            rows[layer] = rows.get(layer, 0) + int(shape[0])
    return rows


def _cut_off_steps(view: RunView, layer: str, steps: pd.Index) -> set[int]:
    """Steps at which a later layer's weights were exactly zero (a zero-initialized head
    or branch): no gradient can reach ``layer`` through it, so its zero rows say nothing."""
    wn = _table(view, Level.LAYER, "weight_norm")
    if wn.empty or layer not in wn.columns:
        return set()
    position = {name: i for i, name in enumerate(view.layer_order)}
    later = [c for c in wn.columns if position.get(c, -1) > position.get(layer, -1)]
    if not later:
        return set()
    zero = (wn.loc[wn.index.intersection(steps), later] == 0).any(axis=1)
    return set(int(s) for s in zero.index[zero])


def _zero_gradient_steps(view: RunView) -> set[int]:
    """Steps at which the whole model's gradient was exactly zero."""
    norm = _model_series(view, "grad_norm")
    return set(int(s) for s in norm.index[norm == 0])


def dead_fractions(view: RunView) -> tuple[dict[str, float], dict[str, float], dict[str, float], int]:
    """See :func:`_dead_fractions` (computed once per view)."""
    return _memo(view, ("dead_fractions",), lambda: _dead_fractions(view))


def _dead_fractions(view: RunView) -> tuple[dict[str, float], dict[str, float], dict[str, float], int]:
    """Per layer, the share of its output rows whose gradient was exactly zero at every
    step of the window (the last half of the sampled steps): hidden layers, the head, and
    whole layers; with the window's length. Never embeddings (rows of tokens absent from a
    batch get no gradient by design), nor steps at which a later layer was all zero, nor
    steps at which the whole model's gradient was zero (underflow, judged elsewhere)."""
    dead = _table(view, Level.LAYER, "grad_dead_rows")
    if dead.empty:
        return {}, {}, {}, 0
    window = dead.index[len(dead.index) // 2:]
    window = window[~window.isin(list(_zero_gradient_steps(view)))]
    rows = _layer_rows(view)
    whole, units, outputs = {}, {}, {}
    for layer in dead.columns:
        if view.role(layer) == Role.EMBEDDING or rows.get(layer, 0) == 0:
            continue
        cut_off = _cut_off_steps(view, layer, window)
        steps = [s for s in window if s not in cut_off]
        counts = dead.loc[steps, layer].to_numpy(dtype=float)
        counts = counts[np.isfinite(counts)]
        if len(counts) == 0 or counts.min() < 1:
            continue
        frac = float(counts.min()) / rows[layer]
        if counts.min() >= rows[layer]:
            whole[layer] = frac
        elif view.role(layer) == Role.HEAD:
            outputs[layer] = frac
        else:
            units[layer] = frac
    return units, outputs, whole, len(window)


def _saturation(view: RunView, layer: str) -> float:
    """How far a layer's output sits from zero in units of its spread, ``|mean| / std``
    (median over the window; ``inf`` for a constant output, NaN without activation
    statistics). A layer whose bias pushes it far below zero has a value in the
    thousands; units silent because their input varies little (squeeze-excite layers fed
    by pooled features) stay in the tens."""
    ms, var = _table(view, Level.MODULE, "act_mean_sq"), _table(view, Level.MODULE, "act_var")
    if ms.empty or var.empty or layer not in ms.columns or layer not in var.columns:
        return math.nan
    m2, v = float(_window(view, ms[[layer]]).median().iloc[0]), float(_window(view, var[[layer]]).median().iloc[0])
    if not (math.isfinite(m2) and math.isfinite(v)):
        return math.nan
    return math.inf if v <= 0 else math.sqrt(m2 / v)  # act_mean_sq is the squared mean, not E[h^2]


def _saturated_logits(view: RunView, head: str, th: Thresholds) -> bool:
    """Whether the last layer's outputs are so large (RMS above ``logit_saturation``) that a
    softmax over them flushes some probabilities to exactly 0 in float32 (exp(-104) is below
    its smallest value): then some outputs get no gradient although the loss uses them."""
    acts = _table(view, Level.MODULE, "act_rms")
    if acts.empty or head not in acts.columns:
        return False
    return bool(_window(view, acts[[head]]).median().iloc[0] > th.logit_saturation)


#: What zero gradient rows of a recurrent layer (``nn.LSTM``, ``nn.GRU`` ...) mean: no ReLU, saturated gates.
_SATURATED_GATES = (
    " In a recurrent layer the rows are gate rows (LSTM: input, forget, cell, output; GRU: reset, update, new; "
    "the grad_norm_gate_* statistics): they get no gradient when their gates saturate (a sigmoid at exactly 0 or "
    "1, beyond about ±17 in float32) or when the cell state grows so large (|c| above about 9) that tanh(c) is "
    "exactly ±1. Clip the gradient norm (clip_grad_norm_), lower the learning rate, and check the cell state's "
    "growth (the forget gate's bias)."
)


def _recurrent(view: RunView, layer: str) -> bool:
    return is_recurrent_type(view.module_type.get(layer, ""))


def dead_units(view: RunView, th: Thresholds) -> list[Finding]:
    """``dead_units``: layers with output rows (channels, units) whose gradient is exactly
    zero at every step of the window (:func:`dead_fractions`).

    A layer none of whose rows gets a gradient is a warning when its output sits far from
    zero (:func:`_saturation` above ``dead_saturation``: a bias or an input driving its
    units deep into the flat part of the activation) or is not recorded; some silent rows
    of a layer are an ``info`` (in the population, stock squeeze-excite layers and heads
    after pooling leave up to all but a few of their rows silent on random data); unused
    outputs of the last layer are a warning once ``dead_output_steps`` steps show them."""
    if precision_headroom(view, th):
        return []  # zero gradients in a low-precision run that underflows: the cause is named there
    units, outputs, whole, n_window = dead_fractions(view)
    idle = [b.split("[", 1)[0] for b in idle_blocks(view, th).index]
    # the layers of a switched-off branch get no gradient: idle_branch names the cause
    whole = {k: v for k, v in whole.items() if not any(k.startswith(b + ".") for b in idle)}
    saturation = {k: _saturation(view, k) for k in whole}
    # without activation statistics nothing tells stuck units from silent ones: a whole layer
    # without gradient is a warning; with them, only one whose output sits far from zero
    recorded = not _table(view, Level.MODULE, "act_mean_sq").empty
    stuck = {k: v for k, v in whole.items() if saturation[k] > th.dead_saturation
             or (not recorded and math.isnan(saturation[k]))}
    units = {k: v for k, v in units.items() if v >= th.dead_frac and n_window >= th.dead_min_steps}
    # silent in every row, but not pushed far from zero: what they compute does not reach the loss
    unreached = [k for k in whole if k not in stuck]
    units.update({k: whole[k] for k in unreached})
    outputs = {k: v for k, v in outputs.items() if v >= th.dead_frac and n_window >= th.dead_output_steps
               and not _saturated_logits(view, k, th)}
    findings = []
    if stuck:
        first = next(iter(stuck))
        findings.append(Finding(
            "dead_units", "warning",
            f"{len(stuck)} layer(s) got no gradient in any weight at every one of the last {n_window} recorded "
            f"step(s) (first: '{display_name(first)}'"
            + (f", whose output sits {_fmt(saturation[first])} standard deviations from zero" if math.isfinite(
                saturation[first]) else "") + "): nothing reaches them, because their units are stuck (a bias or an "
            "input driving them far into the flat part of the activation), their input is all zero (the layer before "
            "is dead), or a later part passes no gradient back (a detach(), a layer stuck at zero). Check the biases "
            "and initialization of these layers and the ones after them."
            + (_SATURATED_GATES if _recurrent(view, first) else ""),
            layers=list(stuck), measured={**stuck, **{f"saturation[{k}]": v for k, v in saturation.items()
                                                     if k in stuck and math.isfinite(v)}}))
    if outputs:
        (layer, frac), = list(outputs.items())[:1]
        findings.append(Finding(
            "dead_units", "warning",
            f"{_fmt(100 * frac)}% of the outputs of the last layer '{display_name(layer)}' got no gradient at every "
            f"one of the last {n_window} recorded step(s): the loss never uses them (more classes than the targets "
            "hold, outputs sliced away), or an activation after the last layer (a ReLU on the logits, as in "
            "SqueezeNet) is stuck at zero for them. Shrink the layer to the outputs used, check the loss, or remove "
            "the activation after the last layer.",
            layers=list(outputs), measured=outputs))
    if units:
        partly = {k: v for k, v in units.items() if k not in unreached}
        parts = []
        if partly:
            worst = max(partly, key=partly.get)
            parts.append(
                f"{len(partly)} layer(s) have output units (rows, channels) whose gradient was exactly zero at every "
                f"one of the last {n_window} recorded step(s) (up to {_fmt(100 * partly[worst])}% of "
                f"'{display_name(worst)}'): "
                + (_SATURATED_GATES.lstrip() if _recurrent(view, worst) else
                   "their activation is zero for every input seen. Normal for layers fed by pooled features "
                   "(squeeze-excite, a head after global pooling) on random data; if the share grows during "
                   "training, lower the learning rate or use LeakyReLU/GELU."))
        if unreached:
            parts.append(
                f"{len(unreached)} layer(s) got no gradient in any row at every one of the last {n_window} recorded "
                f"step(s) (first: '{display_name(unreached[0])}') while their output is not stuck: what they compute "
                "never reaches the loss (a branch or gate multiplied by zero, a path computed but not used at this "
                "input size). Check that their output is used.")
        findings.append(Finding(
            "silent_units", "info", " ".join(parts),
            layers=sorted(units, key=units.get, reverse=True), measured=units))
    return findings


def missing_gradients(view: RunView, th: Thresholds) -> list[Finding]:
    missing = _table(view, Level.PARAM, "grad_missing")
    if missing.empty:
        return []
    n_steps = len(view.steps)
    counts = missing.fillna(0).sum()
    never = counts[counts >= n_steps]
    if never.empty:
        return []
    # a module none of whose parameters gets a gradient is unused or cut off; a parameter of a
    # module whose others do (a mask token, a special embedding) serves a mode not run here
    layer_of = dict(zip(view.params["name"], view.params["layer"]))
    # a bare parameter (its own layer: a mask token, a class token) belongs to its parent
    # module, which is used when any parameter under it gets a gradient (XLNet's mask_emb sits
    # on the model whose children all run)
    trainable = view.params["name"][view.params["trainable"]]
    owner = {n: (n.rpartition(".")[0] if layer_of.get(n) == n else layer_of.get(n)) for n in trainable}
    receiving = [n for n in trainable if n not in never.index]
    got = {owner[n] for n in receiving}

    def used(name: str) -> bool:
        if owner.get(name) in got:
            return True
        if layer_of.get(name) != name:
            return False
        parent = owner[name]
        return any(not parent or r.startswith(parent + ".") for r in receiving)

    partial = [n for n in never.index if used(n)]
    whole = [n for n in never.index if n not in partial]
    findings = []
    if whole:
        modules = list(dict.fromkeys(owner.get(n) or n for n in whole))
        named = few([f"'{display_name(m)}'" for m in modules], 3)
        findings.append(Finding(
            "no_gradient", "warning",
            f"{len(whole)} trainable parameter(s) never received a gradient in {n_steps} recorded steps, nor did any "
            f"other parameter of their modules ({named}): those modules are unused in the forward pass (a head or "
            "a mode this training never runs) or cut off by detach()/no_grad; freeze them (requires_grad=False), "
            "or fix the graph or the inputs that should use them.", layers=whole,
            measured={"parameters": float(len(whole))}))
    if partial:
        findings.append(Finding(
            "no_gradient", "info",
            f"{len(partial)} trainable parameter(s) never received a gradient in {n_steps} recorded steps while the "
            "rest of their modules did (e.g. a mask token or a special embedding used only in another mode): "
            "expected if that mode never runs in this training, else check the inputs that should use them.",
            layers=partial, measured={"parameters": float(len(partial))}))
    return findings



def _judged_updates(view: RunView, ur: pd.DataFrame, warmup: int, th: Thresholds) -> pd.DataFrame:
    """``ur`` with the updates that cannot be judged left out (NaN): non-finite ones; those
    of a step at which the layer's gradient was all zero (what moved it, if anything, was
    momentum or weight decay: with a zero-initialized head, every layer before it at the
    first step); and for a tensor that started at or near zero (an infinite ratio, a zero
    weight norm, or a small-initialized scale: :func:`small_initialized`) the first
    ``warmup`` updates after the last step at which it was zero or since the start."""
    ur = ur.replace([np.inf, -np.inf], np.nan).copy()
    raw = _table(view, Level.LAYER, "update_ratio")
    wn = _table(view, Level.LAYER, "weight_norm")
    gn = _table(view, Level.LAYER, "grad_norm").reindex(index=ur.index, columns=ur.columns)
    ur = ur.mask(gn == 0)
    steps = ur.index.to_numpy()
    small = small_initialized(view, th)
    first = int(view.steps[0]) if view.steps else 0
    for layer in ur.columns:
        zero = {first} if layer in small else set()
        if layer in raw.columns:
            zero |= set(raw.index[np.isposinf(raw[layer].to_numpy(dtype=float))])
        if layer in wn.columns:
            zero |= set(wn.index[wn[layer].to_numpy(dtype=float) == 0])
        if zero:
            ur.loc[steps <= max(zero) + warmup, layer] = np.nan
    return ur


def update_sizes(view: RunView, th: Thresholds) -> tuple[pd.Series, pd.Series]:
    """Per layer, the median ``||dw||/||w||`` over the judged updates of the window (the
    last half of the steps with one): (those that can be too high: not scale-invariant
    layers, not tensors that started near zero in their first updates; those that can be
    too low: not layers whose gradient is below the optimizer's epsilon, behind a small
    scale by design or cut off)."""
    ur = _table(view, Level.LAYER, "update_ratio")
    if ur.empty:
        return pd.Series(dtype=float), pd.Series(dtype=float)
    warmup = math.ceil(1 / th.update_high**2) if th.update_high > 0 else 0
    judged = _judged_updates(view, ur, warmup, th)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = _window(view, judged).median().dropna()
    high = med[~med.index.isin(list(_normalized(view)))]
    rms = _table(view, Level.LAYER, "grad_rms")
    tiny = set()
    if not rms.empty:
        grad = _window(view, rms).median()
        tiny = set(grad.index[~(grad > th.grad_floor)])
    low = med[~med.index.isin(list(tiny | _scaled_by_small(view, th)))]
    return high, low


def network_update(view: RunView, low: pd.Series) -> tuple[float, int]:
    """The update ratio of the network's median layer (and how many layers it is over):
    among the convolutions, linear maps and the head where the network has any, so that
    parameter-light layers (norm scales and shifts, an activation's learned scalars) do not
    decide it. Those start at 1 or 0 and move by about lr per Adam step whatever the
    network learns: CAFormer's 90 of them (StarReLU scalars, norms) put its median at 7e-6
    under AdamW 1e-4, its 84 weighted layers' at 1.7e-4."""
    weighted = _weighted_or_head(view, low.index)
    judged = low[weighted] if weighted else low
    return (float(judged.median()) if len(judged) else math.nan), len(judged)


def _updates_in_window(view: RunView) -> int:
    """How many recorded updates the window holds for the median layer (each layer's own: with
    rotating snapshots a layer's ``update_ratio`` is at some of the measured steps only)."""
    window = _window(view, _table(view, Level.LAYER, "update_ratio"))
    counts = window.notna().sum()
    counts = counts[counts > 0]
    return int(counts.median()) if len(counts) else 0


def _too_few_updates(view: RunView, n: int, th: Thresholds) -> list[Finding]:
    """``update_ratio_unjudged`` (info) when a run recorded update ratios and the window spans
    at least ``min_updates`` recorded steps but holds fewer updates than that for the median
    layer: the update rules were left out because of how sparsely the ratios were recorded
    (``update_ratio=k``, rotating snapshots), not because the run is short. Nothing when no
    ratio was recorded (no ``optimizer=``) or the run is too short for any verdict."""
    ur = _table(view, Level.LAYER, "update_ratio")
    spanned = len(view.steps) - len(view.steps) // 2 if len(view.steps) > 1 else len(view.steps)
    if ur.empty or not ur.notna().to_numpy().any() or spanned < th.min_updates:
        return []
    return [Finding(
        "update_ratio_unjudged", "info",
        f"The update sizes were not judged (update_ratio_high, its weight-growth check, update_ratio_low): the last "
        f"{spanned} recorded steps hold {n} update ratio(s) for the median layer, under the {th.min_updates} these "
        "rules need, because update ratios were recorded at some steps only (gs.watch's default update_ratio=10, "
        "and for weights over 16 MiB a chunk of layers at a time). Record them at every step "
        "(update_ratio=True, or update_ratio=\"whole\" for every layer at every step), record longer, or check "
        "the model with gradsight doctor MODEL, which does.",
        measured={"updates_per_layer": float(n), "needed": float(th.min_updates), "window_steps": float(spanned)})]


def update_ratios(view: RunView, th: Thresholds) -> list[Finding]:
    """``update_ratio_high`` / ``update_ratio_low``: median ``||dw||/||w||`` per layer
    (:func:`update_sizes`).

    A tensor that starts at or near zero (a zero-initialized head, a class token of std
    1e-6, LayerScale) has a huge first ratio, and after ``k`` updates of similar size a
    ratio between ``1/k`` (aligned updates) and ``1/sqrt(k)`` (random directions) whatever
    the learning rate; its first ``1/update_high**2`` updates are not judged. A weighted
    layer followed by a norm layer is scale-invariant (its gradient scales as ``1/||w||``,
    so its norm grows until the relative update settles): it is not judged too high."""
    n = _updates_in_window(view)
    if n < th.min_updates:
        return _too_few_updates(view, n, th)  # the first updates of a run are not its learning rate's verdict
    high_ur, low_ur = update_sizes(view, th)
    findings = []
    high = high_ur[high_ur > th.update_high]
    low = low_ur[low_ur < th.update_low]
    # a learning rate too low slows every layer: the network's median weighted layer decides
    # (network_update); a few slow layers (a scalar scale whose updates are below float32's
    # resolution at 1.0, a near-frozen norm) are an info
    median, counted = network_update(view, low_ur)
    network_low = median < th.update_low
    growth = weight_growth(view, th)
    grown = growth[growth > math.log10(th.weight_growth)]
    if not grown.empty:
        worst = grown.idxmax()
        findings.append(Finding(
            "update_ratio_high", "warning",
            f"The weights of {len(grown)} layer(s) grew faster than {_fmt(th.weight_growth)} times per "
            f"{GROWTH_SPAN} updates (up to {_fmt(10 ** float(grown.max()))} times per {GROWTH_SPAN} at "
            f"'{display_name(worst)}', over {len(view.steps)} recorded steps; healthy runs stay within "
            f"{_fmt(th.weight_growth)}): the "
            "updates are of the order of the weights themselves, the learning rate is too high. Lower it (or warm it "
            "up), or clip the gradients.", layers=list(grown.sort_values(ascending=False).index),
            measured={k: float(10 ** v) for k, v in grown.items()}))
    elif not high.empty:
        findings.append(Finding(
            "update_ratio_high", "warning",
            f"{len(high)} layer(s) change by more than {_fmt(th.update_high)} of their norm per step in the last "
            f"{n} recorded updates (up to {_fmt(float(high.max()))} at '{display_name(high.idxmax())}'; about 1e-3 "
            "is customary): the learning rate is too high for them.", layers=list(high.index),
            measured={k: float(v) for k, v in high.items()}))
    if not low.empty:
        findings.append(Finding(
            "update_ratio_low", "warning" if network_low else "info",
            (f"No weight of the median layer changed across the optimizer's steps (the update ratio is exactly 0, "
             f"median over {counted} layers, the convolutions and linear maps where there are any, in the last {n} "
             "recorded updates) although the recorded gradients are not zero: the optimizer stepped without them "
             "(optimizer.step() before loss.backward(), or zero_grad() between the backward pass and the step), "
             "its learning rate is 0, or its updates fall below the weights' precision (16-bit weights with a small "
             "learning rate). Step after the backward pass, zero the gradients after the step, and check the "
             "learning rate (a schedule may hold it at 0)." if network_low and median == 0 else
             f"The layers change by {_fmt(median)} of their norm per step (median over {counted} layers, the "
             f"convolutions and linear maps where there are any, in the "
             f"last {n} recorded updates; about 1e-3 is customary, under {_fmt(th.update_low)} is too little): the "
             "network barely learns; raise the learning rate." if network_low else
             f"{len(low)} layer(s) change by less than {_fmt(th.update_low)} of their norm per step in the last {n} "
             f"recorded updates (down to {_fmt(float(low.min()))} at '{display_name(low.idxmin())}'), while the "
             f"network's median layer ({counted} layers, the weighted ones where there are any) changes by "
             f"{_fmt(median)}: those layers barely learn (a scalar scale near 1, whose "
             "small updates fall below float32's resolution, or a layer whose gradient is tiny)."),
            layers=list(low.index), measured={"median": median, **{k: float(v) for k, v in low.items()}}))
    return findings


def branch_shares(view: RunView, th: Thresholds) -> tuple[pd.Series, set[str]]:
    """See :func:`_branch_shares` (computed once per view and thresholds)."""
    return _memo(view, ("branch_shares", th.branch_share_low, th.small_init), lambda: _branch_shares(view, th))


def idle_blocks(view: RunView, th: Thresholds) -> pd.Series:
    """The blocks whose branch is idle (:func:`branch_shares` below ``branch_share_low``, no
    moving small-initialized scale, cut at the branch's output: :func:`_cut_at_output`),
    with their shares; the one list both ``idle_branch`` and ``dead_units`` read."""
    share, by_design = branch_shares(view, th)
    idle = share[(share < th.branch_share_low) & ~share.index.isin(list(by_design))]
    return idle[[_cut_at_output(view, b) for b in idle.index]]


def _branch_shares(view: RunView, th: Thresholds) -> tuple[pd.Series, set[str]]:
    """Per residual block, the branch's share of the gradient at its input,
    ``branch / (skip + branch)`` norms, median over the window (the last half of the
    steps; for a share below ``branch_share_low`` there, its largest over every step);
    with the blocks whose branch holds a moving small-initialized scale
    (:func:`small_initialized`), which start idle by design."""
    skip = _table(view, Level.BLOCK, "skip_grad_norm")
    branch = _table(view, Level.BLOCK, "branch_grad_norm")
    if skip.empty or branch.empty:
        return pd.Series(dtype=float), set()
    with np.errstate(divide="ignore", invalid="ignore"):
        every = branch / (skip + branch)
        share = _window(view, every).median().dropna()
    # idle means idle at every recorded step: a branch dropped at some steps (stochastic depth)
    # carries its share at the others
    share = share.where(share >= th.branch_share_low, every.max().reindex(share.index))
    small = _moving(view, small_initialized(view, th))
    by_design = set()
    for block in share.index:
        base = block.split("[", 1)[0]
        if any(s == base or s.startswith(base + ".") for s in small):
            by_design.add(block)
    return share, by_design


def _moving(view: RunView, layers: set[str]) -> set[str]:
    """The layers among ``layers`` whose gradient is nonzero in the window: a small scale
    that can grow. One that gets no gradient (its branch multiplied by a constant 0 after
    it) stays small whatever its design."""
    gn = _table(view, Level.LAYER, "grad_norm")
    if gn.empty or not layers:
        return set()
    window = _window(view, gn)
    return {n for n in layers if n in window.columns and bool((window[n].fillna(0) > 0).any())}


def _cut_at_output(view: RunView, block: str) -> bool:
    """Whether ``block``'s branch is cut at its output (multiplied by a constant 0,
    detached) rather than dead inside: a layer in it whose weights got no gradient while
    the layer itself did (its bias: the gradient arrived, its input was all zero) has dead
    units before it, and dead_units names them."""
    base = block.split("[", 1)[0]
    _units, _outputs, whole, _n = dead_fractions(view)
    inside = [n for n in whole if n.startswith(base + ".")]
    if not inside:
        return True
    gn = _table(view, Level.LAYER, "grad_norm")
    window = _window(view, gn[[n for n in inside if n in gn.columns]]) if not gn.empty else gn
    return window.empty or not bool((window.fillna(0) > 0).any().any())


def _single_feature_norms(view: RunView, bases: set[str]) -> list[str]:
    """Norm layers inside these blocks whose every parameter holds one element: a norm over
    one feature (timm's CSATv2 runs a transformer block on one channel), whose output is
    its bias whatever its input."""
    numel: dict[str, list[int]] = {}
    for layer, n in zip(view.params["layer"], view.params["numel"]):
        numel.setdefault(layer, []).append(int(n))
    return [layer for layer in view.layer_order if view.role(layer) == Role.NORM and set(numel.get(layer, [])) == {1}
            and any(layer.startswith(b + ".") for b in bases)]


def residual_branches(view: RunView, th: Thresholds) -> list[Finding]:
    """``idle_branch`` / ``dominant_branch`` (:func:`branch_shares`): a branch that carries
    almost none of the gradient in the last half of the steps, although nothing in it was
    initialized small; a skip that carries almost none."""
    share, by_design = branch_shares(view, th)
    if share.empty:
        return []
    findings = []
    # a branch whose gradient arrives inside it and dies there has dead units (dead_units names them)
    idle = idle_blocks(view, th)
    skip = _window(view, _table(view, Level.BLOCK, "skip_grad_norm")).median()
    # a "skip" that passes exactly no gradient does not lead to the loss: not a skip to judge
    dominant = share[(share > th.branch_share_high) & (skip.reindex(share.index) > 0)]
    n = len(_window(view, _table(view, Level.BLOCK, "skip_grad_norm")))
    if not idle.empty:
        single = _single_feature_norms(view, {b.split("[", 1)[0] for b in idle.index})
        cause = (" " + few([f"'{display_name(s)}'" for s in single], 1)
                 + " normalize a single feature: a LayerNorm over one value subtracts its mean, the value itself, "
                 "and outputs its bias whatever its input, so no gradient passes through it." if single else "")
        findings.append(Finding(
            "idle_branch", "warning",
            f"{len(idle)} residual block(s) pass under {_fmt(100 * th.branch_share_low)}% of the gradient through "
            f"their branch in the last {n} recorded steps (least: '{display_name(idle.idxmin())}', "
            f"{_fmt(100 * float(idle.min()))}%), and nothing in those branches was initialized small: the blocks "
            f"do nothing.{cause} Check for a branch multiplied by a constant zero, detached, whose weights are stuck "
            "at zero, or that normalizes over a single feature.", layers=list(idle.index),
            measured={k: float(v) for k, v in idle.items()}))
    if not dominant.empty:
        findings.append(Finding(
            "dominant_branch", "warning",
            f"In {len(dominant)} residual block(s) the branch carries over {_fmt(100 * th.branch_share_high)}% "
            f"of the gradient in the last {n} recorded steps (most: '{display_name(dominant.idxmax())}'): the skip "
            "connection no longer helps the gradient through; check the shortcut (projection scale) and the "
            "branch's initialization.",
            layers=list(dominant.index), measured={k: float(v) for k, v in dominant.items()}))
    quiet = share[(share < th.branch_share_low) & share.index.isin(list(by_design))]
    if not quiet.empty:
        findings.append(Finding(
            "small_init_branch", "info",
            f"{len(quiet)} residual block(s) pass under {_fmt(100 * th.branch_share_low)}% of the gradient through "
            f"their branch (least: '{display_name(quiet.idxmin())}'), as designed: each branch holds a scale "
            "initialized at or near zero (LayerScale, a zero-initialized last norm, SkipInit), which grows as "
            "the block learns.", layers=list(quiet.index), measured={k: float(v) for k, v in quiet.items()}))
    return findings


def training_format(run: RunSource) -> str | None:
    """The low-precision format the gradients live in: ``fp16`` (fp16 weights, or a
    GradScaler, which goes with fp16 autocast), ``bf16`` (bf16 weights), else None."""
    run = view_of(run)
    params = run.params
    params = params[params["trainable"]]
    if params.empty:
        return None
    dtype = str(params.groupby("dtype")["numel"].sum().idxmax())
    if dtype == "bfloat16":
        return "bf16"
    if dtype == "float16" or run.meta.get("amp"):
        return "fp16"
    return None


def _finite_median(values) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(np.median(arr)) if arr.size else math.nan


def _subnormal_share(run: RunView, fmt: str) -> pd.Series:
    """Per step with a histogram: the share of the model's nonzero gradient elements below
    the format's smallest normal value (where it keeps fewer bits and then rounds to 0)."""
    hist = run.histograms(level=Level.MODEL)
    if hist.empty:
        return pd.Series(dtype=float)
    edge = math.log2(FORMAT_RANGES[fmt].smallest_normal)
    low = hist["count"].where(hist["log2_bucket"] < edge, 0).groupby(hist["step"]).sum()
    return low / hist.groupby("step")["count"].sum().clip(lower=1)


def total_underflow(view: RunView) -> Finding | None:
    """``amp_underflow`` when every gradient element was 0 at half the steps or more in a
    low-precision run whose loss was not 0: the whole gradient flushed to zero (a tiny
    loss in fp16 without loss scaling), which no per-element share shows (there is no
    nonzero element left to count)."""
    fmt = training_format(view)
    zero = _zero_gradient_steps(view)
    steps = view.steps
    if fmt is None or not steps or len(zero) < max(1, len(steps) / 2):
        return None
    loss = _model_series(view, "loss", Level.METRIC)
    # a loss of exactly 0 at every step is itself flushed to zero (below fp16's smallest subnormal)
    lost = "the loss itself was 0 in it too (below its smallest value)" if len(loss) and not (loss.abs() > 0).any() \
        else "the loss was not 0"
    scaled = bool(view.meta.get("amp")) and fmt == "fp16"
    advice = ("raise the loss scale (GradScaler(init_scale=...), growth_interval) or train in bf16" if scaled else
              "use loss scaling (torch.amp.GradScaler) with fp16, keep fp32 weights (autocast), or train in bf16")
    return Finding(
        "amp_underflow", "error",
        f"Every gradient element was 0 at {len(zero)} of {len(steps)} recorded steps ({_when(sorted(zero))}) of a "
        f"run trained in {fmt}, and {lost}: the whole gradient underflows {fmt} and nothing learns; {advice}.",
        steps=sorted(zero)[:50], measured={"zero_gradient_steps": float(len(zero)), f"{fmt}_underflow": 1.0})


def precision_headroom(view: RunView, th: Thresholds) -> list[Finding]:
    """See :func:`_precision_headroom` (judged once per view and thresholds: ``dead_units``
    asks it too)."""
    return _memo(view, ("precision_headroom", astuple(th)), lambda: _precision_headroom(view, th))


def _precision_headroom(view: RunView, th: Thresholds) -> list[Finding]:
    """Gradients at or past the bottom of the training format's range (``histograms=``):
    elements that would become 0 in it (gradients kept wider than the format), or a
    share of elements already in its subnormal range (gradients computed in it, whose
    smaller elements already became 0), and whether the loss scale has room to rise."""
    fmt = training_format(view)
    if fmt is None:
        return []
    total = total_underflow(view)
    if total is not None:
        return [total]
    stat = f"{fmt}_underflow"
    model = _table(view, Level.MODEL, stat)
    if model.empty:
        return []
    frac = _finite_median(model.iloc[:, 0])
    subnormal = _finite_median(_subnormal_share(view, fmt))
    per_layer = _table(view, Level.LAYER, stat)
    medians = per_layer[_weighted_or_head(view, per_layer.columns)].median() if not per_layer.empty else pd.Series()
    layers = [str(n) for n in medians.index[medians > th.underflow_layer_frac]]
    measured = {stat: frac, "subnormal_share": subnormal, **{f"{stat}[{n}]": float(medians[n]) for n in layers[:20]}}
    if frac > th.underflow_frac:
        what = f"{frac:.1%} of the model's gradient elements become 0 in {fmt}, the training format"
    elif layers:
        what = (f"over {th.underflow_layer_frac:.0%} of the gradient elements of {len(layers)} layer(s) become 0 in "
                f"{fmt}, the training format")
    elif subnormal > th.underflow_frac:
        what = (f"{subnormal:.1%} of the model's nonzero gradient elements are below {fmt}'s smallest normal value "
                f"(2^{math.log2(FORMAT_RANGES[fmt].smallest_normal):.0f}), where {fmt} keeps fewer bits and the "
                "smaller ones already became 0")
    else:
        return []
    scaled = bool(view.meta.get("amp")) and fmt == "fp16"
    if scaled:
        scale = _table(view, Level.MODEL, "loss_scale")
        absmax = _table(view, Level.MODEL, "grad_abs_max")
        stored_max = (absmax.iloc[:, 0] * scale.iloc[:, 0]).reindex(model.index) if not (
            scale.empty or absmax.empty) else pd.Series(dtype=float)
        room = FORMAT_RANGES[fmt].largest / _finite_median(stored_max) if len(stored_max) else math.nan
        if math.isfinite(room):
            measured["headroom_factor"] = room
        if not math.isfinite(room):
            advice = ("no loss scale was recorded, so the room left for it is unknown: pass a larger "
                      "GradScaler(init_scale=...) or a shorter growth_interval, or train in bf16")
        elif room >= th.headroom_factor:
            advice = (f"the largest scaled gradient is {room:.3g}x below fp16's largest value, so the loss scale can "
                      f"rise about 2^{math.floor(math.log2(room / 2))}x: pass a larger "
                      "GradScaler(init_scale=...) or a shorter growth_interval, or train in bf16")
        else:
            advice = (f"the largest scaled gradient is already within {room:.3g}x of fp16's largest value, so no loss "
                      "scale fits both ends: train in bf16 (autocast dtype=torch.bfloat16) or keep these layers in fp32")
    elif fmt == "fp16":
        advice = "use loss scaling (torch.amp.GradScaler) or train in bf16"
    else:
        advice = ("keep fp32 parameters and gradients (autocast with dtype=torch.bfloat16 around the forward pass "
                  "instead of bf16 weights)")
    return [Finding(
        "amp_underflow", "warning",
        f"{what} (median over the steps with a histogram), so that part of the gradient is lost; {advice}.",
        layers=layers, steps=[int(x) for x in model.index[:50]], measured=measured)]


RULES = (nonfinite, gradients_not_zeroed, trained_in_eval_mode, not_updated, clipped_gradients, gradient_cut,
         gradient_scale, through_time, saturation, forward_signal, dead_units,
         missing_gradients, update_ratios, residual_branches, precision_headroom)


def batch_vs_noise_scale(view: RunView, th: Thresholds) -> list[Finding]:
    """``batch_far_below_noise_scale`` / ``batch_far_above_noise_scale`` (info): the batch size
    more than ``FAR_FACTOR`` (10) below or above the gradient noise scale (runs recorded with
    ``noise_scale=``), shown beyond doubt. Over the window (the last half of the steps, at
    least ``NOISE_MIN_STEPS``) the per-step unbiased estimates of ``|G|²`` and ``tr(Σ)`` are
    averaged; with two standard errors either way, ``B_noise >= tr_low / G_high`` (below) or
    ``B_noise <= tr_high / G_low`` (above) must pass the factor. A batch far below the noise
    scale makes ``|G|²`` hard to measure (its error is about ``tr(Σ) / B``), so there the
    bound says "at least". McCandlish et al. 2018 (eq. 2.11): steps ``S_min (1 + B_noise / B)``,
    samples ``E_min (1 + B / B_noise)``; at 10x either way one of them is 11x its minimum."""
    from gradsight.stats.noise_scale import FAR_FACTOR

    grad_sq, trace = _model_series(view, "gns_grad_sq"), _model_series(view, "gns_trace")
    batch = _model_series(view, "gns_batch")
    steps = grad_sq.index.intersection(trace.index)
    window = steps[len(steps) // 2:]
    if len(window) < NOISE_MIN_STEPS or batch.empty:
        return []
    g, t = grad_sq.reindex(window).to_numpy(), trace.reindex(window).to_numpy()
    used = float(batch.reindex(window).median())
    margin_g, margin_t = (2 * x.std(ddof=1) / math.sqrt(len(x)) for x in (g, t))
    g_low, g_high = g.mean() - margin_g, g.mean() + margin_g
    t_low, t_high = t.mean() - margin_t, t.mean() + margin_t
    unit = "samples" if (view.meta.get("noise_scale") or {}).get("micro_batch_size") else "micro-batches"
    estimate = t.mean() / g.mean() if g.mean() > 0 else math.nan  # (|G|² not measurably positive)
    measured = {"batch_size": used} if math.isnan(estimate) else {"noise_scale": float(estimate), "batch_size": used}
    where = [int(s) for s in window][:50]
    if not (math.isfinite(used) and used > 0 and t_low > 0):
        return []
    lower = t_low / g_high if g_high > 0 else math.inf
    if lower > FAR_FACTOR * used:
        measured.update(noise_scale_low=float(lower), noise_over_batch=float(lower / used))
        return [Finding(
            "batch_far_below_noise_scale", "info",
            f"The batch of {_fmt(used)} {unit} is at least {_fmt(lower / used)} times below the gradient noise scale "
            f"(at least {_fmt(lower)} {unit}, two standard errors, {_when(window)}): each step's gradient is mostly "
            f"noise, so training takes more than {_fmt(1 + lower / used)} times the fewest steps; batches up to at "
            f"least {_fmt(lower)} would reach the same loss in far fewer steps for about as many samples "
            "(McCandlish et al. 2018).", steps=where, measured=measured)]
    upper = t_high / g_low if g_low > 0 else math.inf
    if upper < used / FAR_FACTOR:
        measured.update(noise_scale_high=float(upper), noise_over_batch=float(upper / used))
        return [Finding(
            "batch_far_above_noise_scale", "info",
            f"The batch of {_fmt(used)} {unit} is at least {_fmt(used / upper)} times above the gradient noise scale "
            f"(at most {_fmt(upper)} {unit}, two standard errors, {_when(window)}): the extra samples barely reduce "
            f"the noise, so training uses more than {_fmt(1 + used / upper)} times the fewest samples; a batch near "
            f"{_fmt(estimate)} would reach the same loss with a fraction of the compute (McCandlish et al. 2018).",
            steps=where, measured=measured)]
    return []


#: The recorded steps with a noise scale that the window (the last half) must hold.
NOISE_MIN_STEPS = 10

#: A layer is eps-dominated when more than this share of its elements (with a gradient) has
#: ``sqrt(v_hat) < eps``: there Adam's update ``m_hat / (sqrt(v_hat) + eps)`` is less than half
#: of ``m_hat / sqrt(v_hat)`` and falls with the gradient (Wortsman et al. 2023), so the
#: layer's median element moves at less than half its intended rate. Measured
#: (``benchmarks/adam_eps.py``, docs/diagnosis.md): healthy runs stay near 0.
EPS_DOMINATED_FRAC = 0.5


#: ... and when the elements below eps can hold at least this share of the layer's gradient
#: energy (:func:`eps_energy_share`): where they hold less, the layer's gradient lives in its
#: other elements and the ones below eps are at rounding level by structure (the query and key
#: rows of attention over a single token, a per-channel scale before a BatchNorm over 1x1
#: maps: 1e-8..1e-4 in GhostNet-v2, CAFormer and ConvBERT), not scaled below Adam's eps.
EPS_ENERGY_SHARE = 0.01


def eps_energy_share(view: RunView, frac: pd.Series) -> pd.Series:
    """Per layer, the most of its gradient energy the elements below eps can hold:
    ``adam_eps_frac * eps^2 / mean(v_hat)`` (each such element has ``v_hat < eps^2``, and
    ``adam_sqrt_v_rms^2`` is the mean of ``v_hat``), over the window's medians; empty where
    the run did not record the optimizer's eps (runs before it was recorded)."""
    eps = view.meta.get("adam_eps")
    sqrt_v = view.matrix(Level.LAYER, "adam_sqrt_v_rms", steps="all")
    if not isinstance(eps, (int, float)) or sqrt_v.empty:
        return pd.Series(dtype=float)
    sqrt_v = _window(view, sqrt_v).median()
    with np.errstate(divide="ignore", invalid="ignore"):
        return (frac * (float(eps) / sqrt_v.reindex(frac.index)) ** 2).dropna()


def eps_dominated(view: RunView, th: Thresholds) -> list[Finding]:
    """``eps_dominated`` (warning): layers whose ``adam_eps_frac`` (with an Adam optimizer,
    at the steps that measure ``update_ratio``) has its median over the window (the last
    half of those steps) above :data:`EPS_DOMINATED_FRAC`, judged on at least
    ``min_updates`` such steps; small-initialized scales and the layers behind them are left
    out (their gradients are under eps by design at first: CaiT's, EdgeNeXt's and FastViT's
    LayerScale were flagged without it)."""
    frac = view.matrix(Level.LAYER, "adam_eps_frac", steps="all").dropna(how="all")
    if len(frac) < th.min_updates:
        return []
    window = _window(view, frac).median()
    # a small-initialized scale (LayerScale 1e-6, a zero-init last BN) and the layers of its
    # branch have gradients under eps by design at first, as update_ratio_low leaves them out
    by_design = small_initialized(view, th) | _scaled_by_small(view, th)
    # a layer whose gradient is below grad_floor while the model's is not has it small by
    # structure (a query projection under a near-uniform softmax at init: MobileBERT's 1e-13),
    # not because of eps; a model whose gradients are all that small is judged as a whole
    rms = _window(view, _table(view, Level.LAYER, "grad_rms")).median()
    model = view.matrix(Level.MODEL, "adam_eps_frac", steps="all")
    model_frac = float(_window(view, model).median().iloc[0]) if not model.empty else math.nan
    everywhere = model_frac > EPS_DOMINATED_FRAC
    bad = [n for n in frac.columns if window.get(n, 0) > EPS_DOMINATED_FRAC and n not in by_design
           and (everywhere or rms.get(n, math.inf) >= th.grad_floor)]
    share = eps_energy_share(view, window)
    bad = [n for n in bad if not share.get(n, math.inf) < EPS_ENERGY_SHARE]
    if not bad:
        return []
    update = view.matrix(Level.LAYER, "adam_update_rms", steps="all")
    update_med = _window(view, update).median() if not update.empty else pd.Series(dtype=float)
    shown = few([f"'{display_name(n)}' ({_fmt(window[n])})" for n in bad], 5)
    return [Finding(
        "eps_dominated", "warning",
        f"Adam's eps dominates the update of {len(bad)} of {frac.shape[1]} layers: in {shown} most elements "
        f"have sqrt(v_hat) below eps (median share {_when(_window(view, frac).index)}; the model: {_fmt(model_frac)}), "
        "so they move at less than half the rate Adam intends, slower as their gradient falls. Lower eps (1e-8 "
        "or below; Wortsman et al. 2023), or undo a scaling of the loss that makes the gradients tiny.",
        layers=bad, steps=[int(s) for s in _window(view, frac).index][:50],
        measured={"eps_frac_max": float(window[bad].max()), "eps_frac_model": model_frac,
                  "update_rms_median": float(update_med.reindex(bad).median()) if len(update_med) else math.nan})]


RULES += (batch_vs_noise_scale, eps_dominated)


def measure(view: RunView, th: Thresholds | None = None) -> dict[str, float]:
    """Every rule's statistic, the number it compares with its threshold (NaN where the run
    cannot give it): what the calibration reads (``benchmarks/doctor_calibrate.py``).

    ``grad_depth_log10_min`` / ``_max``: the most negative / positive like-with-like depth
    profile (log10 first / last instance; :func:`depth_profiles`), against
    ``vanish_ratio`` / ``explode_ratio``; ``grad_size``: :func:`gradient_size`;
    ``forward_log10_layer`` / ``forward_log10_stream``: :func:`forward_growth`;
    ``dead_frac_max``: the largest dead share of a hidden layer's rows; ``update_max`` (the
    fastest layer) / ``update_median`` (the median weighted layer, :func:`network_update`):
    :func:`update_sizes`, NaN before the window holds ``min_updates`` updates; ``branch_share_min`` / ``_max``: over the blocks
    not initialized small (:func:`branch_shares`); ``norm_growth``: :func:`norm_growth`;
    ``weight_growth_max``: the most any layer's weight norm grew (:func:`weight_growth`);
    ``cut_layers``: the layers at the start without any gradient (:func:`cut_prefix`);
    ``initial_logit_rms``: the head's output RMS at the first step (:func:`initial_logits`);
    ``plain_fade_log10``: :func:`plain_chain_fade`, against ``plain_vanish``; ``time_gain_min`` /
    ``time_growth_log10_max``: the smallest gain per step of a recurrent module's gradient
    through time and the largest log10 growth over its sequence (:func:`time_gains`), against
    ``time_gain_low`` / ``time_explode``; ``saturated_max``: the most saturated hidden bounded
    activation (:func:`saturated_layers`), against ``saturated``."""
    th = th or Thresholds()
    nan = math.nan
    out: dict[str, float] = {}
    profiles = depth_profiles(view)
    medians = [d.median for d in profiles if math.isfinite(d.median)]
    out["grad_depth_log10_min"] = min(medians, default=nan)
    out["grad_depth_log10_max"] = max(medians, default=nan)
    for d in profiles:
        out[f"grad_depth_log10_{d.key}"] = d.median
    deep = [d.gain for d in profiles if d.span >= th.min_depth and math.isfinite(d.gain)]
    out["grad_gain_min"] = min(deep, default=nan)
    out["grad_gain_floor"] = min((d.gain for d in profiles if math.isfinite(d.gain)), default=nan)
    out["grad_size"] = gradient_size(view)
    fade = plain_chain_fade(view)
    out["plain_fade_log10"] = fade[0] if fade is not None else nan
    growth = norm_growth(view)
    out["norm_growth"] = growth[0] if growth is not None else nan
    layer, stream, _ends, _steps = forward_growth(view)
    out["forward_log10_layer"], out["forward_log10_stream"] = layer, stream
    units, outputs, whole, n_window = dead_fractions(view)
    has_dead_stat = n_window > 0
    out["dead_frac_max"] = max(units.values(), default=0.0) if has_dead_stat else nan
    out["dead_output_frac"] = max(outputs.values(), default=0.0) if has_dead_stat else nan
    out["dead_whole_layers"] = float(len(whole)) if has_dead_stat else nan
    high, low = update_sizes(view, th)
    judged = _updates_in_window(view) >= th.min_updates
    out["update_max"] = float(high.max()) if len(high) and judged else nan
    out["update_median"] = network_update(view, low)[0] if len(low) and judged else nan
    share, by_design = branch_shares(view, th)
    judged = share[~share.index.isin(list(by_design))]
    out["branch_share_min"] = float(judged.min()) if len(judged) else nan
    out["branch_share_max"] = float(share.max()) if len(share) else nan
    out["blocks_small_init"] = float(len(by_design))
    growth = weight_growth(view, th)
    out["weight_growth_max"] = float(10 ** growth.max()) if len(growth) else nan
    prefix, _live = cut_prefix(view)
    out["cut_layers"] = float(len(prefix))
    logits = initial_logits(view, th)
    out["initial_logit_rms"] = logits[1] if logits is not None else nan
    gains = time_gains(view)
    out["time_gain_min"] = min((g.gain for g in gains), default=nan)
    out["time_growth_log10_max"] = max((g.log10_total for g in gains), default=nan)
    shares, _steps = saturated_layers(view)
    out["saturated_max"] = max(shares.values(), default=nan)
    out["steps"] = float(len(view.steps))
    return out

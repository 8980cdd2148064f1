"""Diagnosis rules: each reads a run and returns findings. Pure functions of the view."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gradsight.diagnosis.findings import Finding
from gradsight.diagnosis.thresholds import Thresholds
from gradsight.display import display_name
from gradsight.stats.formats import FORMAT_RANGES
from gradsight.store.query import first_last_columns, first_last_ratios, positive
from gradsight.store.roles import Role
from gradsight.store.schema import Level
from gradsight.store.view import RunSource, RunView, view_of


def _grad_clip(view: RunView) -> dict:
    """The recorded clipping (``grad_clip`` in the run's meta or config) when the recorded
    gradients are after it (``post_clip``), else empty."""
    clip = view.meta.get("grad_clip") or view.config.get("grad_clip")
    return clip if isinstance(clip, dict) and clip.get("post_clip") else {}


def _table(view: RunView, level: str, stat: str) -> pd.DataFrame:
    """The steps x names table a rule judges: per-module statistics at the view's sample
    (the steps the plots and the report show), whole-model series and missing-gradient
    counts over every recorded step."""
    every = level in Level.TOTALS or stat == "grad_missing"
    return view.matrix(level, stat, steps="all" if every else "sample")


def _normalized(view: RunView) -> set[str]:
    """Weighted layers whose next layer in forward order is a norm layer (a convolution
    followed by BatchNorm): the loss does not change when their weights are scaled."""
    order = view.layer_order
    return {a for a, b in zip(order, order[1:]) if view.role(a) == Role.WEIGHTED and view.role(b) == Role.NORM}


def _weighted(view: RunView, names) -> list[str]:
    """The weighted layers (convolutions, linear maps) among ``names``, in their order: no
    norm layers, no embeddings, no head."""
    return [n for n in names if view.role(n) == Role.WEIGHTED]


def _weighted_or_head(view: RunView, names) -> list[str]:
    """The weighted layers and the head among ``names``, in their order."""
    return [n for n in names if view.role(n) in (Role.WEIGHTED, Role.HEAD)]


def parameter_profile(view: RunView) -> pd.DataFrame:
    """Per-element parameter gradients (``grad_rms``) of the weighted layers, steps x
    layers in forward order: what every run records, so a recorded run and a model
    check are judged alike."""
    rms = _table(view, Level.LAYER, "grad_rms")
    return rms[_weighted(view, rms.columns)] if not rms.empty else rms


def module_profile(view: RunView, stat: str) -> tuple[str, pd.DataFrame]:
    """A module statistic along depth: at the residual blocks if there are at least
    two (``"block"``), else at the weighted layers (``"layer"``: no norm layers,
    embeddings or head, like with like); empty when not recorded."""
    values = _table(view, Level.MODULE, stat)
    if values.empty:
        return "", values
    block_cols = [c for c in values.columns if c in view.blocks]
    if len(block_cols) >= 2:
        return "block", values[block_cols]
    return "layer", values[_weighted(view, [c for c in values.columns if c not in view.blocks])]


def backward_profile(view: RunView) -> tuple[str, pd.DataFrame]:
    """Per-element output gradients along depth (activation statistics), see
    :func:`module_profile` (the gradient of the logits is not like a hidden layer's)."""
    where, prof = module_profile(view, "out_grad_rms")
    return ("layer output" if where == "layer" else where), prof


def forward_profile(view: RunView) -> tuple[str, pd.DataFrame]:
    """Output RMS along depth: the residual stream (block outputs), or the weighted
    layers' outputs (:func:`module_profile`)."""
    return module_profile(view, "act_rms")


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
        bad_steps |= set(act.index[~np.isfinite(act.to_numpy(dtype=float)).all(axis=1)])
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
        nonblock = [c for c in row.index if c not in view.blocks]
        bad = [c for c in nonblock if not math.isfinite(row[c])]
        if bad:
            forward_origin = min(bad, key=lambda c: view.depth.get(c, 0))
            details.append(f"in the forward pass they first appear at the output of '{display_name(forward_origin)}'")
    row = view.at_step(Level.MODULE, "out_grad_nonfinite", step)
    if row is not None:
        cols = [c for c in row.index if c not in view.blocks]
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


def _profile_ratio(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per step: the first/last-layer ratio (:func:`gradsight.store.query.first_last_ratios`)
    along a steps x names profile, and the geometric-mean gain per step back (the ratio's
    ``1/(n-1)``-th power over the ``n`` names that hold positive values); steps where the
    ratio is unknown (a zero, NaN or infinite end) are left out."""
    n = int((~np.isnan(positive(df.to_numpy())).all(axis=0)).sum()) if not df.empty else 0
    if n < 2:
        return pd.Series(dtype=float), pd.Series(dtype=float)
    ratio = first_last_ratios(df)
    ratio = ratio[np.isfinite(ratio.to_numpy()) & (ratio.to_numpy() > 0)]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        gain = ratio ** (1.0 / (n - 1))
    return ratio, gain


@dataclass
class _Scale:
    """What one depth profile says about the gradient's scale (see :func:`gradient_scale`)."""

    key: str  #: names its numbers in ``Finding.measured``
    what: str  #: e.g. "parameter gradient per element"
    where: str  #: "layer", "block", ...
    ratio: pd.Series  #: first / last, per step
    gain: pd.Series  #: per step back, per step
    ends: tuple[str, str]
    depth: int
    use_gain: bool
    #: per step, the median over repeated kinds of layer of each kind's first / last ratio
    #: (:func:`_kind_ratios`); None where no kind repeats
    alike: pd.Series | None = None

    @property
    def median_ratio(self) -> float:
        return float(self.ratio.median())

    def _alike_agrees(self, below: float | None = None, above: float | None = None) -> bool:
        """Whether like-with-like layers say the same as the first/last ratio (True where
        they cannot say: no repeated kind, or no step with a ratio)."""
        if self.alike is None or self.alike.dropna().empty:
            return True
        m = float(self.alike.median())
        return (below is None or m < below) and (above is None or m > above)

    @property
    def median_gain(self) -> float:
        return float(self.gain.median())

    def vanishing(self, th: Thresholds) -> bool:
        return (self.median_ratio < 1 / th.vanish_ratio and self._alike_agrees(below=1 / th.vanish_ratio)) or (
            self.use_gain and self.depth >= th.min_depth and self.median_gain < th.gain_low)

    def exploding(self, th: Thresholds) -> bool:
        return self.median_ratio > th.explode_ratio and self._alike_agrees(above=th.explode_ratio)


def layer_kind(name: str) -> str:
    """A layer's name with every all-digit part replaced by ``*``: the layers of repeated
    blocks share it (``encoder.layer.*.attention.self.query``, ``layers.*``)."""
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def _kind_ratios(prof: pd.DataFrame) -> pd.Series | None:
    """Per step, the median over the kinds of layer (:func:`layer_kind`) that occur at least
    twice of the first occurrence's value over the last's; None when no kind repeats.

    A first/last ratio compares two different layers; in a transformer the first weighted
    layer is an attention query, whose gradient is small at initialization whatever the
    depth, and the last one may be a pooler fed straight by the loss. Comparing each
    repeated layer with itself deeper in the network asks only whether the gradient
    shrinks with depth."""
    kinds: dict[str, list[str]] = {}
    for name in prof.columns:
        kinds.setdefault(layer_kind(name), []).append(name)
    pairs = [(names[0], names[-1]) for names in kinds.values() if len(names) >= 2]
    if not pairs:
        return None
    values = positive(prof.to_numpy())
    col = {name: i for i, name in enumerate(prof.columns)}
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.stack([values[:, col[a]] / values[:, col[b]] for a, b in pairs], axis=1)
    ratios[~np.isfinite(ratios)] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps stay NaN
        return pd.Series(np.nanmedian(ratios, axis=1), index=prof.index)


def _scale(key: str, what: str, where: str, prof: pd.DataFrame, use_gain: bool) -> _Scale | None:
    if prof.empty or prof.shape[1] < 2:
        return None
    ratio, gain = _profile_ratio(prof)
    ends = first_last_columns(prof)
    if ratio.empty or ends is None:
        return None
    n = int((~np.isnan(positive(prof.to_numpy())).all(axis=0)).sum())
    return _Scale(key, what, where, ratio, gain, ends, n, use_gain)


def _alike(view: RunView, names: list[str]) -> list[str]:
    """The largest set of ``names`` whose layers have the same parameter shapes (the
    repeated layer of a plain stack), in order: a gain per layer compares like with like."""
    params = view.params
    shapes: dict[str, list] = {}
    for layer, shape, trainable in zip(params["layer"], params["shape"], params["trainable"]):
        if trainable:
            shapes.setdefault(layer, []).append(tuple(shape))
    groups: dict[tuple, list[str]] = {}
    for n in names:
        groups.setdefault(tuple(shapes.get(n, ())), []).append(n)
    return max(groups.values(), key=len) if groups else []


def gradient_scales(view: RunView) -> list[_Scale]:
    """The depth profiles the gradient-scale rules judge:

    - the weighted layers' parameter gradients per element (every run has them; a
      recorded run and a model check are judged alike): first/last ratio;
    - with activation statistics, the output gradients per element at the blocks or
      the weighted layers: first/last ratio, and the gain per step back over the
      blocks, or over the largest set of weighted layers of one shape (a plain stack's
      repeated layer), when there are at least ``min_depth`` of them.
    """
    what = "output gradient per element"
    param_prof = parameter_profile(view)
    found = [_scale("param", "parameter gradient per element", "layer", param_prof, use_gain=False)]
    if found[0] is not None:
        found[0].alike = _kind_ratios(param_prof)
    where, prof = backward_profile(view)
    if where:
        found.append(_scale("output", what, where, prof, use_gain=where == "block"))
        if where != "block":
            found.append(_scale("output_alike", what, where, prof[_alike(view, list(prof.columns))], use_gain=True))
    return [s for s in found if s is not None]


def gradient_scale(view: RunView, th: Thresholds) -> list[Finding]:
    """``vanishing_gradients`` / ``exploding_gradients`` by depth, and
    ``growing_gradient_norm`` over time (not judged on post-clip values)."""
    findings = []
    scales = gradient_scales(view)
    vanishing = [s for s in scales if s.vanishing(th)]
    exploding = [s for s in scales if s.exploding(th)]
    measured_all = {f"{s.key}_first_over_last": s.median_ratio for s in scales}
    if vanishing:
        s = min(vanishing, key=lambda s: (s.median_ratio, s.median_gain))
        first_name, last_name = (display_name(n) for n in s.ends)
        sev = "error" if s.median_ratio < 1 / th.vanish_ratio_error else "warning"
        bad = (s.ratio < 1 / th.vanish_ratio) | ((s.gain < th.gain_low) if s.use_gain else False)
        findings.append(Finding(
            "vanishing_gradients", sev,
            f"Gradients vanish toward the input: the {s.what} at '{first_name}' is {_fmt(1 / s.median_ratio)} "
            f"times smaller than at '{last_name}' (median over steps; {_fmt(s.median_gain)} per {s.where} going "
            "back). Use residual connections, normalization, ReLU-family activations with He initialization, or "
            "a shallower network.",
            layers=list(s.ends), steps=list(map(int, s.ratio.index[bad]))[:50],
            measured={"first_over_last": s.median_ratio, "gain_per_step_back": s.median_gain,
                      "depth": float(s.depth), **measured_all}))
    elif exploding:
        s = max(exploding, key=lambda s: s.median_ratio)
        first_name, last_name = (display_name(n) for n in s.ends)
        sev = "error" if s.median_ratio > th.explode_ratio_error else "warning"
        findings.append(Finding(
            "exploding_gradients", sev,
            f"Gradients grow toward the input: the {s.what} at '{first_name}' is {_fmt(s.median_ratio)} times "
            f"larger than at '{last_name}' (median over steps; {_fmt(s.median_gain)} per {s.where} going back), "
            "as in deep batch-normed plain networks at initialization (Yang et al. 2019). Use residual "
            "connections, a smaller learning rate or gradient clipping.",
            layers=list(s.ends), steps=list(map(int, s.ratio.index[s.ratio > th.explode_ratio]))[:50],
            measured={"first_over_last": s.median_ratio, "gain_per_step_back": s.median_gain,
                      "depth": float(s.depth), **measured_all}))
    if _grad_clip(view):
        return findings  # post-clip norms cannot grow past the clipping threshold
    total = _table(view, Level.MODEL, "grad_norm")
    total = total.iloc[:, 0].astype(float) if not total.empty else pd.Series(dtype=float)
    total = total[np.isfinite(total)]
    if len(total) >= 8:
        q = max(len(total) // 4, 2)
        early, late = float(total.iloc[:q].median()), float(total.iloc[-q:].median())
        if early > 0 and math.isfinite(late) and late / early > th.global_growth:
            findings.append(Finding(
                "growing_gradient_norm", "warning",
                f"The model's gradient norm grew {_fmt(late / early)} times during training (median of the first "
                f"quarter {_fmt(early)}, last quarter {_fmt(late)}): training is diverging; lower the learning rate "
                "or clip gradients.", steps=[int(total.index[0]), int(total.index[-1])],
                measured={"early_median": early, "late_median": late}))
    return findings


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


def _ratio_over_steps(prof: pd.DataFrame) -> tuple[pd.Series, str, str] | None:
    """Per step: the last column's value over the first's, the inverse of
    :func:`gradsight.store.query.first_last_ratios` (steps where it is unknown left out)."""
    ends = first_last_columns(prof)
    if ends is None:
        return None
    ratio = first_last_ratios(prof)
    ratio = ratio[np.isfinite(ratio.to_numpy()) & (ratio.to_numpy() > 0)]
    return (1.0 / ratio, *ends) if not ratio.empty else None


def forward_signal(view: RunView, th: Thresholds) -> list[Finding]:
    """``exploding_forward`` / ``vanishing_forward``: the output RMS of the last block
    (or weighted layer) over the first's, at any recorded step. A residual stream may
    grow as the square root of its number of blocks (each block adds a branch of about
    constant variance: pre-LN transformers, batch-normed ResNets); only growth beyond
    ``sqrt(blocks)`` times ``stream_growth`` is flagged there."""
    where, prof = forward_profile(view)
    if prof.empty or prof.shape[1] < 2:
        return []
    found = _ratio_over_steps(prof)
    if found is None:
        return []
    growth, first, last = found
    n = int((~np.isnan(positive(prof.to_numpy())).all(axis=0)).sum())
    allowed = th.stream_growth * math.sqrt(n) if where == "block" else th.forward_explode
    first_name, last_name = display_name(first), display_name(last)
    high, low = float(growth.max()), float(growth.min())
    measured = {"depth": float(n), "allowed": allowed}
    if high > allowed:
        sev = "error" if high > th.forward_explode_error else "warning"
        steps = [int(s) for s in growth.index[growth > allowed]]
        why = (f"more than the {_fmt(allowed)} that {n} blocks adding branches of constant variance allow "
               f"({_fmt(th.stream_growth)} x sqrt({n}))" if where == "block" else f"more than {_fmt(allowed)} times")
        return [Finding(
            "exploding_forward", sev,
            f"The forward signal explodes: the RMS of the {where} output grows up to {_fmt(high)} times from "
            f"'{first_name}' to '{last_name}', {why} (its variance {_fmt(high * high)} times; at step {steps[0]}). "
            "Unnormalized residual networks add a branch's variance at every block, so the stream grows "
            "geometrically; use normalization, scale the branches down (Fixup, SkipInit) or zero-initialize each "
            "branch's last layer.",
            layers=[first, last], steps=steps[:50], measured={"last_over_first_rms": high, **measured})]
    if low < th.forward_vanish:
        steps = [int(s) for s in growth.index[growth < th.forward_vanish]]
        return [Finding(
            "vanishing_forward", "warning",
            f"The forward signal fades: the RMS of the {where} output shrinks up to {_fmt(1 / low)} times from "
            f"'{first_name}' to '{last_name}' (at step {steps[0]}). Check the initialization (He for ReLU) or add "
            "normalization.",
            layers=[first, last], steps=steps[:50], measured={"last_over_first_rms": low, **measured})]
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


def dead_units(view: RunView, th: Thresholds) -> list[Finding]:
    """``dead_units``: layers with output rows (channels, units) whose gradient is exactly
    zero at every step of the window (the last half of the sampled steps); never
    embeddings, whose rows of tokens absent from a batch get no gradient by design."""
    dead = _table(view, Level.LAYER, "grad_dead_rows")
    if dead.empty:
        return []
    window = dead.index[len(dead.index) // 2:]
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
        if frac < th.dead_frac:
            continue
        if counts.min() >= rows[layer]:
            whole[layer] = frac
        elif view.role(layer) == Role.HEAD:
            outputs[layer] = frac
        else:
            units[layer] = frac
    findings = []
    n_window = len(window)
    if units:
        worst = max(units, key=units.get)
        findings.append(Finding(
            "dead_units", "warning",
            f"{len(units)} layer(s) have output units (rows, channels) whose gradient was exactly zero at every one "
            f"of the last {n_window} recorded step(s) (up to {_fmt(100 * units[worst])}% of '{display_name(worst)}'): "
            "those units are dead, their activation is zero for every input (a ReLU stuck at zero). Lower the "
            "learning rate, check the biases and initialization, or use LeakyReLU/GELU.",
            layers=sorted(units, key=units.get, reverse=True), measured=units))
    if outputs:
        (layer, frac), = list(outputs.items())[:1]
        findings.append(Finding(
            "dead_units", "warning",
            f"{_fmt(100 * frac)}% of the outputs of the last layer '{display_name(layer)}' got no gradient at every "
            f"one of the last {n_window} recorded step(s): the loss never uses them (e.g. more classes than the "
            "targets hold, or outputs sliced away). Shrink the layer to the outputs used or check the loss.",
            layers=list(outputs), measured=outputs))
    if whole:
        findings.append(Finding(
            "dead_units", "warning",
            f"{len(whole)} layer(s) got no gradient in any weight at every one of the last {n_window} recorded "
            f"step(s) (first: '{display_name(next(iter(whole)))}'): nothing reaches them, because their input is "
            "all zero (the layer before is dead) or a later part of the network passes no gradient back (dead "
            "units, a detach(), or a layer stuck at zero). Look at the layers before and after them.",
            layers=list(whole), measured=whole))
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
    return [Finding(
        "no_gradient", "warning",
        f"{len(never)} trainable parameter(s) never received a gradient in {n_steps} recorded steps: they are "
        "unused in the forward pass or cut off by detach()/no_grad; freeze them (requires_grad=False) or fix the "
        "graph.", layers=list(never.index), measured={"parameters": float(len(never))})]


def _judged_updates(view: RunView, ur: pd.DataFrame, warmup: int) -> pd.DataFrame:
    """``ur`` with the updates that cannot be judged left out (NaN): non-finite ones; those
    of a step at which the layer's gradient was all zero (what moved it, if anything, was
    momentum or weight decay: with a zero-initialized head, every layer before it at the
    first step); and for a tensor that started at zero (an infinite ratio, or a zero
    weight norm) the first ``warmup`` updates after the last step at which it was zero."""
    ur = ur.replace([np.inf, -np.inf], np.nan).copy()
    raw = _table(view, Level.LAYER, "update_ratio")
    wn = _table(view, Level.LAYER, "weight_norm")
    gn = _table(view, Level.LAYER, "grad_norm").reindex(index=ur.index, columns=ur.columns)
    ur = ur.mask(gn == 0)
    steps = ur.index.to_numpy()
    for layer in ur.columns:
        zero = set()
        if layer in raw.columns:
            zero |= set(raw.index[np.isposinf(raw[layer].to_numpy(dtype=float))])
        if layer in wn.columns:
            zero |= set(wn.index[wn[layer].to_numpy(dtype=float) == 0])
        if zero:
            ur.loc[steps <= max(zero) + warmup, layer] = np.nan
    return ur


def update_ratios(view: RunView, th: Thresholds) -> list[Finding]:
    """``update_ratio_high`` / ``update_ratio_low``: median ``||dw||/||w||`` per layer.

    A tensor that starts at zero (a zero-initialized head, a class token) has an infinite
    first ratio, and after ``k`` updates of similar size a ratio between ``1/k``
    (aligned updates) and ``1/sqrt(k)`` (random directions) whatever the learning rate;
    its first ``1/update_high**2`` updates after it was last zero are not judged. A
    weighted layer followed by a norm layer is scale-invariant (its gradient scales as
    ``1/||w||``, so its norm grows until the relative update settles): it is not
    judged too high."""
    ur = _table(view, Level.LAYER, "update_ratio")
    if ur.empty:
        return []
    warmup = math.ceil(1 / th.update_high**2) if th.update_high > 0 else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = _judged_updates(view, ur, warmup).median().dropna()
    findings = []
    low = med[med < th.update_low]
    normalized = _normalized(view)
    high = med[(med > th.update_high) & ~med.index.isin(list(normalized))]
    if not high.empty:
        findings.append(Finding(
            "update_ratio_high", "warning",
            f"{len(high)} layer(s) change by more than {_fmt(th.update_high)} of their norm per step (up to "
            f"{_fmt(float(high.max()))} at '{display_name(high.idxmax())}'; about 1e-3 is customary): the learning "
            "rate is too high for them.", layers=list(high.index), measured={k: float(v) for k, v in high.items()}))
    if not low.empty:
        findings.append(Finding(
            "update_ratio_low", "warning",
            f"{len(low)} layer(s) change by less than {_fmt(th.update_low)} of their norm per step (down to "
            f"{_fmt(float(low.min()))} at '{display_name(low.idxmin())}'; about 1e-3 is customary): they barely "
            "learn; raise the learning rate or check their gradients.", layers=list(low.index),
            measured={k: float(v) for k, v in low.items()}))
    return findings


def residual_branches(view: RunView, th: Thresholds) -> list[Finding]:
    skip = _table(view, Level.BLOCK, "skip_grad_norm")
    branch = _table(view, Level.BLOCK, "branch_grad_norm")
    if skip.empty or branch.empty:
        return []
    with np.errstate(divide="ignore", invalid="ignore"):
        share = (branch / (skip + branch)).median()
    share = share.dropna()
    findings = []
    idle = share[share < th.branch_share_low]
    dominant = share[share > 1 - th.branch_share_low]
    if not idle.empty:
        findings.append(Finding(
            "idle_branch", "warning",
            f"{len(idle)} residual block(s) pass under {_fmt(100 * th.branch_share_low)}% of the gradient through "
            f"their branch (least: '{share.idxmin()}', {_fmt(100 * float(share.min()))}%): those blocks are doing "
            "nothing yet (expected right after a zero/Fixup initialization; a problem if it persists).",
            layers=list(idle.index), measured={k: float(v) for k, v in idle.items()}))
    if not dominant.empty:
        findings.append(Finding(
            "dominant_branch", "warning",
            f"In {len(dominant)} residual block(s) the branch carries over {_fmt(100 * (1 - th.branch_share_low))}% "
            f"of the gradient (most: '{share.idxmax()}'): the skip connection no longer helps the gradient through; "
            "check the shortcut (projection scale) and the branch's initialization.",
            layers=list(dominant.index), measured={k: float(v) for k, v in dominant.items()}))
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


def precision_headroom(view: RunView, th: Thresholds) -> list[Finding]:
    """Gradients at or past the bottom of the training format's range (``histograms=``):
    elements that would become 0 in it (gradients kept wider than the format), or a
    share of elements already in its subnormal range (gradients computed in it, whose
    smaller elements already became 0), and whether the loss scale has room to rise."""
    fmt = training_format(view)
    if fmt is None:
        return []
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


RULES = (nonfinite, clipped_gradients, gradient_scale, forward_signal, dead_units, missing_gradients, update_ratios,
         residual_branches, precision_headroom)

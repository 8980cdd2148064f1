"""Diagnosis rules: each reads a run and returns findings. Pure functions of the data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradsight.diagnosis.findings import Finding
from gradsight.diagnosis.thresholds import Thresholds
from gradsight.store.query import (
    DEFAULT_MAX_STEPS,
    display_name,
    first_last_columns,
    first_last_ratios,
    positive,
    step_sample,
)
from gradsight.store.reader import Run
from gradsight.store.schema import Kind, Level


class RunData:
    """Cached wide tables of one run: ``wide(level, stat)`` is steps x names in depth order.

    Per-module rules look at the steps of :func:`gradsight.store.query.step_sample`
    (at most ``max_steps`` evenly spaced recorded steps, as the plots and the report
    show); whole-model series and missing-gradient counts are read over all steps.
    """

    def __init__(self, run: Run, max_steps: int | None = DEFAULT_MAX_STEPS) -> None:
        self.run = run
        self._cache: dict[tuple[str, str], pd.DataFrame] = {}
        steps = run.steps()
        self.n_steps = len(steps)
        sampled = step_sample(steps, max_steps)
        self.sample_steps: list[int] | None = sampled if len(sampled) < len(steps) else None
        kinds = run.layers(kind=None)
        self.blocks = set(kinds.name[kinds.kind == Kind.BLOCK])  # a name may be a layer and a block
        self.type = dict(zip(kinds.name, kinds.module_type))
        self.depth = dict(zip(kinds.name, kinds.depth))
        self.stats = {lvl: set(run.stats(lvl)) for lvl in Level.ALL if lvl != Level.METRIC}

    def wide(self, level: str, stat: str) -> pd.DataFrame:
        key = (level, stat)
        if key not in self._cache:
            if stat not in self.stats.get(level, ()):
                self._cache[key] = pd.DataFrame()
            else:
                sample = None if level in Level.TOTALS or stat == "grad_missing" else self.sample_steps
                self._cache[key] = self.run.series(stat, level, steps=sample)
        return self._cache[key]

    def at_step(self, level: str, stat: str, step: int) -> pd.Series | None:
        """One statistic of every name at one step (None when not recorded)."""
        if stat not in self.stats.get(level, ()):
            return None
        df = self.run.series(stat, level, steps=[step])
        return None if df.empty or step not in df.index else df.loc[step]

    def backward_profile(self) -> tuple[str, pd.DataFrame]:
        """Output-gradient norms along depth: per residual block if any, else per
        layer (module statistics), else the layers' parameter-gradient norms."""
        blocks = self.wide(Level.BLOCK, "skip_grad_norm")
        grads = self.wide(Level.MODULE, "out_grad_norm")
        if not grads.empty:
            block_cols = [c for c in grads.columns if c in self.blocks]
            if len(block_cols) >= 2 and not blocks.empty:
                return "block", grads[block_cols]
            layer_cols = [c for c in grads.columns if c not in self.blocks]
            return "layer output", grads[layer_cols]
        return "layer weight", self.wide(Level.LAYER, "grad_norm")

    def forward_profile(self) -> tuple[str, pd.DataFrame]:
        acts = self.wide(Level.MODULE, "act_rms")
        if acts.empty:
            return "", acts
        block_cols = [c for c in acts.columns if c in self.blocks]
        if len(block_cols) >= 2:
            return "block", acts[block_cols]
        cols = [c for c in acts.columns if "Norm" not in str(self.type.get(c, ""))]
        return "layer", acts[cols]


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


def _finite_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[np.isfinite(df.to_numpy(dtype=float)).all(axis=1)] if not df.empty else df


def nonfinite(data: RunData, th: Thresholds) -> list[Finding]:
    model_nf = data.wide(Level.MODEL, "grad_nonfinite")
    act = data.wide(Level.MODULE, "act_rms")
    bad_steps: set[int] = set()
    if not model_nf.empty:
        bad_steps |= set(model_nf.index[(model_nf.fillna(0).to_numpy() > 0).any(axis=1)])
        norm = data.wide(Level.MODEL, "grad_norm")
        bad_steps |= set(norm.index[~np.isfinite(norm.to_numpy(dtype=float)).all(axis=1)])
    if not act.empty:
        bad_steps |= set(act.index[~np.isfinite(act.to_numpy(dtype=float)).all(axis=1)])
    if not bad_steps:
        return []
    skipped = data.wide(Level.MODEL, "skipped")
    skipped_steps = set(skipped.index[skipped.iloc[:, 0] > 0]) if not skipped.empty else set()
    if skipped_steps and bad_steps <= skipped_steps:
        n_rec = data.n_steps
        sev = "warning" if len(bad_steps) > max(3, 0.05 * n_rec) else "info"
        return [Finding("amp_skipped_steps", sev,
                        f"The loss scaler skipped {len(bad_steps)} of {n_rec} recorded steps for non-finite gradients; "
                        "a few while the scale settles are normal, many mean the loss or a layer overflows in low "
                        "precision.", steps=sorted(bad_steps), measured={"skipped_steps": float(len(bad_steps))})]
    step = min(bad_steps - skipped_steps) if bad_steps - skipped_steps else min(bad_steps)
    forward_origin = backward_origin = None
    details = []
    row = data.at_step(Level.MODULE, "act_rms", step)
    if row is not None:
        nonblock = [c for c in row.index if c not in data.blocks]
        bad = [c for c in nonblock if not math.isfinite(row[c])]
        if bad:
            forward_origin = min(bad, key=lambda c: data.depth.get(c, 0))
            details.append(f"in the forward pass they first appear at the output of '{display_name(forward_origin)}'")
    row = data.at_step(Level.MODULE, "out_grad_nonfinite", step)
    if row is not None:
        cols = [c for c in row.index if c not in data.blocks]
        cols.sort(key=lambda c: data.depth.get(c, 0))
        bad = [c for c in cols if not (row[c] == 0)]
        if bad:
            deepest = max(bad, key=lambda c: data.depth.get(c, 0))
            after = [c for c in cols if data.depth.get(c, 0) > data.depth.get(deepest, 0)]
            if after:
                backward_origin = after[0]
                details.append(f"in the backward pass they first appear in '{display_name(backward_origin)}' "
                               "(its output gradient was finite, the gradient it passed back was not)")
            elif forward_origin is None:
                backward_origin = deepest
                details.append(f"the gradient arriving at the last module '{display_name(deepest)}' was already "
                               "non-finite (the loss or its gradient)")
    if not details:
        row = data.at_step(Level.LAYER, "grad_nonfinite", step)
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
    ratio is unknown are left out."""
    n = int((~np.isnan(positive(df.to_numpy())).all(axis=0)).sum()) if not df.empty else 0
    if n < 2:
        return pd.Series(dtype=float), pd.Series(dtype=float)
    ratio = first_last_ratios(df)
    ratio = ratio[np.isfinite(ratio.to_numpy())]
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = ratio ** (1.0 / (n - 1))
    return ratio, gain


def gradient_scale(data: RunData, th: Thresholds) -> list[Finding]:
    findings = []
    where, prof = data.backward_profile()
    if prof.empty or prof.shape[1] < 2:
        return findings
    ratio, gain = _profile_ratio(prof)
    if ratio.empty:
        return findings
    med_ratio = float(ratio.median())
    med_gain = float(gain.median())
    n = prof.shape[1]
    first, last = first_last_columns(prof)
    first_name, last_name = display_name(first), display_name(last)
    measured = {"first_over_last": med_ratio, "gain_per_step_back": med_gain, "depth": float(n)}
    vanishing = med_ratio < 1 / th.vanish_ratio or (n >= th.min_depth and med_gain < th.gain_low)
    if vanishing:
        sev = "error" if med_ratio < 1 / th.vanish_ratio_error else "warning"
        findings.append(Finding(
            "vanishing_gradients", sev,
            f"Gradients vanish toward the input: the {where} gradient at '{first_name}' is {_fmt(1 / med_ratio if med_ratio > 0 else math.inf)} times "
            f"smaller than at '{last_name}' (median over steps; {_fmt(med_gain)} per {where} going back). Use residual "
            "connections, normalization, ReLU-family activations with He initialization, or a shallower network.",
            layers=[first, last], steps=list(map(int, ratio.index[(ratio < 1 / th.vanish_ratio) | (gain < th.gain_low)]))[:50],
            measured=measured))
    elif med_ratio > th.explode_ratio:
        sev = "error" if med_ratio > th.explode_ratio_error else "warning"
        findings.append(Finding(
            "exploding_gradients", sev,
            f"Gradients grow toward the input: the {where} gradient at '{first_name}' is {_fmt(med_ratio)} times larger "
            f"than at '{last_name}' ({_fmt(med_gain)} per {where} going back), as in deep batch-normed plain networks at "
            "initialization (Yang et al. 2019). Use residual connections, a smaller learning rate or gradient clipping.",
            layers=[first, last], steps=list(map(int, ratio.index[ratio > th.explode_ratio]))[:50], measured=measured))
    total = data.wide(Level.MODEL, "grad_norm")
    total = total.iloc[:, 0].astype(float) if not total.empty else pd.Series(dtype=float)
    total = total[np.isfinite(total)]
    if len(total) >= 8:
        q = max(len(total) // 4, 2)
        early, late = float(total.iloc[:q].median()), float(total.iloc[-q:].median())
        if early > 0 and late / early > th.global_growth:
            findings.append(Finding(
                "growing_gradient_norm", "warning",
                f"The model's gradient norm grew {_fmt(late / early)} times during training (median of the first "
                f"quarter {_fmt(early)}, last quarter {_fmt(late)}): training is diverging; lower the learning rate "
                "or clip gradients.", steps=[int(total.index[0]), int(total.index[-1])],
                measured={"early_median": early, "late_median": late}))
    return findings


def forward_signal(data: RunData, th: Thresholds) -> list[Finding]:
    where, prof = data.forward_profile()
    if prof.empty or prof.shape[1] < 2:
        return []
    df = _finite_rows(prof.dropna(axis=1, how="all"))
    if df.empty or df.shape[1] < 2:
        return []
    growth = (df.iloc[:, -1] / df.iloc[:, 0]).astype(float)
    first, last = df.columns[0], df.columns[-1]
    first_name, last_name = display_name(first), display_name(last)
    high, low = float(growth.max()), float(growth.min())
    if high > th.forward_explode:
        sev = "error" if high > th.forward_explode_error else "warning"
        steps = [int(s) for s in growth.index[growth > th.forward_explode]]
        return [Finding(
            "exploding_forward", sev,
            f"The forward signal explodes: the RMS of the {where} output grows up to {_fmt(high)} times from "
            f"'{first_name}' to '{last_name}' (its variance {_fmt(high * high)} times; at step {steps[0]}). Unnormalized "
            "residual networks add a branch's variance at every block; use normalization, scale the branches down "
            "(Fixup, SkipInit) or zero-initialize each branch's last layer.",
            layers=[first, last], steps=steps[:50],
            measured={"last_over_first_rms": high, "depth": float(df.shape[1])})]
    if low < th.forward_vanish:
        steps = [int(s) for s in growth.index[growth < th.forward_vanish]]
        return [Finding(
            "vanishing_forward", "warning",
            f"The forward signal fades: the RMS of the {where} output shrinks up to {_fmt(1 / low)} times from "
            f"'{first_name}' to '{last_name}' (at step {steps[0]}). Check the initialization (He for ReLU) or add normalization.",
            layers=[first, last], steps=steps[:50],
            measured={"last_over_first_rms": low, "depth": float(df.shape[1])})]
    return []


def dead_units(data: RunData, th: Thresholds) -> list[Finding]:
    zf = data.wide(Level.LAYER, "grad_zero_frac")
    if zf.empty:
        return []
    med = zf.median()
    dead = med[med >= th.dead_frac]
    if dead.empty:
        return []
    worst_layer = dead.idxmax()
    return [Finding(
        "dead_units", "warning",
        f"{len(dead)} layer(s) have mostly zero gradients (up to {_fmt(100 * float(dead.max()))}% of "
        f"'{display_name(worst_layer)}', "
        "median over steps): their units are dead (ReLU stuck at zero) or unused. Try a lower learning rate, "
        "LeakyReLU/GELU, or check the initialization and biases.",
        layers=list(dead.index), measured={k: float(v) for k, v in dead.items()})]


def missing_gradients(data: RunData, th: Thresholds) -> list[Finding]:
    missing = data.wide(Level.PARAM, "grad_missing")
    if missing.empty:
        return []
    n_steps = data.n_steps
    counts = missing.fillna(0).sum()
    never = counts[counts >= n_steps]
    if never.empty:
        return []
    return [Finding(
        "no_gradient", "warning",
        f"{len(never)} trainable parameter(s) never received a gradient in {n_steps} recorded steps: they are "
        "unused in the forward pass or cut off by detach()/no_grad; freeze them (requires_grad=False) or fix the "
        "graph.", layers=list(never.index), measured={"parameters": float(len(never))})]


def update_ratios(data: RunData, th: Thresholds) -> list[Finding]:
    ur = data.wide(Level.LAYER, "update_ratio")
    if ur.empty:
        return []
    med = ur.replace([np.inf, -np.inf], np.nan).median()
    med = med.dropna()
    findings = []
    low = med[med < th.update_low]
    high = med[med > th.update_high]
    if not high.empty:
        findings.append(Finding(
            "update_ratio_high", "warning",
            f"{len(high)} layer(s) change by more than {_fmt(th.update_high)} of their norm per step (up to "
            f"{_fmt(float(high.max()))} at '{high.idxmax()}'; about 1e-3 is customary): the learning rate is too "
            "high for them.", layers=list(high.index), measured={k: float(v) for k, v in high.items()}))
    if not low.empty:
        findings.append(Finding(
            "update_ratio_low", "warning",
            f"{len(low)} layer(s) change by less than {_fmt(th.update_low)} of their norm per step (down to "
            f"{_fmt(float(low.min()))} at '{low.idxmin()}'; about 1e-3 is customary): they barely learn; raise the "
            "learning rate or check their gradients.", layers=list(low.index),
            measured={k: float(v) for k, v in low.items()}))
    return findings


def residual_branches(data: RunData, th: Thresholds) -> list[Finding]:
    skip = data.wide(Level.BLOCK, "skip_grad_norm")
    branch = data.wide(Level.BLOCK, "branch_grad_norm")
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


RULES = (nonfinite, gradient_scale, forward_signal, dead_units, missing_gradients, update_ratios, residual_branches)

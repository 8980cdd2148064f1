"""Calibrate the doctor on the healthy population and measure it on the fault matrix.

Reads the runs recorded by ``doctor_population.py record`` and ``doctor_faults.py
record``, judges each at 5, 20 and 100 steps (healthy; a view of the run's first k steps)
or at 20 (faults), and writes

- ``benchmarks/results/doctor_measures.csv``: every rule's statistic
  (:func:`gradsight.diagnosis.measure`) and the codes flagged, per run and step count;
- the false-alarm rates (all families; fitted on half of the families and held out on
  the other half, both ways), the thresholds each half would pick (the healthy extreme
  times a stated margin), recall per fault kind, confusion tables per code and per family;
- one figure per statistic, healthy vs faults with the threshold drawn
  (``docs/figures/doctor_*.png``), and ``docs/diagnosis-calibration.md`` holding the tables.

    python benchmarks/doctor_calibrate.py --population runs/pop --faults runs/faults
    python benchmarks/doctor_calibrate.py --measures benchmarks/results/doctor_measures.csv  # tables only

The regeneration takes a few minutes once the runs exist (recording them: the two
scripts' ``record`` commands, about an hour on two cores).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from doctor_population import CHECKPOINTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FAULT_STEPS = 20


@dataclass(frozen=True)
class Stat:
    """One rule statistic and the threshold it is compared with.

    Attributes:
        column: the statistic's key in :func:`gradsight.diagnosis.measure`.
        threshold: the :class:`~gradsight.Thresholds` field.
        sick_when: ``"above"`` or ``"below"`` the threshold.
        log: the statistic is a log10 and the threshold a ratio (compared as log10).
        code: the finding it raises.
        margin: how far beyond the healthy extreme a threshold must sit (a factor; for a
            log10 statistic, in decades).
    """

    column: str
    threshold: str
    sick_when: str
    code: str
    log: bool = False
    margin: float = 3.0

    def limit(self, th) -> float:
        value = getattr(th, self.threshold)
        if self.threshold == "forward_vanish":
            return math.log10(value)
        if self.log:
            value = math.log10(value)
            return -value if self.sick_when == "below" else value
        if self.threshold == "branch_share_low" and self.sick_when == "above":
            return 1 - value
        return value


STATS = [
    Stat("grad_depth_log10_min", "vanish_ratio", "below", "vanishing_gradients", log=True, margin=0.5),
    Stat("grad_gain_min", "gain_low", "below", "vanishing_gradients", margin=1.1),
    Stat("grad_depth_log10_max", "explode_ratio", "above", "exploding_gradients", log=True, margin=0.5),
    Stat("grad_size", "grad_size_high", "above", "exploding_gradients"),
    Stat("grad_size", "grad_size_low", "below", "vanishing_gradients"),
    Stat("forward_log10_layer", "forward_explode", "above", "exploding_forward", log=True, margin=0.5),
    Stat("forward_log10_stream", "forward_explode", "above", "exploding_forward", log=True, margin=0.5),
    Stat("forward_log10_layer", "forward_vanish", "below", "vanishing_forward", log=True, margin=0.5),
    Stat("dead_frac_max", "dead_frac", "above", "dead_units", margin=1.5),
    Stat("update_max", "update_high", "above", "update_ratio_high"),
    Stat("update_min", "update_low", "below", "update_ratio_low"),
    Stat("branch_share_min", "branch_share_low", "below", "idle_branch"),
    Stat("norm_growth", "global_growth", "above", "growing_gradient_norm"),
]


# -- measuring ------------------------------------------------------------------------------

def _index(runs: Path) -> list[dict]:
    entries: dict[str, dict] = {}
    path = runs / "index.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                e = json.loads(line)
                entries[e["name"]] = e
    return list(entries.values())


def measure_runs(runs: Path, kind: str, checkpoints: tuple[int, ...]) -> list[dict]:
    """One row per run and step count: its statistics and flagged codes (a crash while
    recording or judging is a row with ``error``)."""
    import gradsight as gs
    from gradsight.diagnosis import measure
    from gradsight.store.view import RunView

    expected_of = {}
    if kind == "fault":
        from doctor_faults import FAULTS

        expected_of = {f.name: f for f in FAULTS}
    rows = []
    for entry in _index(runs):
        base = {k: entry.get(k) for k in ("name", "family", "source", "data", "fault", "net")}
        base["kind"] = kind
        if entry.get("fault") in expected_of:
            base["expected"] = " ".join(sorted(expected_of[entry["fault"]].expected_of(entry["net"])))
        if entry.get("error"):
            rows.append({**base, "steps": max(checkpoints), "error": entry["error"]})
            continue
        for k in checkpoints:
            row = {**base, "steps": k}
            start = time.perf_counter()
            try:
                with RunView(runs / entry["name"], until=k - 1) as view:
                    if len(view.steps) < k and k != min(checkpoints):
                        continue  # a shorter recording: no view at k steps
                    row.update(measure(view))
                    findings = gs.diagnose(view)
                row["flagged"] = " ".join(sorted({f.code for f in findings if f.severity >= "warning"}))
                row["errors"] = " ".join(sorted({f.code for f in findings if f.severity >= "error"}))
                row["info"] = " ".join(sorted({f.code for f in findings if f.severity == "info"}))
                row["error"] = None
            except Exception as exc:  # noqa: BLE001 - a crash of the doctor is a result
                row["error"] = f"{type(exc).__name__}: {exc}"
                print(traceback.format_exc(), file=sys.stderr)
            row["seconds"] = round(time.perf_counter() - start, 2)
            rows.append(row)
        print(f"{kind} {entry['name']}: measured", file=sys.stderr, flush=True)
    return rows


# -- judging ------------------------------------------------------------------------------

def half_of(family: str) -> int:
    """The cross-validation half of a family (0 or 1), fixed by a hash of its name."""
    return zlib.crc32(family.encode()) % 2


def clean(df: pd.DataFrame) -> pd.Series:
    """Healthy rows with no finding at warning or worse and no crash."""
    return df["error"].isna() & (df["flagged"].fillna("") == "")


def false_alarms(healthy: pd.DataFrame) -> pd.DataFrame:
    """Per step count: networks, clean ones, the share clean, per cross-validation half."""
    out = []
    for k, part in healthy.groupby("steps"):
        row = {"steps": int(k), "networks": len(part), "clean": int(clean(part).sum())}
        for h in (0, 1):
            sub = part[part["family"].map(half_of) == h]
            row[f"clean_half{h}"] = f"{int(clean(sub).sum())}/{len(sub)}"
        out.append(row)
    df = pd.DataFrame(out)
    if not df.empty:
        df["clean_share"] = (df["clean"] / df["networks"]).round(3)
    return df


def fit(healthy: pd.DataFrame, stat: Stat) -> float:
    """The threshold the healthy rows call for: their extreme, beyond it by the margin."""
    values = healthy[stat.column].astype(float)
    values = values[np.isfinite(values)]
    if values.empty:
        return math.nan
    if stat.sick_when == "above":
        extreme = float(values.max())
        return extreme + stat.margin if stat.log else extreme * stat.margin
    extreme = float(values.min())
    return extreme - stat.margin if stat.log else extreme / stat.margin


def cross_validation(healthy: pd.DataFrame, th) -> pd.DataFrame:
    """Per statistic: the threshold in use, the one each half of the families would pick,
    and how many healthy rows of the other half exceed the threshold fitted without them."""
    rows = []
    for stat in STATS:
        used = stat.limit(th)
        row = {"statistic": stat.column, "threshold": stat.threshold, "sick when": stat.sick_when,
               "in use": used, "healthy extreme": fit(healthy, Stat(**{**stat.__dict__, "margin": 0 if stat.log else 1}))}
        for h in (0, 1):
            train = healthy[healthy["family"].map(half_of) == h]
            test = healthy[healthy["family"].map(half_of) != h]
            fitted = fit(train, stat)
            values = test[stat.column].astype(float)
            bad = values > fitted if stat.sick_when == "above" else values < fitted
            row[f"fit on half {h}"] = fitted
            row[f"held-out alarms (half {1 - h})"] = f"{int(bad.sum())}/{int(np.isfinite(values).sum())}"
        beyond = healthy[stat.column].astype(float)
        beyond = beyond > used if stat.sick_when == "above" else beyond < used
        row["healthy beyond in-use"] = int(beyond.sum())
        rows.append(row)
    return pd.DataFrame(rows)


def recall(faults: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per fault kind, per family): pairs, caught with an expected code, crashes, and the
    codes flagged instead."""
    faults = faults.copy()
    faults["caught"] = [
        e is None and bool(set(str(exp).split()) & set(str(fl or "").split()))
        for e, exp, fl in zip(faults["error"].where(faults["error"].notna(), None), faults["expected"],
                              faults["flagged"])]
    per_kind = []
    for fault, part in faults.groupby("fault"):
        missed = part[~part["caught"]]
        per_kind.append({"fault": fault, "expected": part["expected"].iloc[0], "pairs": len(part),
                         "caught": int(part["caught"].sum()),
                         "missed (flagged instead)": "; ".join(
                             f"{n}: {fl or 'nothing'}" for n, fl in zip(missed["net"], missed["flagged"].fillna("")))})
    per_family = []
    for family, part in faults.groupby("family"):
        per_family.append({"family": family, "pairs": len(part), "caught": int(part["caught"].sum())})
    return pd.DataFrame(per_kind), pd.DataFrame(per_family)


def confusion(healthy: pd.DataFrame, faults: pd.DataFrame) -> pd.DataFrame:
    """Per finding code: raised on healthy runs (false alarms, at any step count), raised on
    faults expecting it (true), on faults expecting another code (wrong code), and missed."""
    codes = sorted({c for s in pd.concat([healthy["flagged"], faults["flagged"], faults["expected"]]).fillna("")
                    for c in str(s).split()})
    rows = []
    for code in codes:
        has = lambda s: code in str(s or "").split()  # noqa: E731
        expected = faults["expected"].map(has)
        flagged = faults["flagged"].map(has)
        rows.append({"code": code, "healthy runs flagged": int(healthy["flagged"].map(has).sum()),
                     "faults expecting it": int(expected.sum()), "caught": int((expected & flagged).sum()),
                     "flagged on other faults": int((~expected & flagged).sum()),
                     "missed": int((expected & ~flagged).sum())})
    return pd.DataFrame(rows)


# -- output ---------------------------------------------------------------------------------

def _md(df: pd.DataFrame) -> str:
    def cell(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.3g}"
        return str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + " --- |" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def figures(healthy: pd.DataFrame, faults: pd.DataFrame, th, out: Path) -> list[Path]:
    """One strip figure per statistic: healthy runs (by step count) and fault runs (by
    whether that statistic's code was expected), the threshold as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stat in STATS:
        if stat.column not in healthy.columns:
            continue
        fig, ax = plt.subplots(figsize=(7, 2.6))
        groups = [(f"healthy, {k} steps", healthy[healthy["steps"] == k][stat.column]) for k in CHECKPOINTS]
        if not faults.empty and stat.column in faults.columns:
            exp = faults["expected"].fillna("").map(lambda s: stat.code in s.split())
            groups += [(f"faults expecting {stat.code}", faults[exp][stat.column]),
                       ("other faults", faults[~exp][stat.column])]
        rng = np.random.default_rng(0)
        for i, (label, values) in enumerate(groups):
            v = values.astype(float)
            v = v[np.isfinite(v)]
            if not stat.log and (v > 0).all() and len(v):
                ax.set_xscale("log")
            ax.scatter(v, i + rng.uniform(-0.2, 0.2, len(v)), s=10, alpha=0.6,
                       color="tab:green" if label.startswith("healthy") else (
                           "tab:red" if label.startswith("faults expecting") else "tab:gray"))
        limit = stat.limit(th)
        ax.axvline(limit, color="black", lw=1, ls="--")
        ax.set_yticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
        ax.set_title(f"{stat.column} (threshold {stat.threshold}: sick {stat.sick_when} the line)", fontsize=9)
        fig.tight_layout()
        path = out / f"doctor_{stat.threshold}_{stat.column}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=Path, help="runs recorded by doctor_population.py record")
    parser.add_argument("--faults", type=Path, help="runs recorded by doctor_faults.py record")
    parser.add_argument("--measures", type=Path, default=RESULTS / "doctor_measures.csv",
                        help="the statistics table (written when runs are given, read otherwise)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where the tables and figures go")
    args = parser.parse_args(argv)
    import gradsight as gs

    if args.population or args.faults:
        rows = []
        if args.population:
            rows += measure_runs(args.population, "healthy", CHECKPOINTS)
        if args.faults:
            rows += measure_runs(args.faults, "fault", (FAULT_STEPS,))
        args.measures.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(args.measures, index=False)
    df = pd.read_csv(args.measures)
    for col in ("error", "flagged", "expected", "fault", "net", "family"):
        if col not in df.columns:
            df[col] = None
    df["error"] = df["error"].where(df["error"].notna(), None)
    healthy, faults = df[df["kind"] == "healthy"], df[df["kind"] == "fault"]
    th = gs.Thresholds()
    fa = false_alarms(healthy)
    cv = cross_validation(healthy[healthy["error"].isna()], th)
    per_kind, per_family = recall(faults) if not faults.empty else (pd.DataFrame(), pd.DataFrame())
    conf = confusion(healthy, faults)
    crashes = df[df["error"].notna()][["kind", "name", "steps", "error"]]
    flagged = healthy[healthy["flagged"].fillna("") != ""][["name", "family", "steps", "flagged"]]
    figs = figures(healthy, faults, th, args.docs / "figures")
    n_nets = healthy["name"].nunique()
    n_fam = healthy["family"].nunique()
    caught = int(per_kind["caught"].sum()) if not per_kind.empty else 0
    pairs = int(per_kind["pairs"].sum()) if not per_kind.empty else 0
    parts = [
        "<!-- generated by benchmarks/doctor_calibrate.py; do not edit by hand -->",
        "# The doctor's calibration, measured",
        "",
        f"{n_nets} healthy networks in {n_fam} families, judged at {', '.join(map(str, CHECKPOINTS))} steps; "
        f"{pairs} fault-injection pairs in {per_kind.shape[0] if not per_kind.empty else 0} fault kinds, "
        f"judged at {FAULT_STEPS} steps: **{caught}/{pairs} caught with the expected code**.",
        "",
        "## False alarms on healthy networks",
        "",
        "A network is clean when no finding is `warning` or worse. The halves split the families "
        "(crc32 of the family name): every threshold below is checked on the half it was not fitted on.",
        "",
        _md(fa),
        "",
        "Healthy runs flagged:" if not flagged.empty else "No healthy run was flagged.",
        "",
        _md(flagged) if not flagged.empty else "",
        "",
        "## Thresholds against the healthy distribution (family cross-validation)",
        "",
        "`in use`: the default threshold (log10 for ratio statistics); `healthy extreme`: the most "
        "extreme healthy value; `fit on half h`: that extreme over half h's families beyond it by the "
        "stated margin; `held-out alarms`: healthy runs of the other half beyond that fitted threshold.",
        "",
        _md(cv),
        "",
        "## Faults: recall per kind",
        "",
        _md(per_kind) if not per_kind.empty else "(no fault runs)",
        "",
        "## Faults: recall per family",
        "",
        _md(per_family) if not per_family.empty else "(no fault runs)",
        "",
        "## Confusion per code",
        "",
        _md(conf),
        "",
        "## Crashes",
        "",
        _md(crashes) if not crashes.empty else "None.",
        "",
        "## Figures",
        "",
        *[f"![{p.stem}](figures/{p.name})" for p in figs],
        "",
    ]
    target = args.docs / "diagnosis-calibration.md"
    target.write_text("\n".join(parts))
    print("\n".join(parts[:12]))
    print(f"wrote {target} and {len(figs)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())

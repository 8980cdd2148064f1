"""Plain-text summaries of runs (used by ``gradsight info``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from gradsight.store.reader import open_run


def _fmt_time(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def run_info(path: str | Path, *, stat: str = "grad_norm", top: int = 3) -> str:
    """A short multi-line summary of a run."""
    with open_run(path) as run:
        meta = run.meta
        steps = run.steps()
        params = run.params()
        layers = run.layers()
        summary = run.layer_summary(stat)
    lines = [
        f"run:        {run.path}",
        f"model:      {meta.get('model_class', '?')}",
        f"status:     {meta.get('status', '?')}"
        + (f" ({meta['error']})" if meta.get("error") else ""),
        f"started:    {_fmt_time(meta.get('start_time'))}   ended: {_fmt_time(meta.get('end_time'))}",
        f"parameters: {int(meta.get('num_params', 0)):,} ({int(meta.get('num_trainable', 0)):,} trainable, "
        f"{len(params)} tensors)",
        f"layers:     {len(layers)} (depth order from {meta.get('depth_source', '?')})",
        f"steps:      {len(steps)} recorded" + (f", {steps[0]}..{steps[-1]}" if steps else ""),
    ]
    if not summary.empty:
        ranked = summary.dropna(subset=["mean"]).sort_values("mean")
        width = max(len(n or "(root)") for n in ranked["name"]) if len(ranked) else 10

        def rows(df):
            return [f"  {int(r.depth):>4}  {(r.name or '(root)'):<{width}}  {r.mean:.3e}" for r in df.itertuples()]

        lines.append(f"smallest mean {stat} (depth, layer, value):")
        lines += rows(ranked.head(top))
        lines.append(f"largest mean {stat}:")
        lines += rows(ranked.tail(top).iloc[::-1])
    return "\n".join(lines)

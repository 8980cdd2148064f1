"""TensorBoard event files, read back with TensorBoard's own event reader."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.cli import main
from gradsight.integrations._tap import scalar_tag

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402

from gradsight.integrations.tensorboard import export_tensorboard, live  # noqa: E402


def _read(log_dir) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0}
    )
    acc.Reload()
    return acc


def _scalars(acc, tag) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def _stored(run_dir, level, name, stat) -> dict[int, float]:
    df = gs.open_run(run_dir).frame(level=level, name=name, stat=stat)
    return dict(zip(df.step.astype(int), df.value))


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for step, w in want.items():
        assert math.isclose(got[step], w, rel_tol=1e-6) or (math.isnan(w) and math.isnan(got[step]))


def test_scalar_tags():
    assert scalar_tag("layer", "features.0", "grad_norm") == "layer/grad_norm/features.0"
    assert scalar_tag("model", "", "update_ratio") == "model/update_ratio"
    assert scalar_tag("metric", "loss", "loss") == "metric/loss"
    assert scalar_tag("layer", "", "grad_norm") == "layer/grad_norm/(model)"


def test_export_writes_every_layer_and_model_scalar(tiny_run, tmp_path):
    counts = export_tensorboard(tiny_run, tmp_path / "tb")
    acc = _read(tmp_path / "tb")
    tags = set(acc.Tags()["scalars"])
    run = gs.open_run(tiny_run)
    frame = run.frame()
    want = {scalar_tag(r.level, r.name, r.stat) for r in frame.itertuples() if r.level != "param"}
    assert tags == want
    assert counts["scalars"] == int((frame.level != "param").sum())
    _assert_same(_scalars(acc, "layer/grad_norm/0"), _stored(tiny_run, "layer", "0", "grad_norm"))
    _assert_same(_scalars(acc, "model/update_ratio"), _stored(tiny_run, "model", "", "update_ratio"))
    _assert_same(_scalars(acc, "metric/loss"), _stored(tiny_run, "metric", "loss", "loss"))
    # histograms: the distribution of each statistic across the 4 parameters at each step
    hist = acc.Histograms("param_distribution/grad_norm")
    assert [h.step for h in hist] == run.steps()
    first = frame[(frame.step == 0) & (frame.level == "param") & (frame.stat == "grad_norm")].value
    assert hist[0].histogram_value.num == len(first) == 4
    assert math.isclose(hist[0].histogram_value.sum, first.sum(), rel_tol=1e-5)
    assert math.isclose(hist[0].histogram_value.max, first.max(), rel_tol=1e-5)


def test_export_filters_levels_and_stats(tiny_run, tmp_path):
    export_tensorboard(tiny_run, tmp_path / "tb", levels=["param"], stats=["grad_norm"], histograms=False)
    acc = _read(tmp_path / "tb")
    names = {n for n, _ in gs.open_run(tiny_run).frame(level="param").groupby("name")}
    assert set(acc.Tags()["scalars"]) == {f"param/grad_norm/{n}" for n in names}
    assert acc.Tags()["histograms"] == []


def test_cli_export_tensorboard(capsys, tiny_run, tmp_path):
    out = tmp_path / "tb"
    assert main(["export", str(tiny_run), "--format", "tensorboard", "-o", str(out), "--stat", "grad_norm"]) == 0
    assert "scalars" in capsys.readouterr().out
    tags = set(_read(out).Tags()["scalars"])
    assert "model/grad_norm" in tags and "metric/loss" in tags
    assert not any(t.endswith("update_ratio") for t in tags)


def test_cli_export_tensorboard_to_a_file_is_a_one_line_error(capsys, tiny_run, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["export", str(tiny_run), "--format", "tensorboard", "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradsight: error:") and err.count("\n") == 1


def test_cli_export_tensorboard_of_a_missing_run(capsys, tmp_path):
    assert main(["export", str(tmp_path / "nope"), "--format", "tensorboard", "-o", str(tmp_path / "tb")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_live_writes_what_is_recorded_while_training(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "run", optimizer=optimizer, backend="eager", update_ratio=True) as monitor:
        board = live(monitor, tmp_path / "tb", flush_secs=1)
        for _ in range(3):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            loss.backward()
            monitor.step(loss)
            optimizer.step()
            optimizer.zero_grad()
        board.flush()
        during = _read(tmp_path / "tb")
        assert _scalars(during, "layer/grad_norm/2").keys() == {0, 1, 2}  # readable before the run ends
    acc = _read(tmp_path / "tb")  # closed with the monitor: the last update ratio is there too
    for tag, key in [("layer/grad_norm/0", ("layer", "0", "grad_norm")),
                     ("model/update_ratio", ("model", "", "update_ratio")),
                     ("metric/loss", ("metric", "loss", "loss"))]:
        _assert_same(_scalars(acc, tag), _stored(tmp_path / "run", *key))
    assert len(acc.Histograms("param_distribution/grad_norm")) == 3


def test_a_failing_listener_never_reaches_the_training_loop(tmp_path, caplog):
    model = nn.Linear(3, 2)
    calls = []

    def broken(step, keys, values):
        calls.append(step)
        raise RuntimeError("listener bug")

    with gs.watch(model, tmp_path / "run", backend="eager") as monitor:
        monitor.add_listener(broken)
        for _ in range(2):
            model(torch.randn(2, 3)).sum().backward()
            monitor.step()
    assert calls == [0, 1]
    assert sum("listener bug" in r.getMessage() for r in caplog.records) == 1
    assert gs.open_run(tmp_path / "run").steps() == [0, 1]


def _log2_events(acc, tag) -> dict[int, dict[int, int]]:
    """``{step: {bucket: count}}`` of a log2 histogram tag (bucket limit e + 1 holds bucket e)."""
    out = {}
    for ev in acc.Histograms(tag):
        h = ev.histogram_value
        out[ev.step] = {int(lim) - 1: int(c) for lim, c in zip(h.bucket_limit, h.bucket) if c}
    return out


def _log2_stored(run_dir, level, name) -> dict[int, dict[int, int]]:
    df = gs.open_run(run_dir).histograms(level=level, name=name)
    return {int(s): dict(zip(g.log2_bucket.tolist(), g["count"].tolist())) for s, g in df.groupby("step")}


def test_log2_histograms_exported_and_written_live(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    with gs.watch(model, tmp_path / "run", histograms=2) as monitor:
        live(monitor, tmp_path / "live", flush_secs=1)
        for _ in range(4):
            model.zero_grad()
            (model(torch.randn(8, 4)).pow(2).mean() * 1e-3).backward()
            monitor.step()
    export_tensorboard(tmp_path / "run", tmp_path / "export")
    for log_dir in ("live", "export"):
        acc = _read(tmp_path / log_dir)
        assert {"grad_log2_abs/0", "grad_log2_abs/2", "grad_log2_abs/model"} <= set(acc.Tags()["histograms"])
        for tag, key in [("grad_log2_abs/0", ("layer", "0")), ("grad_log2_abs/model", ("model", ""))]:
            got = _log2_events(acc, tag)
            assert got == _log2_stored(tmp_path / "run", *key) and set(got) == {0, 2}

"""``gs.watch(..., resume=...)``: a run continued in another monitor (another process) has
one step axis, each step written once, with the values of every part.

References are computed apart from gradsight: the model's gradient norm as a float64 sum
over ``p.grad`` and the loss as the training computed it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight._errors import RunError
from gradsight.store.schema import DB_NAME

SOURCE_ROOT = str(Path(gs.__file__).resolve().parents[1])


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def _train(model: nn.Module, optimizer, monitor, steps: range, explicit: bool = False) -> dict[int, tuple[float, float]]:
    """Train ``steps`` (batches drawn from each step's own seed); returns step -> (loss, float64
    grad norm) as computed here."""
    reference = {}
    for step in steps:
        g = torch.Generator().manual_seed(step)
        x = torch.randn(6, 4, generator=g)
        loss = model(x).pow(2).mean()
        loss.backward()
        norm = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in model.parameters()))
        reference[step] = (loss.item(), norm)
        monitor.step(loss, step=step) if explicit else monitor.step(loss)
        optimizer.step()
        optimizer.zero_grad()
    return reference


def _recorded(run_dir: Path) -> dict[int, tuple[float, float]]:
    run = gs.open_run(run_dir)
    norms = run.series("grad_norm", level="model")[""]
    loss = run.series("loss", level="metric")["loss"]
    return {int(s): (float(loss[s]), float(norms[s])) for s in run.steps()}


def _assert_matches(recorded: dict, reference: dict) -> None:
    assert sorted(recorded) == sorted(reference)
    for step, (loss, norm) in reference.items():
        got_loss, got_norm = recorded[step]
        assert got_loss == pytest.approx(loss, rel=1e-6), step
        assert got_norm == pytest.approx(norm, rel=1e-5), step


def _series_rows(run_dir: Path) -> list[tuple]:
    """The series and the groups their values are packed in."""
    with closing(sqlite3.connect(run_dir / DB_NAME)) as conn:
        return (conn.execute("SELECT id, level, name, stat FROM series ORDER BY id").fetchall()
                + conn.execute("SELECT id, series, segments FROM series_groups ORDER BY id").fetchall())


def test_resume_true_continues_the_step_axis_after_the_last_recorded_step(tmp_path):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run_dir = tmp_path / "run"
    with gs.watch(model, run_dir, optimizer=optimizer, name="exp") as monitor:
        reference = _train(model, optimizer, monitor, range(4))
    series_before = _series_rows(run_dir)
    with gs.watch(model, run_dir, optimizer=optimizer, resume=True) as monitor:
        assert monitor.should_record() and monitor.resumption.start == 4
        reference |= _train(model, optimizer, monitor, range(4, 7))
    _assert_matches(_recorded(run_dir), reference)
    run = gs.open_run(run_dir)
    assert run.status == "finished" and run.name == "exp"  # the name given first is kept
    assert run.meta["steps_recorded"] == 7 and run.meta["step_calls"] == 7
    assert [r["step"] for r in run.meta["resumed"]] == [4]
    assert run.meta["resumed"][0]["previous_status"] == "finished"
    assert _series_rows(run_dir) == series_before  # the same series and groups, under the same ids


def test_the_schedule_goes_on_along_the_steps_of_the_run(tmp_path):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "run", every=3) as monitor:
        _train(model, optimizer, monitor, range(5))  # records 0, 3
    with gs.watch(model, tmp_path / "run", every=3, resume=True) as monitor:  # goes on at 4
        _train(model, optimizer, monitor, range(4, 10))  # records 6, 9
    assert gs.open_run(tmp_path / "run").steps() == [0, 3, 6, 9]


def test_a_step_before_the_resumed_runs_next_step_is_refused_and_nothing_is_written(tmp_path):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "run") as monitor:
        reference = _train(model, optimizer, monitor, range(3))
    monitor = gs.watch(model, tmp_path / "run", resume=True)
    model(torch.randn(2, 4)).sum().backward()
    with pytest.raises(ValueError, match=r"step=2 is before step 3.*up to step 2.*pass resume=S"):
        monitor.step(1.0, step=2)
    with pytest.raises(ValueError, match="step=0 is before step 3"):
        monitor.log({"val": 1.0}, step=0)
    monitor.close()
    _assert_matches(_recorded(tmp_path / "run"), reference)  # step 2 as the first part recorded it
    assert "val" not in gs.open_run(tmp_path / "run").stats("metric")


def test_resume_at_a_checkpoint_step_removes_the_later_steps_and_says_so_once(tmp_path):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "run", optimizer=optimizer, histograms=True) as monitor:
        reference = _train(model, optimizer, monitor, range(3))
        checkpoint = {k: v.clone() for k, v in model.state_dict().items()}
        _train(model, optimizer, monitor, range(3, 6))  # abandoned: the training goes back to step 3
    model.load_state_dict(checkpoint)
    with pytest.warns(UserWarning, match=r"at step 3 \(resume=3\) removes what it recorded from step 3 to 5: 3 "
                                         r"recorded step"):
        monitor = gs.watch(model, tmp_path / "run", optimizer=optimizer, histograms=True, resume=3)
    with monitor:
        reference |= _train(model, optimizer, monitor, range(3, 8), explicit=True)
    _assert_matches(_recorded(tmp_path / "run"), reference)
    run = gs.open_run(tmp_path / "run")
    assert sorted(run.histograms(level="model")["step"].unique()) == list(range(8))
    assert run.meta["resumed"][0]["steps_removed"] == 3 and run.meta["steps_recorded"] == 8


def test_resume_on_a_folder_without_a_run_starts_a_new_run(tmp_path):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, tmp_path / "new", resume=True) as monitor:
        reference = _train(model, optimizer, monitor, range(2))
    _assert_matches(_recorded(tmp_path / "new"), reference)
    assert "resumed" not in gs.open_run(tmp_path / "new").meta


@pytest.mark.parametrize("resume", [True, 5])
def test_resume_with_overwrite_is_an_error_naming_both(tmp_path, resume):
    with pytest.raises(ValueError, match=rf"overwrite=True replaces the run in run_dir and resume={resume} "
                                         "continues it; pass one of them"):
        gs.watch(_model(), tmp_path / "run", resume=resume, overwrite=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("resume", [-1, 1.5, "yes"])
def test_resume_takes_a_flag_or_a_step(tmp_path, resume):
    with pytest.raises(TypeError, match="resume must be True, False or a step"):
        gs.watch(_model(), tmp_path / "run", resume=resume)


def test_a_rerun_without_resume_or_overwrite_names_both(tmp_path):
    with gs.watch(_model(), tmp_path / "run"):
        pass
    with pytest.raises(RunError, match="pass overwrite=True to replace it, resume=True to continue it"):
        gs.watch(_model(), tmp_path / "run")


def test_resuming_another_models_run_is_refused_and_leaves_the_run_as_it_was(tmp_path):
    model = _model()
    with gs.watch(model, tmp_path / "run") as monitor:
        _train(model, torch.optim.SGD(model.parameters(), lr=0.1), monitor, range(2))
    before = gs.open_run(tmp_path / "run")
    meta, steps = dict(before.meta), before.steps()
    with pytest.raises(RunError, match=r"recorded from another model \(parameters only in the run: 0.weight, "
                                       r"0.bias, 2.weight and 1 more; only in this model: weight, bias\)"):
        gs.watch(nn.Linear(3, 3), tmp_path / "run", resume=True)
    after = gs.open_run(tmp_path / "run")
    assert after.steps() == steps
    assert {k: v for k, v in after.meta.items() if k not in ("pid", "host")} == \
        {k: v for k, v in meta.items() if k not in ("pid", "host")}


# -- a training killed with SIGKILL and resumed from its checkpoint in a new process ------------

#: Trains ``total`` steps, recording each with ``step=``; every 10th step saves a checkpoint
#: (model, optimizer, the next step) after ``monitor.flush()``. Each step's reference values,
#: computed apart from gradsight, are appended to a JSON-lines file before ``monitor.step``.
#: argv: run_dir checkpoint reference total resume(0/1) pause_s
TRAIN_SCRIPT = """
import json, math, sys, time
import torch
from torch import nn
import gradsight as gs

run_dir, ckpt, ref, total, resume, pause = sys.argv[1:7]
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
start = 0
if resume == "1":
    state = torch.load(ckpt)
    model.load_state_dict(state["model"]); optimizer.load_state_dict(state["optimizer"]); start = state["step"]
monitor = gs.watch(model, run_dir, optimizer=optimizer, resume=start if resume == "1" else False)
with open(ref, "a") as out:
    for step in range(start, int(total)):
        x = torch.randn(6, 4, generator=torch.Generator().manual_seed(step))
        loss = model(x).pow(2).mean()
        loss.backward()
        norm = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in model.parameters()))
        out.write(json.dumps([step, loss.item(), norm]) + "\\n"); out.flush()
        monitor.step(loss, step=step)
        optimizer.step(); optimizer.zero_grad()
        if (step + 1) % 10 == 0:
            monitor.flush()
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1}, ckpt)
        print("STEP", step, flush=True)
        time.sleep(float(pause))
monitor.close()
print("DONE", flush=True)
"""


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=SOURCE_ROOT)
    return subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
@pytest.mark.timeout(180)
def test_a_training_killed_mid_run_and_resumed_in_a_new_process_has_one_step_axis(tmp_path):
    run_dir, ckpt, ref = tmp_path / "run", tmp_path / "ckpt.pt", tmp_path / "reference.jsonl"
    total = 30
    first = _start(tmp_path, str(run_dir), str(ckpt), str(ref), str(total), "0", "0.3")
    try:
        for line in first.stdout:
            if line.strip() == "STEP 12":  # past the checkpoint of step 10
                break
        else:
            pytest.fail(f"the training ended before step 12 (rc={first.wait()}):\n{first.stderr.read()}")
        time.sleep(1.5)  # the store commits every second: steps after the checkpoint are on disk
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
        first.stdout.close()
        first.stderr.close()
    with gs.open_run(run_dir) as killed:
        assert killed.status == "running"  # SIGKILL: nothing could mark it
        killed_steps = killed.steps()
    assert killed_steps == list(range(len(killed_steps))) and 12 <= killed_steps[-1] < 19
    assert torch.load(ckpt)["step"] == 10

    second = _start(tmp_path, str(run_dir), str(ckpt), str(ref), str(total), "1", "0")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0 and "DONE" in out, err
    assert (f"resuming {run_dir} at step 10 (resume=10) removes what it recorded from step 10 to "
            f"{killed_steps[-1]}: {len(killed_steps) - 10} recorded step(s)") in err

    reference = {}
    for line in ref.read_text().splitlines():  # the resumed training's values replace the abandoned ones
        step, loss, norm = json.loads(line)
        reference[step] = (loss, norm)
    _assert_matches(_recorded(run_dir), reference)
    run = gs.open_run(run_dir)
    assert run.steps() == list(range(total)) and run.status == "finished"
    assert run.meta["resumed"][0]["step"] == 10 and run.meta["resumed"][0]["previous_status"] == "running"
    assert run.meta["steps_recorded"] == total


def test_a_store_of_another_schema_version_is_refused_and_left_as_it_was(tmp_path):
    model = _model()
    with gs.watch(model, tmp_path / "run") as monitor:
        _train(model, torch.optim.SGD(model.parameters(), lr=0.1), monitor, range(2))
    store = tmp_path / "run" / DB_NAME
    with closing(sqlite3.connect(store)) as conn, conn:
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    before = store.read_bytes()
    with pytest.raises(RunError, match="its store has schema version 3, and gradsight .* continues version 4 only"):
        gs.watch(model, tmp_path / "run", resume=True)
    assert store.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [DB_NAME]

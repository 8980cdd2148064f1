"""A recording process killed with SIGKILL leaves a store that opens cleanly and holds a
contiguous prefix of its steps. The recording runs in a real child process."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import gradsight as gs
from tests.store.helpers import integrity, store_files

#: The gradsight under test, for the child (which runs in another directory).
SOURCE_ROOT = str(Path(gs.__file__).resolve().parents[1])

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL"), pytest.mark.timeout(120)]

#: Seconds to wait for the child to start and record (importing torch takes a few).
START_TIMEOUT_S = 60.0

#: The spec: rows are committed at least every two seconds.
COMMIT_INTERVAL_S = 2.0

_CHILD_PRELUDE = """
import sys, time
import torch
from torch import nn
import gradsight as gs

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
monitor = gs.watch(model, sys.argv[1])

def train_step():
    model(torch.randn(5, 4)).pow(2).mean().backward()
    monitor.step()
    model.zero_grad()
"""

#: Records argv[2] steps, flushes nothing, says READY and waits to be killed.
RECORD_THEN_SLEEP = _CHILD_PRELUDE + """
for _ in range(int(sys.argv[2])):
    train_step()
print("READY", flush=True)
time.sleep(60)
"""

#: Records without pause until killed (or 60 s pass).
RECORD_FOREVER = _CHILD_PRELUDE + """
train_step()
print("RECORDING", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    train_step()
"""


class Child:
    """A recording child process whose stdout lines arrive on a queue (reads never block the test)."""

    def __init__(self, script: str, *args: str, cwd: Path) -> None:
        self.stderr_path = cwd / "child.stderr"
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=SOURCE_ROOT)
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", script, *args],
                cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
            )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("<EOF>")

    def wait_for(self, token: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                pytest.fail(f"child did not print {token} within {timeout} s; stderr:\n{self.stderr()}")
            if line == token:
                return
            if line == "<EOF>":
                pytest.fail(f"child exited (rc={self.proc.wait()}) before {token}; stderr:\n{self.stderr()}")

    def kill(self) -> None:
        assert self.proc.poll() is None, f"child exited early; stderr:\n{self.stderr()}"
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc.stdout.close()


@pytest.fixture
def spawn(tmp_path):
    children: list[Child] = []

    def start(script: str, *args: str) -> Child:
        child = Child(script, *args, cwd=tmp_path)
        children.append(child)
        return child

    yield start
    for child in children:
        child.cleanup()


#: Steps recorded by the child behind ``killed_run``.
KILLED_RUN_STEPS = 7


@pytest.fixture(scope="module")
def _killed_run_original(tmp_path_factory) -> Path:
    """A store whose process recorded 7 steps, slept 2.5 s and was killed with SIGKILL."""
    tmp = tmp_path_factory.mktemp("killed")
    child = Child(RECORD_THEN_SLEEP, str(tmp / "run"), str(KILLED_RUN_STEPS), cwd=tmp)
    try:
        child.wait_for("READY")
        time.sleep(COMMIT_INTERVAL_S + 0.5)
        child.kill()
    finally:
        child.cleanup()
    return tmp / "run"


@pytest.fixture
def killed_run(_killed_run_original, tmp_path) -> Path:
    """A private copy (database, -wal and -shm) of the store left by a killed process."""
    return Path(shutil.copytree(_killed_run_original, tmp_path / "run"))


def test_killed_after_recording_keeps_every_step_committed_by_the_timer(killed_run):
    assert sorted(store_files(killed_run)) == [
        "gradsight.sqlite", "gradsight.sqlite-reserve", "gradsight.sqlite-shm", "gradsight.sqlite-wal"]
    assert integrity(killed_run) == ["ok"]
    with gs.open_run(killed_run) as run:
        assert run.status == "running"
        assert "end_time" not in run.meta
        assert run.steps() == list(range(KILLED_RUN_STEPS))
        frame = run.frame()
        assert sorted(frame["step"].unique()) == list(range(KILLED_RUN_STEPS))
        assert set(frame["level"]) == {"param", "layer", "model"}
        assert list(run.params()["name"]) == ["0.weight", "0.bias", "2.weight", "2.bias"]
        assert list(run.layers()["name"]) == ["0", "2"]
        rows_per_step = frame.groupby("step").size()
        assert rows_per_step.nunique() == 1


def test_reading_a_killed_run_never_changes_its_files(killed_run):
    before = store_files(killed_run)
    mtimes = {p.name: p.stat().st_mtime_ns for p in killed_run.iterdir()}
    for _ in range(2):
        with gs.open_run(killed_run) as run:
            steps = run.steps()
            run.frame(), run.params(), run.layers(), run.metrics()
        # Byte-identical database, WAL and -shm index (opened read-only), no file added or removed.
        assert store_files(killed_run) == before
        assert {p.name: p.stat().st_mtime_ns for p in killed_run.iterdir()} == mtimes
    assert steps == list(range(KILLED_RUN_STEPS))


def test_reading_a_killed_run_copied_without_its_shm_adds_only_the_shm(killed_run):
    """The documented exception: SQLite rebuilds a missing -shm index of a WAL with content."""
    (killed_run / "gradsight.sqlite-shm").unlink()
    before = store_files(killed_run)
    with gs.open_run(killed_run) as run:
        assert run.steps() == list(range(KILLED_RUN_STEPS))
        run.frame()
    after = store_files(killed_run)
    assert {n: d for n, d in after.items() if not n.endswith("-shm")} == before
    assert set(after) - set(before) == {"gradsight.sqlite-shm"}


def test_killed_mid_stream_keeps_a_contiguous_prefix_of_steps(tmp_path, spawn):
    run_dir = tmp_path / "run"
    child = spawn(RECORD_FOREVER, str(run_dir))
    child.wait_for("RECORDING")
    time.sleep(COMMIT_INTERVAL_S + 0.5)
    child.kill()

    assert integrity(run_dir) == ["ok"]
    with gs.open_run(run_dir) as run:
        assert run.status == "running"
        steps = run.steps()
        assert len(steps) > 1, "nothing committed in 2.5 s of recording"
        assert steps == list(range(len(steps)))  # 0..k, no gaps
        frame = run.frame(level=["param", "layer", "model"])
    assert sorted(frame["step"].unique()) == steps  # no values of a step without its row in `steps`
    rows_per_step = frame.groupby("step").size()
    assert rows_per_step.nunique() == 1  # every committed step is complete


def test_killed_run_can_be_overwritten(killed_run):
    """A new run may replace a crashed one (stale -wal/-shm included) with overwrite=True."""
    model = nn.Linear(2, 1)
    with pytest.raises(gs.RunError):
        gs.watch(model, killed_run)
    with gs.watch(model, killed_run, overwrite=True) as monitor:
        model(torch.randn(3, 2)).sum().backward()
        monitor.step()
    assert sorted(store_files(killed_run)) == ["gradsight.sqlite"]
    with gs.open_run(killed_run) as run:
        assert run.status == "finished"
        assert run.steps() == [0]

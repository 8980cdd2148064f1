"""The run store under faults: a full disk, a store locked by another process, two
processes starting one run, stores of other schema versions, bad values and paths.

Full disks are made with ``RLIMIT_FSIZE`` in a child process (``SIGXFSZ`` ignored, so
``write()`` fails with EFBIG) and, where this user may mount one, an 8 MB tmpfs (ENOSPC).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import torch

import gradsight as gs
from gradsight.store import writer as store_writer
from gradsight.store.schema import DB_NAME, SCHEMA_VERSION
from gradsight.store.writer import StoreWriter
from tests.store.helpers import integrity, record_steps, store_files, tiny_mlp

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="needs fork, flock and rlimits"),
              pytest.mark.timeout(120)]

#: The gradsight under test, for child processes (which run in another directory).
SOURCE_ROOT = str(Path(gs.__file__).resolve().parents[1])

#: Series written per step by the StoreWriter tests.
VALUES_PER_STEP = 50


def _write_step(writer: StoreWriter, step: int) -> None:
    writer.write_scalars(step, np.arange(VALUES_PER_STEP, dtype=np.int64),
                         np.full(VALUES_PER_STEP, float(step)), time.time())


def _messages(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("gradsight") and r.levelno == level]


def _writer_threads() -> int:
    return sum(t.name == "gradsight-writer" and t.is_alive() for t in threading.enumerate())


# -- a full disk ---------------------------------------------------------------------

#: Records through a StoreWriter (what a monitor calls; no torch, to start fast), fills
#: the disk (argv[2]: 'rlimit' or 'tmpfs') and reports as JSON what the caller, the log
#: and a reader saw: run A gets its space back, run B does not.
FULL_DISK_CHILD = r'''
import json, logging, os, resource, shutil, signal, sys, threading, time
from pathlib import Path
import numpy as np
import gradsight as gs
from gradsight.store import writer as store_writer

store_writer.RETRY_INTERVAL_S = 0.2
store_writer.CLOSE_RETRY_S = 1.0
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() past the limit fails with EFBIG
root, how = Path(sys.argv[1]), sys.argv[2]
records = []

class Keep(logging.Handler):
    def emit(self, record):
        records.append([record.levelname, record.getMessage()])

logging.getLogger("gradsight").addHandler(Keep(level=logging.WARNING))
exceptions = []

calls = [0]

def step(writer):
    try:
        writer.write_scalars(calls[0], np.arange(300), np.random.rand(300), time.time())
        calls[0] += 1
        writer.flush()
    except BaseException as exc:
        exceptions.append(repr(exc))

def fill_disk(run_dir):
    if how == "rlimit":
        used = max(p.stat().st_size for p in run_dir.iterdir())
        resource.setrlimit(resource.RLIMIT_FSIZE, (used + 8192, resource.RLIM_INFINITY))
    else:
        fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError:
            os.close(fd)

def free_disk():
    if how == "rlimit":
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    else:
        (root / "filler").unlink()

def record_until_it_fails(writer):
    for _ in range(500):
        step(writer)
        if records:
            return
    raise SystemExit("the store never failed")

def run_facts(run_dir):
    with gs.open_run(run_dir) as run:
        return {"steps": run.steps(), "meta": {k: run.meta.get(k) for k in ("status", "store_error", "steps_dropped")}}

out = {}
for name in ("recovers", "stays_full"):
    records.clear()
    run_dir = root / name
    writer = store_writer.StoreWriter(run_dir)
    calls[0] = 0
    for _ in range(3):
        step(writer)
    fill_disk(run_dir)
    record_until_it_fails(writer)
    out[name] = {"readable_while_full": run_facts(run_dir)["steps"]}
    for _ in range(30):
        step(writer)
    out[name]["records_while_full"] = list(records)
    if name == "recovers":
        free_disk()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(records) < 2:
            time.sleep(0.05)
        for _ in range(3):
            step(writer)
    t0 = time.monotonic()
    writer.close()
    out[name]["close_s"] = time.monotonic() - t0
    out[name]["writer_threads"] = sum(t.name == "gradsight-writer" for t in threading.enumerate())
    if name == "stays_full":
        free_disk()
    out[name].update(run_facts(run_dir), step_calls=calls[0], records=list(records),
                     files=sorted(p.name for p in run_dir.iterdir()))
    shutil.rmtree(run_dir)  # room for the next run on the tmpfs
out["exceptions"] = exceptions
print(json.dumps(out))
'''


def _run_full_disk_child(root: Path, how: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SOURCE_ROOT)
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(root), how], capture_output=True, text=True,
                          env=env, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def rlimit_full(tmp_path_factory) -> dict:
    return _run_full_disk_child(tmp_path_factory.mktemp("rlimit"), "rlimit")


@pytest.fixture(scope="module")
def tmpfs_full(tmp_path_factory) -> dict:
    mount_point = tmp_path_factory.mktemp("tmpfs")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield _run_full_disk_child(mount_point, "tmpfs")
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


@pytest.fixture(params=["rlimit", "tmpfs"])
def full_disk(request) -> dict:
    return request.getfixturevalue(f"{request.param}_full")


def test_a_full_disk_never_reaches_training_and_is_logged_once(full_disk):
    assert full_disk["exceptions"] == []
    for name in ("recovers", "stays_full"):
        records = full_disk[name]["records_while_full"]
        assert len(records) == 1, records  # 30 more recorded steps and flushes while full: no more lines
        level, message = records[0]
        assert level == "ERROR"
        assert f"{name}/{DB_NAME}" in message and "free space" in message


def test_a_full_disk_keeps_the_last_commit_readable(full_disk):
    for name in ("recovers", "stays_full"):
        steps = full_disk[name]["readable_while_full"]
        assert len(steps) >= 3 and steps == list(range(len(steps)))


def test_a_full_disk_is_written_again_when_space_returns(full_disk):
    run = full_disk["recovers"]
    assert run["steps"] == list(range(run["step_calls"]))  # nothing lost: the queue held the steps meanwhile
    assert run["meta"]["status"] == "finished"
    assert run["meta"]["steps_dropped"] == 0
    assert run["meta"]["store_error"]  # what happened, for whoever reads the run
    assert [level for level, _ in run["records"]] == ["ERROR", "WARNING"]
    assert "again" in run["records"][1][1]
    assert run["writer_threads"] == 0
    assert run["files"] == [DB_NAME]


def test_close_on_a_full_disk_returns_promptly_and_marks_the_run(full_disk):
    run = full_disk["stays_full"]
    assert run["close_s"] < 20  # CLOSE_RETRY_S (1 s here) of retries, then it gives up
    assert run["writer_threads"] == 0
    committed = len(run["steps"])
    assert run["steps"] == list(range(committed))
    assert run["meta"]["status"] == "finished"
    assert run["meta"]["store_error"]
    assert run["meta"]["steps_dropped"] == run["step_calls"] - committed
    (level, message), = run["records"][1:]
    assert level == "ERROR" and f"without writing {run['step_calls'] - committed} recorded steps" in message


# -- a store locked by another process: the bounded queue -----------------------------


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(store_writer, "BUSY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(store_writer, "RETRY_INTERVAL_S", 0.1)


def _lock_store(run_dir: Path) -> sqlite3.Connection:
    """Another connection holding the store's write lock (``BEGIN IMMEDIATE``)."""
    blocker = sqlite3.connect(run_dir / DB_NAME, isolation_level=None, timeout=0, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def _writer_stalled_by_a_lock(run_dir: Path, queued_steps: int) -> tuple[StoreWriter, sqlite3.Connection]:
    """A writer whose queue holds ``queued_steps`` steps, after steps 0-1 were committed and step 2
    met a write lock held elsewhere; then steps 3..52 are written (never blocking)."""
    item_bytes = VALUES_PER_STEP * 16  # int64 ids + float64 values
    writer = StoreWriter(run_dir, max_queue_bytes=queued_steps * item_bytes)
    for step in (0, 1):
        _write_step(writer, step)
    writer.flush()
    blocker = _lock_store(run_dir)
    _write_step(writer, 2)
    writer.flush()  # the commit waits BUSY_TIMEOUT_S, fails, and flush returns
    for step in range(3, 53):
        _write_step(writer, step)
    return writer, blocker


def test_a_locked_store_drops_the_oldest_queued_steps_and_counts_them(tmp_path, fast_retries, caplog):
    run_dir = tmp_path / "run"
    writer, blocker = _writer_stalled_by_a_lock(run_dir, queued_steps=10)
    assert writer.steps_dropped == 40  # steps 3..42: the oldest of those queued
    assert len(_messages(caplog, logging.ERROR)) == 1
    assert "locked" in _messages(caplog, logging.ERROR)[0]
    blocker.execute("ROLLBACK")
    writer.close()
    assert _writer_threads() == 0
    with gs.open_run(run_dir) as run:
        assert run.steps() == [0, 1, 2, *range(43, 53)]
        assert run.meta["steps_dropped"] == 40
        assert run.meta["values_dropped"] == 40 * VALUES_PER_STEP
        assert "locked" in run.meta["store_error"]
        assert run.status == "finished"
    warnings = _messages(caplog, logging.WARNING)
    assert any("again" in m for m in warnings)
    assert any(m.startswith("gradsight: 40 recorded steps were dropped") for m in warnings)
    assert len(_messages(caplog, logging.ERROR)) == 1


def test_what_waits_in_memory_stays_bounded_while_the_writer_is_busy(tmp_path, fast_retries):
    """Steps the writer thread has taken but not committed count too: it commits once it holds
    a quarter of the bound, so a locked store keeps at most 1.25 bounds of statistics."""
    run_dir = tmp_path / "run"
    writer = StoreWriter(run_dir, max_queue_bytes=8 * VALUES_PER_STEP * 16)
    _write_step(writer, 0)
    writer.flush()
    blocker = _lock_store(run_dir)
    for step in range(1, 101):  # no flush: the writer takes steps as they come
        _write_step(writer, step)
        time.sleep(0.001)
    blocker.execute("ROLLBACK")
    writer.close()
    with gs.open_run(run_dir) as run:
        kept = run.steps()[1:]
        assert kept[-8:] == list(range(93, 101))  # the newest are kept
        assert len(kept) <= 8 + 2  # the queue's 8 and what the writer held (2 steps = a quarter)
        assert run.meta["steps_dropped"] == 100 - len(kept)


def test_a_slow_store_warns_once_when_it_starts_dropping(tmp_path, caplog):
    """The queue fills while the writer thread is busy: one warning, the count in the store."""
    run_dir = tmp_path / "run"
    writer = StoreWriter(run_dir, max_queue_bytes=5 * VALUES_PER_STEP * 16)
    gate = threading.Event()
    real_commit = writer._commit

    def slow_commit(*args, **kwargs):
        gate.wait(10)
        return real_commit(*args, **kwargs)

    writer._commit = slow_commit
    _write_step(writer, 0)
    writer.flush(timeout=0.2)  # the writer is now inside a commit that waits for the gate
    for step in range(1, 31):
        _write_step(writer, step)
    gate.set()
    writer.close()
    with gs.open_run(run_dir) as run:
        assert run.steps() == [0, *range(26, 31)]
        assert run.meta["steps_dropped"] == 25
    warnings = _messages(caplog, logging.WARNING)
    assert sum("cannot keep up" in m for m in warnings) == 1
    assert sum("25 recorded steps were dropped" in m for m in warnings) == 1


def test_close_waits_for_a_lock_released_within_its_retry_window(tmp_path, fast_retries, caplog):
    run_dir = tmp_path / "run"
    writer, blocker = _writer_stalled_by_a_lock(run_dir, queued_steps=100)
    threading.Timer(0.5, blocker.execute, args=("ROLLBACK",)).start()
    writer.close()
    with gs.open_run(run_dir) as run:
        assert run.steps() == list(range(53))
        assert run.meta["steps_dropped"] == 0
        assert run.status == "finished"


def test_close_on_a_store_locked_for_good_says_what_was_not_written(tmp_path, fast_retries, monkeypatch, caplog):
    monkeypatch.setattr(store_writer, "CLOSE_RETRY_S", 0.5)
    run_dir = tmp_path / "run"
    writer, blocker = _writer_stalled_by_a_lock(run_dir, queued_steps=10)
    closer = threading.Thread(target=writer.close)
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive(), "close() still blocked after 10 s"
    assert _writer_threads() == 0
    errors = _messages(caplog, logging.ERROR)
    assert len(errors) == 2
    assert "without writing 51 recorded steps" in errors[1]  # 40 dropped from the queue + step 2 + 10 queued
    assert "status still says 'running'" in errors[1]  # the lock kept even the metadata out
    blocker.execute("ROLLBACK")
    with gs.open_run(run_dir) as run:
        assert run.steps() == [0, 1]
        assert "end_time" not in run.meta and "steps_dropped" not in run.meta


# -- two processes, one run directory ---------------------------------------------------


def _start_writer(run_dir: str, overwrite: bool, barrier, results) -> None:
    """In a child: start a writer the moment the other child does, hold it until both tried."""
    barrier.wait()
    try:
        writer = StoreWriter(run_dir, overwrite=overwrite)
    except gs.RunError as exc:
        results.put(("refused", os.getpid(), str(exc)))
        barrier.wait()
        return
    results.put(("owner", os.getpid(), ""))
    barrier.wait()
    writer.close()


def test_two_processes_starting_one_run_at_the_same_instant_never_both_own_it(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for trial in range(20):
        run_dir = tmp_path / f"run{trial}"
        overwrite = trial % 2 == 1  # overwrite=True must not replace a live run either
        barrier, results = ctx.Barrier(2), ctx.Queue()
        children = [ctx.Process(target=_start_writer, args=(str(run_dir), overwrite, barrier, results))
                    for _ in range(2)]
        for child in children:
            child.start()
        outcomes = sorted(results.get(timeout=30) for _ in children)
        for child in children:
            child.join(timeout=30)
            assert child.exitcode == 0
        assert [o[0] for o in outcomes] == ["owner", "refused"], (trial, outcomes)
        owner_pid, refusal = outcomes[0][1], outcomes[1][2]
        assert f"pid {owner_pid} on {socket.gethostname()}" in refusal and str(run_dir) in refusal
        with gs.open_run(run_dir) as run:
            assert run.meta["pid"] == owner_pid


def _try_overwrite(run_dir: str, results) -> None:
    try:
        StoreWriter(run_dir, overwrite=True).close()
        results.put("replaced")
    except gs.RunError as exc:
        results.put(str(exc))


def test_overwrite_never_replaces_a_run_another_process_is_recording(tmp_path):
    model = tiny_mlp()
    run_dir = tmp_path / "run"
    with gs.watch(model, run_dir) as monitor:
        record_steps(model, monitor, 2)
        monitor.flush()
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        child = ctx.Process(target=_try_overwrite, args=(str(run_dir), results))
        child.start()
        refusal = results.get(timeout=30)
        child.join(timeout=30)
        assert f"is being recorded by pid {os.getpid()} on {socket.gethostname()}" in refusal
        record_steps(model, monitor, 1)
    with gs.open_run(run_dir) as run:
        assert run.steps() == [0, 1, 2]
        assert run.status == "finished"


def test_a_second_monitor_of_one_run_directory_in_this_process_is_refused(tmp_path):
    model = tiny_mlp()
    with gs.watch(model, tmp_path / "run") as monitor:
        record_steps(model, monitor, 1)
        with pytest.raises(gs.RunError, match=r"\(this process\)"):
            gs.watch(tiny_mlp(), tmp_path / "run", overwrite=True)
        record_steps(model, monitor, 1)
    with gs.open_run(tmp_path / "run") as run:
        assert run.steps() == [0, 1]


def test_a_forked_child_does_not_keep_the_run_directory_locked(tmp_path):
    run_dir = tmp_path / "run"
    writer = StoreWriter(run_dir)
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=time.sleep, args=(30,))  # e.g. a DataLoader worker
    child.start()
    try:
        writer.close()
        StoreWriter(run_dir, overwrite=True).close()  # the child is alive and holds nothing
    finally:
        child.terminate()
        child.join(timeout=30)


# -- schema versions, paths, values ---------------------------------------------------------


@pytest.fixture
def finished_run(tmp_path) -> Path:
    model = tiny_mlp()
    with gs.watch(model, tmp_path / "run") as monitor:
        record_steps(model, monitor, 2)
    return tmp_path / "run"


def _set(run_dir: Path, sql: str, *args) -> None:
    with closing(sqlite3.connect(run_dir / DB_NAME, isolation_level=None)) as conn:
        conn.execute(sql, args)


@pytest.mark.parametrize(("stored", "message"), [
    ("0", r"schema version 0, which this gradsight does not read \(it reads 1 to {v}\)"),
    ("-1", r"schema version -1, which this gradsight does not read"),
    ("99", r"schema version 99, newer than this gradsight reads \(1 to {v}\); upgrade gradsight"),
    ('"abc"', r"schema_version 'abc', not an integer"),
    ("2.5", r"schema_version 2.5, not an integer"),
    ("true", r"schema_version True, not an integer"),
    (None, r"no schema_version"),
])
def test_stores_of_a_schema_version_this_gradsight_does_not_read_are_refused(finished_run, stored, message):
    if stored is None:
        _set(finished_run, "DELETE FROM meta WHERE key = 'schema_version'")
    else:
        _set(finished_run, "UPDATE meta SET value = ? WHERE key = 'schema_version'", stored)
    with pytest.raises(gs.RunError, match=message.format(v=SCHEMA_VERSION)) as info:
        gs.open_run(finished_run)
    assert str(finished_run / DB_NAME) in str(info.value)


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION + 1))
def test_stores_of_every_readable_schema_version_open(finished_run, version):
    _set(finished_run, "UPDATE meta SET value = ? WHERE key = 'schema_version'", json.dumps(version))
    with gs.open_run(finished_run) as run:
        assert run.meta["schema_version"] == version


@pytest.mark.parametrize(("sql", "column"), [
    ("UPDATE params SET shape = 'not json'", "params.shape"),
    ("UPDATE params SET shape = '5'", "params.shape"),
    ("UPDATE params SET aliases = '{'", "params.aliases"),
])
def test_bad_json_in_a_store_raises_run_error(finished_run, sql, column):
    _set(finished_run, sql)
    with gs.open_run(finished_run) as run:
        with pytest.raises(gs.RunError, match=f"{column} holds"):
            run.params()


def test_bad_json_in_meta_raises_run_error(finished_run):
    _set(finished_run, "UPDATE meta SET value = '{oops' WHERE key = 'config'")
    with pytest.raises(gs.RunError, match="is corrupted"):
        gs.open_run(finished_run)


def test_watch_into_a_path_that_is_a_file_raises_run_error_naming_it(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("not a run")
    with pytest.raises(gs.RunError, match=f"{target} is a file, not a directory"):
        gs.watch(tiny_mlp(), target)
    with pytest.raises(gs.RunError, match=f"cannot create the run directory {target / 'run'}"):
        gs.watch(tiny_mlp(), target / "run")
    assert target.read_text() == "not a run"


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory this process cannot write: chmod for a user, a read-only tmpfs for root."""
    target = tmp_path / "ro"
    target.mkdir()
    if os.geteuid() != 0:
        target.chmod(0o555)
        yield target
        target.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(target)],
                      capture_output=True).returncode != 0:
        pytest.skip("root, and cannot mount a read-only tmpfs")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)


def test_watch_into_a_directory_it_cannot_write_raises_run_error_naming_it(read_only_dir):
    model = tiny_mlp()
    with pytest.raises(gs.RunError, match=f"cannot (write the run store|create the run directory) {read_only_dir}"):
        gs.watch(model, read_only_dir)
    with pytest.raises(gs.RunError, match=f"cannot create the run directory {read_only_dir / 'run'}"):
        gs.watch(model, read_only_dir / "run")
    assert not model._forward_pre_hooks and not model._forward_hooks


def _obeying_file_permissions(code: str, *args: str) -> str:
    """Run ``code`` in a child that file permissions apply to (root: without CAP_DAC_OVERRIDE
    and CAP_DAC_READ_SEARCH); returns its stdout."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root, and no setpriv to make file permissions apply")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    env = dict(os.environ, PYTHONPATH=SOURCE_ROOT)
    proc = subprocess.run([*prefix, sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


_OPEN_RUN = """
import sys
import gradsight as gs
try:
    gs.open_run(sys.argv[1]).close()
    print("opened")
except gs.RunError as exc:
    print(exc)
"""

_START_WRITER = """
import sys
import gradsight as gs
from gradsight.store.writer import StoreWriter
try:
    StoreWriter(sys.argv[1]).close()
    print("started")
except gs.RunError as exc:
    print(exc)
"""


def test_an_unreadable_store_is_reported_as_a_permission_problem(finished_run):
    db = finished_run / DB_NAME
    db.chmod(0)
    try:
        assert _obeying_file_permissions(_OPEN_RUN, str(finished_run)) == (
            f"{db} cannot be read: permission denied (ask its owner, or copy the run)")
    finally:
        db.chmod(0o644)
    assert _obeying_file_permissions(_OPEN_RUN, str(finished_run)) == "opened"


def test_a_run_directory_without_write_permission_raises_run_error_naming_it(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o555)
    try:
        assert _obeying_file_permissions(_START_WRITER, str(run_dir)) == (
            f"cannot write the run store {run_dir / DB_NAME}: Permission denied; choose a writable run_dir")
        assert _obeying_file_permissions(_START_WRITER, str(run_dir / "sub")) == (
            f"cannot create the run directory {run_dir / 'sub'}: Permission denied")
    finally:
        run_dir.chmod(0o755)
    assert _obeying_file_permissions(_START_WRITER, str(run_dir)) == "started"


def test_a_step_beyond_64_bits_is_refused_not_dropped(tmp_path):
    model = tiny_mlp()
    with gs.watch(model, tmp_path / "run") as monitor:
        model(torch.randn(5, 4)).sum().backward()
        with pytest.raises(ValueError, match=r"step=1180591620717411303424 does not fit"):
            monitor.step(step=2**70)
        assert monitor.step(step=2**63 - 1)
    with gs.open_run(tmp_path / "run") as run:
        assert run.steps() == [2**63 - 1]


def test_a_value_the_store_cannot_hold_is_logged_once_and_counted(tmp_path, caplog):
    writer = StoreWriter(tmp_path / "run")
    _write_step(writer, 0)
    for _ in range(3):
        writer.write_scalars(2**70, np.arange(3), np.ones(3), time.time())  # past SQLite's INTEGER
    _write_step(writer, 1)
    writer.close()
    errors = _messages(caplog, logging.ERROR)
    assert len(errors) == 1 and "could not be stored" in errors[0] and "OverflowError" in errors[0]
    with gs.open_run(tmp_path / "run") as run:
        assert run.steps() == [0, 1]
        assert run.meta["steps_dropped"] == 3
        assert run.meta["values_dropped"] == 9


# -- readers ---------------------------------------------------------------------------------


def test_a_reader_of_a_live_run_sees_new_commits(tmp_path):
    model = tiny_mlp()
    run_dir = tmp_path / "run"
    with gs.watch(model, run_dir) as monitor:
        record_steps(model, monitor, 1)
        monitor.flush()
        with gs.open_run(run_dir) as run:  # one connection, kept open
            assert run.steps() == [0]
            for n in range(2, 5):
                record_steps(model, monitor, 1)
                monitor.flush()
                assert run.steps() == list(range(n))
                assert sorted(run.frame()["step"].unique()) == list(range(n))
    assert integrity(run_dir) == ["ok"]
    assert sorted(store_files(run_dir)) == [DB_NAME]

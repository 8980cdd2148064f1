"""Writing a run store: WAL while running, timely commits, the status and files left by close()."""

from __future__ import annotations

import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

import gradsight as gs
from gradsight.store.schema import DB_NAME
from tests.store.helpers import connect_readonly, integrity, journal_mode, record_steps, store_files, tiny_mlp

#: The spec: rows are committed at least every two seconds while a run is recording.
MAX_COMMIT_DELAY_S = 2.0


def _visible_steps(run_dir: Path) -> list[int]:
    with gs.open_run(run_dir) as run:
        return run.steps()


def test_store_is_one_sqlite_file_in_the_run_dir(tmp_path):
    model = tiny_mlp()
    run_dir = tmp_path / "nested" / "run"  # parents are created
    with gs.watch(model, run_dir) as monitor:
        record_steps(model, monitor, 2)
    assert [p.name for p in run_dir.iterdir()] == [DB_NAME]
    assert (run_dir / DB_NAME).read_bytes().startswith(b"SQLite format 3\x00")


def test_store_is_in_wal_mode_while_running(tmp_path):
    model = tiny_mlp()
    run_dir = tmp_path / "run"
    with gs.watch(model, run_dir) as monitor:
        record_steps(model, monitor, 1)
        monitor.flush()
        assert journal_mode(run_dir) == "wal"
        with closing(connect_readonly(run_dir)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rows_are_committed_within_two_seconds_without_flush(tmp_path):
    model = tiny_mlp()
    run_dir = tmp_path / "run"
    with gs.watch(model, run_dir) as monitor:
        record_steps(model, monitor, 4)
        recorded_at = time.monotonic()
        deadline = recorded_at + MAX_COMMIT_DELAY_S + 0.5  # scheduling slack on a busy machine
        while _visible_steps(run_dir) != [0, 1, 2, 3] and time.monotonic() < deadline:
            time.sleep(0.05)
        waited = time.monotonic() - recorded_at
        assert _visible_steps(run_dir) == [0, 1, 2, 3], f"steps not committed after {waited:.2f} s"
        with gs.open_run(run_dir) as run:
            assert run.status == "running"
            assert "end_time" not in run.meta


def test_flush_commits_immediately(tmp_path):
    model = tiny_mlp()
    run_dir = tmp_path / "run"
    with gs.watch(model, run_dir) as monitor:
        record_steps(model, monitor, 3)
        monitor.flush()
        assert _visible_steps(run_dir) == [0, 1, 2]


def test_clean_exit_finishes_the_run_and_leaves_a_plain_database(tmp_path):
    model = tiny_mlp()
    run_dir = tmp_path / "run"
    before = time.time()
    with gs.watch(model, run_dir) as monitor:
        record_steps(model, monitor, 3)
    after = time.time()

    assert sorted(p.name for p in run_dir.iterdir()) == [DB_NAME]  # no -wal, no -shm
    assert journal_mode(run_dir) == "delete"
    with closing(connect_readonly(run_dir)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert integrity(run_dir) == ["ok"]
    with gs.open_run(run_dir) as run:
        assert run.status == "finished"
        assert before <= run.meta["start_time"] <= run.meta["end_time"] <= after
        assert "error" not in run.meta
        assert run.steps() == [0, 1, 2]
        assert run.meta["steps_recorded"] == 3


def test_exception_in_with_block_marks_the_run_failed(tmp_path):
    model = tiny_mlp()
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="loss exploded"):
        with gs.watch(model, run_dir) as monitor:
            record_steps(model, monitor, 2)
            raise RuntimeError("loss exploded")

    assert sorted(p.name for p in run_dir.iterdir()) == [DB_NAME]
    assert journal_mode(run_dir) == "delete"
    with gs.open_run(run_dir) as run:
        assert run.status == "failed"
        assert "RuntimeError" in run.meta["error"]
        assert "loss exploded" in run.meta["error"]
        assert run.meta["end_time"] >= run.meta["start_time"]
        assert run.steps() == [0, 1]  # what was recorded before the exception is kept


def test_close_is_idempotent(tmp_path):
    model = tiny_mlp()
    run_dir = tmp_path / "run"
    monitor = gs.watch(model, run_dir)
    record_steps(model, monitor, 1)
    monitor.close()
    files = store_files(run_dir)
    monitor.close()
    monitor.close(status="failed", error="too late")
    assert store_files(run_dir) == files
    with gs.open_run(run_dir) as run:
        assert run.status == "finished"


def test_watch_into_an_existing_run_raises_and_leaves_it_untouched(tmp_path):
    run_dir = tmp_path / "run"
    first = tiny_mlp()
    with gs.watch(first, run_dir) as monitor:
        record_steps(first, monitor, 3)
    files = store_files(run_dir)

    second = tiny_mlp()
    with pytest.raises(gs.RunError, match="overwrite=True"):
        gs.watch(second, run_dir)
    assert store_files(run_dir) == files
    assert not second._forward_pre_hooks and not second._forward_hooks  # nothing left attached
    with gs.open_run(run_dir) as run:
        assert run.steps() == [0, 1, 2]


def test_watch_with_overwrite_replaces_the_run(tmp_path):
    run_dir = tmp_path / "run"
    first = tiny_mlp()
    with gs.watch(first, run_dir, config={"attempt": 1}) as monitor:
        record_steps(first, monitor, 3)

    second = tiny_mlp()
    with gs.watch(second, run_dir, overwrite=True, config={"attempt": 2}) as monitor:
        record_steps(second, monitor, 1)
    with gs.open_run(run_dir) as run:
        assert run.config == {"attempt": 2}
        assert run.steps() == [0]
        assert run.status == "finished"


def test_watch_into_an_existing_empty_directory_is_allowed(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model = tiny_mlp()
    with gs.watch(model, run_dir) as monitor:
        record_steps(model, monitor, 1)
    assert _visible_steps(run_dir) == [0]


def test_close_while_a_reader_has_the_run_open_returns_promptly(tmp_path):
    model = tiny_mlp()
    run_dir = tmp_path / "run"
    monitor = gs.watch(model, run_dir)
    record_steps(model, monitor, 2)
    reader = monitor.open()  # e.g. a notebook looking at the live run
    closer = threading.Thread(target=monitor.close, daemon=True)
    closer.start()
    closer.join(timeout=8)
    try:
        assert not closer.is_alive(), "monitor.close() still blocked after 8 s"
    finally:
        reader.close()
    with gs.open_run(run_dir) as run:
        assert run.status == "finished"
        assert run.steps() == [0, 1]


def test_status_is_running_as_soon_as_watch_returns(tmp_path):
    model = tiny_mlp()
    monitor = gs.watch(model, tmp_path / "run")
    try:
        with gs.open_run(tmp_path / "run") as run:
            assert run.status == "running"
            assert run.meta["model_class"].endswith("Sequential")
    finally:
        monitor.close()

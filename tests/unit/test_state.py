"""The state store: migrations, transitions with audit, several writers at once."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from mailcontinuity.store.audit import audit_log, record_command
from mailcontinuity.store.db import StateStore, StateStoreError
from mailcontinuity.store.migrations import MIGRATIONS
from mailcontinuity.store.state import current_state, transition


def test_fresh_store_is_normal_and_migrated(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "sub" / "state.db")
    assert store.schema_version == len(MIGRATIONS)
    assert current_state(store).name == "normal"
    assert store.one("PRAGMA journal_mode") == ("wal",)
    store.close()


def test_transition_is_persisted_and_audited(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateStore(path)
    old = transition(store, "failover", cause="primary failed 3 probes", actor="health-monitor")
    assert old is not None and old.name == "normal"
    store.close()

    reopened = StateStore(path)
    assert current_state(reopened).name == "failover"
    [entry] = audit_log(reopened)
    assert (entry.event, entry.from_state, entry.to_state) == ("transition", "normal", "failover")
    assert (entry.cause, entry.actor) == ("primary failed 3 probes", "health-monitor")


def test_expect_guard_refuses_a_stale_decision(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    transition(store, "failover", cause="operator", actor="root")
    assert transition(store, "failover", "monitor", "health", expect=("normal",)) is None
    assert len(audit_log(store)) == 1


def test_unknown_state_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    with pytest.raises(ValueError):
        transition(store, "panic", cause="x", actor="y")  # type: ignore[arg-type]


def _hammer(path: str, worker: int) -> None:
    store = StateStore(Path(path))
    for n in range(25):
        record_command(store, "test", f"worker{worker}", {"n": n})
        transition(store, "failover" if n % 2 else "normal", cause=f"w{worker}", actor="test")
    store.close()


def test_several_processes_write_at_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    workers = [
        multiprocessing.get_context("spawn").Process(target=_hammer, args=(str(path), w))
        for w in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    entries = audit_log(StateStore(path))
    assert len(entries) == 4 * 25 * 2
    assert len({entry.id for entry in entries}) == len(entries)


def test_newer_schema_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StateStoreError, match="upgrade the package"):
        StateStore(path)


def test_unwritable_location_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateStoreError, match=str(blocker)):
        StateStore(blocker / "state.db")


def test_database_files_are_group_writable_whatever_the_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        store = StateStore(tmp_path / "state.db")
        transition(store, "failover", cause="x", actor="y")
        store.close()
    finally:
        os.umask(old)
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        path = tmp_path / name
        if path.exists():
            assert path.stat().st_mode & 0o777 == 0o660, name

"""The state store: migrations, transitions with audit, several writers at once, on each backend
(``store_config`` runs a test on SQLite and on PostgreSQL)."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest

from mailcontinuity.config import Config
from mailcontinuity.store.audit import audit_log, record_command
from mailcontinuity.store.db import SQLiteStore, StateStoreError, open_store
from mailcontinuity.store.migrations import MIGRATIONS
from mailcontinuity.store.postgres import pyformat
from mailcontinuity.store.state import current_state, transition


def test_fresh_store_is_normal_and_migrated(store_config: Config) -> None:
    store = open_store(store_config)
    assert store.schema_version == len(MIGRATIONS)
    assert current_state(store).name == "normal"
    store.close()


def test_sqlite_store_uses_wal(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "sub" / "state.db")
    assert store.one("PRAGMA journal_mode") == ("wal",)
    store.close()


def test_transition_is_persisted_and_audited(store_config: Config) -> None:
    store = open_store(store_config)
    old = transition(store, "failover", cause="primary failed 3 probes", actor="health-monitor")
    assert old is not None and old.name == "normal"
    store.close()

    reopened = open_store(store_config)
    assert current_state(reopened).name == "failover"
    [entry] = audit_log(reopened)
    assert (entry.event, entry.from_state, entry.to_state) == ("transition", "normal", "failover")
    assert (entry.cause, entry.actor) == ("primary failed 3 probes", "health-monitor")
    # Timestamps keep sub-second precision on every backend (PostgreSQL's REAL would not).
    assert abs(entry.at - current_state(reopened).since) < 1.0
    assert entry.at != int(entry.at)
    reopened.close()


def test_expect_guard_refuses_a_stale_decision(store_config: Config) -> None:
    store = open_store(store_config)
    transition(store, "failover", cause="operator", actor="root")
    assert transition(store, "failover", "monitor", "health", expect=("normal",)) is None
    assert len(audit_log(store)) == 1
    store.close()


def test_unknown_state_is_refused(store_config: Config) -> None:
    store = open_store(store_config)
    with pytest.raises(ValueError):
        transition(store, "panic", cause="x", actor="y")  # type: ignore[arg-type]
    store.close()


def _hammer(config: Config, worker: int) -> None:
    store = open_store(config)
    for n in range(25):
        record_command(store, "test", f"worker{worker}", {"n": n})
        transition(store, "failover" if n % 2 else "normal", cause=f"w{worker}", actor="test")
    store.close()


def test_several_processes_write_at_once(store_config: Config) -> None:
    workers = [
        multiprocessing.get_context("spawn").Process(target=_hammer, args=(store_config, w))
        for w in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    entries = audit_log(open_store(store_config))
    assert len(entries) == 4 * 25 * 2
    assert len({entry.id for entry in entries}) == len(entries)


def _race(config: Config, start: multiprocessing.synchronize.Event, worker: int) -> None:
    store = open_store(config)
    start.wait()
    transition(store, "failover", cause=f"racer {worker}", actor="test", expect=("normal",))
    store.close()


def test_racing_deciders_make_exactly_one_transition(store_config: Config) -> None:
    """Many processes compare-and-set at the same instant: one wins, the rest see it."""
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    racers = [context.Process(target=_race, args=(store_config, start, n)) for n in range(8)]
    for racer in racers:
        racer.start()
    start.set()
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0
    store = open_store(store_config)
    transitions = [entry for entry in audit_log(store) if entry.event == "transition"]
    assert len(transitions) == 1
    assert current_state(store).name == "failover"
    store.close()


def test_newer_schema_is_refused_with_advice(store_config: Config) -> None:
    store = open_store(store_config)
    if store.backend == "sqlite":
        store.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    else:
        store.execute("UPDATE schema_version SET version = ?", [len(MIGRATIONS) + 1])
    store.close()
    with pytest.raises(StateStoreError, match="upgrade the package"):
        open_store(store_config)


def test_sqlite_newer_schema_set_outside_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StateStoreError, match="upgrade the package"):
        SQLiteStore(path)


def test_unwritable_location_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateStoreError, match=str(blocker)):
        SQLiteStore(blocker / "state.db")


def test_database_files_are_group_writable_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = SQLiteStore(tmp_path / "state.db")
        transition(store, "failover", cause="x", actor="y")
        store.close()
    finally:
        os.umask(old)
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        path = tmp_path / name
        if path.exists():
            assert path.stat().st_mode & 0o777 == 0o660, name


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT a FROM t WHERE b = ? AND c = ?", "SELECT a FROM t WHERE b = %s AND c = %s"),
    ("SELECT '?' || ? FROM t", "SELECT '?' || %s FROM t"),
    ("SELECT 'it''s ?' , ?", "SELECT 'it''s ?' , %s"),
    ("SELECT 5 % 2, '%'", "SELECT 5 %% 2, '%%'"),
    ('SELECT "user" FROM t WHERE "user" = ?', 'SELECT "user" FROM t WHERE "user" = %s'),
])
def test_placeholders_for_psycopg(sql: str, expected: str) -> None:
    assert pyformat(sql) == expected

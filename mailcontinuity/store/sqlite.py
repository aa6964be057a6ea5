"""The embedded backend: one SQLite file per host, for a site whose parts all live on one host.

Each process opens its own connection. WAL lets readers (``status``) run while a daemon writes,
and the busy timeout turns a concurrent writer into a short wait instead of an error. Every write
goes through ``transaction``, which takes the write lock up front (``BEGIN IMMEDIATE``), so two
writers never deadlock and a read-then-write (a compare-and-set transition) is atomic. The schema
version is ``PRAGMA user_version``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from mailcontinuity.store.connection import Params, StateStore, StateStoreError

BUSY_TIMEOUT_SECONDS = 30.0


def _create_shared(path: Path) -> None:
    """Create the database file group-writable: the daemons run as different users (the milter
    as the mail user, policyd as its own) and share it through a group. SQLite gives the -wal
    and -shm files the database file's mode, so this one mode covers all three, whatever the
    umask of the process that happens to create it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o660)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o660)
    finally:
        os.close(fd)


class SQLiteStore(StateStore):
    """One process's connection to this host's state database."""

    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_shared(path)
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
            self.db = sqlite_utils.Database(conn)
            self._enable_wal()
            self.migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StateStoreError(
                f"state store {path}: {exc}; check that the directory exists and is writable"
                " by this user"
            ) from None

    def _enable_wal(self) -> None:
        """Switch to WAL once per database. Changing the journal mode needs a lock SQLite does
        not wait for (no busy handler), so processes opening a new store together retry."""
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            try:
                if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self.db.execute("PRAGMA journal_mode=wal")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _read_schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _write_schema_version(self, number: int) -> None:
        self.execute(f"PRAGMA user_version = {int(number)}")

    def close(self) -> None:
        self.db.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[StateStore]:
        """A write transaction that takes the lock up front, so two writers never deadlock."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def execute(self, sql: str, params: Params = ()) -> int:
        return int(self.db.execute(sql, list(params)).rowcount)

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        self.db.conn.executemany(sql, rows)

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.db.execute(sql, list(params)).fetchall()]

    def one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        rows = self.db.execute(sql, list(params)).fetchall()  # all: the statement finishes
        return tuple(rows[0]) if rows else None

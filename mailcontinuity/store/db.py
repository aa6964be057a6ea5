"""One process's connection to the state store: a SQLite file per host.

Each process opens its own connection. WAL lets readers (``status``) run while a daemon writes,
and the busy timeout turns a concurrent writer into a short wait instead of an error. Every write
goes through ``transaction``, which takes the write lock up front (``BEGIN IMMEDIATE``), so two
writers never deadlock and a read-then-write (a compare-and-set transition) is atomic. Schema
changes are the numbered migrations in ``store.migrations``, tracked in ``PRAGMA user_version``:
an upgraded package brings an old database forward the first time any process opens it.

The record modules use only ``execute``, ``executemany``, ``query``, ``one`` and
``transaction``, with ``?`` placeholders and standard SQL, so that they do not depend on SQLite.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from mailcontinuity.config import Config
from mailcontinuity.store.migrations import MIGRATIONS

BUSY_TIMEOUT_SECONDS = 30.0

Params = Sequence[Any]


class StateStoreError(Exception):
    """The state store cannot be opened or written; the message says where and why."""


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


class StateStore:
    """One process's connection to the shared state database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_shared(path)
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
            self.db = sqlite_utils.Database(conn)
            self._enable_wal()
            self._migrate()
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

    def _migrate(self) -> None:
        with self.transaction():
            version = self.schema_version
            if version > len(MIGRATIONS):
                raise StateStoreError(
                    f"state store {self.path} has schema version {version}, newer than this"
                    f" mailcontinuity knows ({len(MIGRATIONS)}); upgrade the package"
                )
            for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
                migration(self)
                self.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

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
        """Run one statement; returns how many rows it changed."""
        return int(self.db.execute(sql, list(params)).rowcount)

    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        self.db.conn.executemany(sql, rows)

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.db.execute(sql, list(params)).fetchall()]

    def one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        """The first row, or None; for a single-row read or an ``INSERT ... RETURNING``."""
        rows = self.db.execute(sql, list(params)).fetchall()  # all: the statement finishes
        return tuple(rows[0]) if rows else None


def open_store(config: Config) -> StateStore:
    """The state store the configuration names."""
    return StateStore(config.state.path)

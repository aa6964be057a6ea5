"""What every state store backend offers: the connection interface the record modules use.

The record modules (``state``, ``audit``, ``journal``...) call only ``execute``,
``executemany``, ``query``, ``one`` and ``transaction``, with ``?`` placeholders and standard SQL,
so that one set of queries runs on SQLite (one host) and PostgreSQL (several hosts) alike. Each
backend keeps two promises the records depend on:

- ``transaction()`` admits one writer at a time for the whole store (SQLite's ``BEGIN
  IMMEDIATE``, PostgreSQL's transaction-scoped advisory lock), so a read-then-write inside it
  (a compare-and-set transition, a lease) is atomic however many processes on however many
  hosts race;
- a store that cannot be reached raises ``StateStoreError`` naming where it is and what to check,
  and the next call tries again, so a daemon outlives an outage of its store.

Schema changes are the numbered migrations in ``store.migrations``, run by ``migrate`` in one
transaction with the version they bring the store to.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Literal

from mailcontinuity.store.migrations import MIGRATIONS

Params = Sequence[Any]
Backend = Literal["sqlite", "postgresql"]


class StateStoreError(Exception):
    """The state store cannot be opened, read or written; the message says where and why."""


class StateStore(ABC):
    """One process's connection to the state store (each process, each thread opens its own)."""

    backend: ClassVar[Backend]
    location: str
    """Where the store is, for messages (a path, or a URL without secrets)."""

    @abstractmethod
    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns how many rows it changed."""

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        """Run one statement for each row of parameters."""

    @abstractmethod
    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Every row of a query."""

    @abstractmethod
    def one(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        """The first row, or None; for a single-row read or an ``INSERT ... RETURNING``."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[StateStore]:
        """A write transaction that holds the store's one writer lock from its start."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the connection(s)."""

    @abstractmethod
    def _read_schema_version(self) -> int:
        """How many migrations have run (inside the migration transaction)."""

    @abstractmethod
    def _write_schema_version(self, number: int) -> None:
        """Record that migrations up to ``number`` have run."""

    @property
    def schema_version(self) -> int:
        with self.transaction():
            return self._read_schema_version()

    def wait_for_change(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the continuity state to change; True when told
        it did. Backends that cannot tell just wait, so callers read the state either way."""
        time.sleep(timeout)
        return False

    def migrate(self) -> None:
        """Bring the schema up to date (an upgraded package moves an old store forward the
        first time any process opens it); refuse a store newer than this package."""
        with self.transaction():
            version = self._read_schema_version()
            if version > len(MIGRATIONS):
                raise StateStoreError(
                    f"state store {self.location} has schema version {version}, newer than"
                    f" this mailcontinuity knows ({len(MIGRATIONS)}); upgrade the package")
            for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
                migration(self)
                self._write_schema_version(number)

